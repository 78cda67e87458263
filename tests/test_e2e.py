"""The whole pipeline on loopback: enrol, tick, approve, bump, merge, build, pip and uv install."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import serve

from conftest import Workspace
from projects import fixture_sdist
from support import clean_env

pytestmark = pytest.mark.slow

NAME = "wsfixture"



@pytest.fixture
def index_server(workspace: Workspace) -> Iterator[str]:
    server = serve.make_server(workspace.state / "index", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_enrol_bump_merge_build_approve_install(
    workspace: Workspace, tmp_path: Path, index_server: str
) -> None:
    ws = workspace
    ws.enrol(NAME, "alice")
    ws.upstream.add_file(NAME, fixture_sdist(tmp_path, NAME, "1.0"))

    # First tick: the feedstock is created at 1.0 and its head is built into staging.
    first = ws.run("tick")
    assert first.code == 0, first.out + first.err
    assert f"created {NAME}-feedstock at 1.0" in first.out
    assert f"built {NAME} 1.0" in first.out
    assert "1 feedstocks created, 0 PRs opened, 1 built, 0 failed" in first.out
    listed = ws.run("review", "list")
    assert f"{NAME} 1.0  staged" in listed.out

    approved = ws.run("review", "approve", NAME, "1.0", "--as", "alice")
    assert approved.code == 0, approved.err
    assert f"published {NAME} 1.0: {NAME}-1.0-py3-none-any.whl" in approved.out

    # Upstream releases 1.1: exactly one PR, and a second tick opens none.
    ws.upstream.add_file(NAME, fixture_sdist(tmp_path, NAME, "1.1"))
    second = ws.run("tick")
    assert second.code == 0, second.out + second.err
    assert f"opened PR #1: {NAME} 1.0 → 1.1" in second.out
    assert "0 built" in second.out  # nothing merged yet, nothing to build
    third = ws.run("tick")
    assert "0 PRs opened" in third.out
    prs = ws.run("pr", "list")
    assert prs.out.count("open") == 1 and "#1" in prs.out

    shown = ws.run("pr", "show", "1")
    assert '+version: "1.1"' in shown.out and '-version: "1.0"' in shown.out
    assert f"{NAME}-1.1.tar.gz" in shown.out

    merged = ws.run("pr", "merge", "1", "--as", "volunteer")
    assert merged.code == 0 and "merged #1" in merged.out
    fourth = ws.run("tick")
    assert f"built {NAME} 1.1" in fourth.out and "1 built" in fourth.out
    assert ws.run("review", "approve", NAME, "1.1", "--as", "alice").code == 0

    published = ws.state / "index" / "files" / NAME / f"{NAME}-1.1-py3-none-any.whl"
    wheel_bytes = published.read_bytes()
    page = json.loads((ws.state / "index" / "simple" / NAME / "index.json").read_text())
    listed_hashes = {f["filename"]: f["hashes"]["sha256"] for f in page["files"]}
    assert listed_hashes[published.name] == sha256(wheel_bytes)
    # The approval is its own record beside the builder's provenance (in-toto Statement).
    approvals = [
        json.loads(path.read_text())
        for path in (ws.state / "builds" / NAME).glob("*/approval.json")
    ]
    assert len(approvals) == 2 and {a["predicate"]["approver"] for a in approvals} == {"alice"}

    # pip in a fresh venv installs the wheel wheelstock built, and only that.
    env = clean_env()
    venv = tmp_path / "venv-pip"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--index-url",
            index_server,
            "--report",
            str(report),
            f"{NAME}==1.1",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    (item,) = json.loads(report.read_text())["install"]
    assert item["download_info"]["url"].endswith(published.name)
    assert item["download_info"]["archive_info"]["hashes"]["sha256"] == sha256(wheel_bytes)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-c", f"import {NAME}; print({NAME}.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    assert installed.stdout.strip() == "1.1"

    # uv too, into another fresh venv.
    from uv import find_uv_bin

    uv = find_uv_bin()
    uv_venv = tmp_path / "venv-uv"
    subprocess.run([uv, "venv", "--quiet", str(uv_venv)], check=True, env=env)
    subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--python",
            str(uv_venv / "bin" / "python"),
            "--no-cache",
            "--index-url",
            index_server,
            f"{NAME}==1.1",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    (site,) = uv_venv.glob("lib/python*/site-packages")
    with zipfile.ZipFile(published) as wheel:
        inside = wheel.read(f"{NAME}/__init__.py")
        record = wheel.read(f"{NAME}-1.1.dist-info/RECORD")
    assert (site / NAME / "__init__.py").read_bytes() == inside
    # The installed RECORD lists the same hashes as the one in our wheel.
    installed_record = (site / f"{NAME}-1.1.dist-info" / "RECORD").read_text()
    for line in record.decode().splitlines():
        path, digest, _ = line.split(",")
        if digest:
            assert f"{path},{digest}," in installed_record
