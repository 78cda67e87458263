"""The published tree behind a real nginx, configured by `wheelstock index nginx-conf`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from bot.cli import main

from conftest import Workspace
from projects import assemble_wheel, fixture_sdist
from support import clean_env

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed"),
]

JSON = "application/vnd.pypi.simple.v1+json"
OLD = datetime(2020, 1, 1, tzinfo=UTC)


@dataclass
class Published:
    workspace: Workspace
    url: str  # nginx's /simple/


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def published(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[Published]:
    """demo 1.0 upstream (a wheel and an sdist from 2020), 1.1 built and published by us."""
    ws = workspace
    ws.enrol("demo", "alice")
    ws.upstream.add_file("demo", assemble_wheel(tmp_path / "w", "demo", "1.0"), upload_time=OLD)
    ws.upstream.add_file("demo", fixture_sdist(tmp_path / "s10", "demo", "1.0"), upload_time=OLD)
    ws.upstream.add_file("demo", fixture_sdist(tmp_path / "s11", "demo", "1.1"))
    assert ws.run("tick").code == 0
    assert ws.run("review", "approve", "demo", "1.1", "--as", "alice").code == 0
    port = free_port()
    conf = ws.run("index", "nginx-conf", "--listen", f"127.0.0.1:{port}")
    assert conf.code == 0, conf.err
    run = tmp_path / "nginx"
    (run / "tmp").mkdir(parents=True)
    (run / "site.conf").write_text(conf.out)
    temp = " ".join(
        f"{kind}_temp_path {run / 'tmp'};" for kind in ("client_body", "proxy", "fastcgi")
    )
    (run / "nginx.conf").write_text(
        "daemon off;\n"
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {run / 'nginx.pid'};\nerror_log {run / 'error.log'};\nevents {{}}\n"
        + f"http {{ access_log {run / 'access.log'}; {temp} "
        + f"uwsgi_temp_path {run / 'tmp'}; scgi_temp_path {run / 'tmp'}; "
        + f"include {run / 'site.conf'}; }}\n"
    )
    proc = subprocess.Popen(["nginx", "-c", str(run / "nginx.conf"), "-p", str(run)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, (run / "error.log").read_text()
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.05)
        yield Published(ws, f"http://127.0.0.1:{port}/simple/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (JSON, JSON),
        ("application/vnd.pypi.simple.latest+json", JSON),
        # What pip sends.
        (f"{JSON}, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01", JSON),
        ("application/vnd.pypi.simple.v1+html", "text/html"),
        ("text/html", "text/html"),
        ("*/*", "text/html"),
        (None, "text/html"),
        (f"{JSON}; q=0, text/html", "text/html"),
    ],
)
def test_accept_picks_the_file(published: Published, accept: str | None, expected: str) -> None:
    headers = {} if accept is None else {"Accept": accept}
    for page in ("", "demo/"):
        answer = httpx.get(published.url + page, headers=headers)
        assert answer.status_code == 200
        assert answer.headers["content-type"].split(";")[0] == expected
        assert answer.headers["vary"] == "Accept"
        if expected == JSON:
            assert answer.json()["meta"]["api-version"]
        else:
            assert answer.text.startswith("<!DOCTYPE html>")


def test_format_parameter_wins_and_hidden_files_are_not_served(published: Published) -> None:
    url = published.url + "demo/"
    for value in (JSON, "application%2Fvnd.pypi.simple.v1%2Bjson"):
        answer = httpx.get(f"{url}?format={value}", headers={"Accept": "text/html"})
        assert answer.headers["content-type"] == JSON
    html = httpx.get(f"{url}?format=text/html", headers={"Accept": JSON})
    assert html.headers["content-type"].startswith("text/html")
    assert httpx.get(f"{url}?format=application/json").status_code == 406
    root = published.url.removesuffix("simple/")
    assert (published.workspace.state / "index" / ".index.lock").exists()
    assert httpx.get(root + ".index.lock").status_code == 404
    assert httpx.get(published.url.rstrip("/")).status_code in (301, 200)
    listed = httpx.get(url, headers={"Accept": JSON}).json()["files"]
    (ours,) = [f for f in listed if f["url"].startswith("../")]
    wheel = httpx.get(httpx.URL(url).join(ours["url"]))
    assert wheel.status_code == 200
    metadata = httpx.get(httpx.URL(url).join(ours["url"] + ".metadata"))
    assert metadata.status_code == 200 and b"Name: demo" in metadata.content
    # The signed provenance beside the wheel, and the key that checks it.
    signed = httpx.get(httpx.URL(url).join(ours["wheelstock-provenance"]))
    assert signed.status_code == 200 and signed.json()["payloadType"]
    key = httpx.get(root + "keys/ed25519.pub")
    assert key.status_code == 200 and key.text.startswith("-----BEGIN PUBLIC KEY-----")


def test_curl_with_each_accept_header(published: Published) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    for accept, expected in ((JSON, JSON), ("text/html", "text/html"), ("*/*", "text/html")):
        done = subprocess.run(
            [curl, "-s", "-o", os.devnull, "-w", "%{content_type}", "-H", f"Accept: {accept}",
             published.url + "demo/"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert done.stdout.startswith(expected)



def installed_version(venv: Path) -> str:
    script = "import importlib.metadata as m; print(m.version('demo'))"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_pip_installs_from_nginx(published: Published, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir",
         "--index-url", published.url, "demo==1.1"],
        env=clean_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed_version(venv) == "1.1"


def uv() -> str:
    return shutil.which("uv") or str(Path(sys.executable).parent / "uv")


@pytest.mark.parametrize(
    ("cutoff", "version"),
    [
        # Before our publication: upstream's 2020 files, through our page, are what is left.
        ("2021-01-01T00:00:00Z", "1.0"),
        # After it: our wheel of 1.1.
        ("2100-01-01T00:00:00Z", "1.1"),
    ],
)
def test_uv_exclude_newer_against_nginx(
    published: Published, tmp_path: Path, cutoff: str, version: str
) -> None:
    env = clean_env()
    venv = tmp_path / "venv"
    subprocess.run([uv(), "venv", "-q", str(venv)], check=True, env=env)
    done = subprocess.run(
        [uv(), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-cache",
         "--index-url", published.url, "--exclude-newer", cutoff, "--only-binary", ":all:",
         "demo"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert installed_version(venv) == version


def test_nginx_conf_command_refuses_a_bad_listen_address(tmp_path: Path) -> None:
    code = main(["index", "nginx-conf", "--state-dir", str(tmp_path), "--listen", "x; evil"])
    assert code == 1
