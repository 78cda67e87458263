"""Tests for bot.serve: a real server on 127.0.0.1 over a real published tree."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.index import publish
from bot.serve import HTML_V1, JSON_V1, TEXT_HTML, make_server, negotiate

from projects import assemble_wheel, make_project
from projects import make_wheel as build_project_wheel

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
# What pip and uv send (PEP 691's recommended header).
INSTALLER_ACCEPT = f"{JSON_V1}, {HTML_V1};q=0.2, {TEXT_HTML};q=0.01"


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


@dataclass
class Served:
    root: Path
    port: int
    wheel: Path
    lines: list[str]

    def request(self, path: str, *, method: str = "GET", **headers: str) -> Reply:
        # http.client sends the path verbatim: no dot-segment cleanup, unlike most clients.
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        try:
            conn.request(method, path, headers={k.replace("_", "-"): v for k, v in headers.items()})
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    root = tmp_path / "index"
    wheel = assemble_wheel(tmp_path / "in", "demo-pkg", "1.0", requires_python=">=3.8")
    publish(root, "demo-pkg", [wheel], now=NOW)
    lines: list[str] = []
    server = make_server(root, "127.0.0.1", 0, log=lines.append)
    # A short poll lets shutdown() return promptly at teardown.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield Served(root, server.server_address[1], wheel, lines)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, TEXT_HTML),
        ("", TEXT_HTML),
        ("*/*", TEXT_HTML),
        (INSTALLER_ACCEPT, JSON_V1),
        (JSON_V1, JSON_V1),
        (HTML_V1, HTML_V1),
        (TEXT_HTML, TEXT_HTML),
        ("application/vnd.pypi.simple.latest+json", JSON_V1),
        ("application/vnd.pypi.simple.latest+html", HTML_V1),
        (f"{JSON_V1};q=0.1, {HTML_V1}", HTML_V1),
        (f"{JSON_V1};q=0, */*", TEXT_HTML),
        (f"{TEXT_HTML};q=0, */*", JSON_V1),
        (f"{TEXT_HTML};q=0.5, {JSON_V1};q=0.4", TEXT_HTML),
        ("application/*", JSON_V1),
        ("text/*;q=0.3, application/vnd.pypi.simple.v1+json;q=0.2", TEXT_HTML),
        (f"{JSON_V1};q=bogus, {HTML_V1};q=0.5", HTML_V1),
        ("application/json", None),
        (f"{JSON_V1};q=0, {HTML_V1};q=0, {TEXT_HTML};q=0", None),
        ("garbage", None),
    ],
)
def test_negotiate(accept: str | None, expected: str | None) -> None:
    assert negotiate(accept) == expected


def test_project_page_as_json(served: Served) -> None:
    reply = served.request("/simple/demo-pkg/", Accept=INSTALLER_ACCEPT)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == JSON_V1
    assert reply.headers["Vary"] == "Accept"
    assert reply.body == (served.root / "simple" / "demo-pkg" / "index.json").read_bytes()
    assert json.loads(reply.body)["files"][0]["filename"] == served.wheel.name


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, TEXT_HTML),
        ("*/*", TEXT_HTML),
        (HTML_V1, HTML_V1),
        (f"{JSON_V1};q=0.1, {HTML_V1}", HTML_V1),
    ],
)
def test_project_page_as_html(served: Served, accept: str | None, content_type: str) -> None:
    headers = {} if accept is None else {"Accept": accept}
    reply = served.request("/simple/demo-pkg/", **headers)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == content_type
    assert reply.body == (served.root / "simple" / "demo-pkg" / "index.html").read_bytes()


def test_root_page_lists_projects(served: Served) -> None:
    reply = served.request("/simple/", Accept=JSON_V1)
    assert reply.status == 200
    assert json.loads(reply.body)["projects"] == [{"name": "demo-pkg"}]
    html_reply = served.request("/simple/")
    assert b'<a href="demo-pkg/">demo-pkg</a>' in html_reply.body


@pytest.mark.parametrize(
    ("query", "status", "content_type"),
    [
        (f"format={JSON_V1}", 200, JSON_V1),
        ("format=application%2Fvnd.pypi.simple.v1%2Bjson", 200, JSON_V1),
        ("format=text/html", 200, TEXT_HTML),
        ("format=application/json", 406, None),
    ],
)
def test_format_parameter_wins_over_accept(
    served: Served, query: str, status: int, content_type: str | None
) -> None:
    # PEP 691's ?format=: a plain static host cannot read Accept, a URL it can.
    accept = HTML_V1 if content_type == JSON_V1 else JSON_V1
    reply = served.request(f"/simple/demo-pkg/?{query}", Accept=accept)
    assert reply.status == status
    if content_type is not None:
        assert reply.headers["Content-Type"] == content_type


def test_hidden_files_are_never_served(served: Served) -> None:
    (served.root / ".index.lock").write_text("")
    (served.root / "files" / "demo-pkg" / ".partial.tmp").write_text("x")
    assert served.request("/.index.lock").status == 404
    assert served.request("/files/demo-pkg/.partial.tmp").status == 404


def test_nothing_acceptable_is_406(served: Served) -> None:
    reply = served.request("/simple/demo-pkg/", Accept="application/json")
    assert reply.status == 406
    assert reply.headers["Vary"] == "Accept"
    assert JSON_V1.encode() in reply.body


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/simple", "/simple/"),
        ("/simple/demo-pkg", "/simple/demo-pkg/"),
        ("/simple/Demo_Pkg/", "/simple/demo-pkg/"),
        ("/simple/DEMO.pkg", "/simple/demo-pkg/"),
    ],
)
def test_redirects_to_the_normalized_url(served: Served, path: str, location: str) -> None:
    reply = served.request(path)
    assert reply.status == 301
    assert reply.headers["Location"] == location


@pytest.mark.parametrize(
    "path", ["/simple/unknown/", "/simple/demo-pkg/extra", "/files/demo-pkg/nope.whl", "/nowhere"]
)
def test_missing_is_404(served: Served, path: str) -> None:
    assert served.request(path).status == 404


def test_files_and_metadata_are_served_as_bytes(served: Served) -> None:
    for name in (served.wheel.name, f"{served.wheel.name}.metadata"):
        on_disk = (served.root / "files" / "demo-pkg" / name).read_bytes()
        reply = served.request(f"/files/demo-pkg/{name}")
        assert reply.status == 200
        assert reply.body == on_disk
        assert reply.headers["Content-Type"] == "application/octet-stream"
        assert reply.headers["Content-Length"] == str(len(on_disk))


def test_head_sends_headers_without_a_body(served: Served) -> None:
    for path, headers in [
        (f"/files/demo-pkg/{served.wheel.name}", {}),
        ("/simple/demo-pkg/", {"Accept": JSON_V1}),
    ]:
        get = served.request(path, **headers)
        head = served.request(path, method="HEAD", **headers)
        assert head.status == 200
        assert head.body == b""
        assert head.headers["Content-Length"] == str(len(get.body))
        assert head.headers["ETag"] == get.headers["ETag"]


def test_if_none_match_gives_304(served: Served) -> None:
    for path in (f"/files/demo-pkg/{served.wheel.name}", "/simple/demo-pkg/"):
        first = served.request(path, Accept=JSON_V1)
        again = served.request(path, Accept=JSON_V1, If_None_Match=first.headers["ETag"])
        assert again.status == 304
        assert again.body == b""
        stale = served.request(path, Accept=JSON_V1, If_None_Match='"something-else"')
        assert stale.status == 200
    # Each representation has its own tag, so a cached JSON tag does not answer for HTML.
    json_tag = served.request("/simple/demo-pkg/", Accept=JSON_V1).headers["ETag"]
    html_reply = served.request("/simple/demo-pkg/", If_None_Match=json_tag)
    assert html_reply.status == 200


@pytest.mark.parametrize(
    "path",
    [
        "/files/../../etc/passwd",
        "/files/demo-pkg/../../../etc/passwd",
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/..%2f..%2f..%2fetc%2fpasswd",
        "/files/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "/files/..%5c..%5cetc%5cpasswd",
        "/files/%2fetc%2fpasswd",
        "/files//etc/passwd",
        "/files/demo-pkg/%00",
        "/files/%ff",
        "/simple/..%2f..%2fetc/",
        "/../index/files/demo-pkg/x",
    ],
)
def test_path_traversal_is_refused(served: Served, path: str) -> None:
    reply = served.request(path)
    assert reply.status in (400, 404)
    assert b"root:" not in reply.body


def test_symlinks_out_of_the_tree_are_not_followed(served: Served, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    link = served.root / "files" / "demo-pkg" / "leak.whl"
    link.symlink_to(secret)
    reply = served.request("/files/demo-pkg/leak.whl")
    assert reply.status == 404
    assert b"do not serve" not in reply.body


def test_status_page_links_to_the_index(served: Served) -> None:
    reply = served.request("/")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/html")
    assert b'<a href="/simple/">' in reply.body
    assert b"1 projects" in reply.body


def test_requests_are_logged_through_the_callable(served: Served) -> None:
    served.request("/simple/demo-pkg/")
    assert any('"GET /simple/demo-pkg/ HTTP/1.1" 200' in line for line in served.lines)


def test_serve_stops_cleanly_on_ctrl_c(served: Served) -> None:
    # serve() blocks until KeyboardInterrupt, so it runs in a child that gets a real SIGINT.
    code = (
        "import sys; from pathlib import Path; from bot.serve import serve; "
        "serve(Path(sys.argv[1]), '127.0.0.1', 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-u", "-c", code, str(served.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        banner = child.stdout.readline()
        assert banner.startswith("serving ")
        port = int(banner.split("http://127.0.0.1:")[1].split("/")[0])
        probe = Served(served.root, port, served.wheel, [])
        assert probe.request("/simple/demo-pkg/", Accept=JSON_V1).status == 200
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert "stopping" in out


def _clean_env() -> dict[str, str]:
    # The installers must see only our index: no PIP_*/UV_* settings from the environment.
    return {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}


def _uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


@pytest.mark.slow
def test_pip_and_uv_install_from_the_served_index(tmp_path: Path) -> None:
    pytest.importorskip("flit_core")
    name, module = "wheelstock-e2e-probe", "wheelstock_e2e_probe"
    project = make_project(tmp_path / "src", name, "1.2.3")
    wheel = build_project_wheel(project, tmp_path / "dist")
    root = tmp_path / "index"
    publish(root, name, [wheel])
    lines: list[str] = []
    server = make_server(root, "127.0.0.1", 0, log=lines.append)
    # A short poll lets shutdown() return promptly at teardown.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/simple/"
    env = _clean_env()
    check = f"import {module}; print({module}.__version__)"
    try:
        with_pip = tmp_path / "venv-pip"
        subprocess.run([sys.executable, "-m", "venv", str(with_pip)], check=True, env=env)
        pip_python = with_pip / "bin" / "python"
        subprocess.run(
            [
                str(pip_python),
                "-m",
                "pip",
                "install",
                "--isolated",
                "--no-cache-dir",
                "--disable-pip-version-check",
                "--index-url",
                url,
                name,
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        assert (
            subprocess.run(
                [str(pip_python), "-c", check], check=True, env=env, capture_output=True, text=True
            ).stdout.strip()
            == "1.2.3"
        )
        pip_requests = sum(f"GET /files/{name}/{wheel.name} " in line for line in lines)
        assert pip_requests == 1

        with_uv = tmp_path / "venv-uv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(with_uv)], check=True)
        uv_python = with_uv / "bin" / "python"
        subprocess.run(
            [
                *_uv(),
                "pip",
                "install",
                "--python",
                str(uv_python),
                "--no-cache",
                "--no-config",
                "--index-url",
                url,
                name,
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        assert (
            subprocess.run(
                [str(uv_python), "-c", check], check=True, env=env, capture_output=True, text=True
            ).stdout.strip()
            == "1.2.3"
        )
        assert sum(f"GET /files/{name}/{wheel.name} " in line for line in lines) == 2
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
