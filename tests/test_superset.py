"""Our pages are a superset of upstream's, and upstream's yanks and deletions reach our wheels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot import index, index_pages, index_verify, serve
from bot.errors import PublishError
from bot.index import DELETED_UPSTREAM, IndexedFile, UpstreamEntry, propagate_yanks
from bot.simple import DistFile
from bot.state import State

from conftest import Workspace
from projects import assemble_wheel, fixture_sdist
from support import clean_env

SHA = "a" * 64
OTHER = "b" * 64


def dist(filename: str, *, yanked: str | None = None, sha256: str | None = SHA) -> DistFile:
    return DistFile(
        filename=filename,
        url=f"https://upstream.invalid/files/{filename}",
        sha256=sha256,
        requires_python=">=3.8",
        yanked=yanked,
        upload_time=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
        size=123,
        core_metadata=f"sha256={OTHER}" if filename.endswith(".whl") else None,
    )


def ours(filename: str, yanked: str | None = None) -> IndexedFile:
    return IndexedFile(filename, SHA, 10, None, "2024-06-01T00:00:00.000000Z", OTHER, yanked)


def upstream(*dists: DistFile) -> list[UpstreamEntry]:
    return [UpstreamEntry.from_dist(d) for d in dists]


WHEEL = "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"


@pytest.mark.parametrize(
    ("theirs", "expected"),
    [
        pytest.param([dist("demo-1.0.tar.gz")], None, id="sdist-there"),
        pytest.param([dist("demo-1.0.tar.gz", yanked="broken")], "broken", id="sdist-yanked"),
        pytest.param([dist("demo-1.0.tar.gz", yanked="")], "", id="yanked-without-reason"),
        pytest.param(
            [dist("demo-1.0.tar.gz", yanked="old"), dist("demo-1.0.zip")], None, id="one-of-two"
        ),
        pytest.param([dist("demo-2.0.tar.gz")], DELETED_UPSTREAM, id="release-deleted"),
        pytest.param([], DELETED_UPSTREAM, id="every-file-deleted"),
        pytest.param(
            [dist("demo-1.0-py3-none-any.whl")], DELETED_UPSTREAM, id="only-its-sdist-deleted"
        ),
        pytest.param(
            [dist("demo-1.0-py3-none-any.whl", yanked="bad wheel")],
            "bad wheel",
            id="release-of-wheels-yanked",
        ),
        pytest.param([dist("demo-1.0.0.tar.gz")], None, id="same-version-other-spelling"),
    ],
)
def test_propagate_yanks(theirs: list[DistFile], expected: str | None) -> None:
    (result,) = propagate_yanks([ours(WHEEL)], upstream(*theirs))
    assert result.yanked == expected


def test_unyank_upstream_clears_ours() -> None:
    (result,) = propagate_yanks([ours(WHEEL, yanked="broken")], upstream(dist("demo-1.0.tar.gz")))
    assert result.yanked is None


def page(root: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "simple" / name / "index.json").read_text())
    return data


def test_refresh_writes_a_superset_page_and_keeps_our_files_apart(tmp_path: Path) -> None:
    root = tmp_path / "index"
    wheel = assemble_wheel(tmp_path / "w", "demo", "1.0", tag="cp311-cp311-linux_x86_64")
    index.publish(root, "demo", [wheel])
    theirs = [
        dist("demo-0.9.tar.gz"),
        dist("demo-1.0.tar.gz"),
        dist("demo-1.0-py3-none-any.whl", sha256=None),
        # Upstream later serving a file with our name: ours stays, once.
        dist(wheel.name),
    ]
    assert index.refresh(root, {"demo": theirs}) == []
    files = {f["filename"]: f for f in page(root, "demo")["files"]}
    assert sorted(files) == sorted(
        ["demo-0.9.tar.gz", "demo-1.0.tar.gz", "demo-1.0-py3-none-any.whl", wheel.name]
    )
    assert files[wheel.name]["url"] == f"../../files/demo/{wheel.name}"
    sdist = files["demo-1.0.tar.gz"]
    assert sdist == {
        "filename": "demo-1.0.tar.gz",
        "url": "https://upstream.invalid/files/demo-1.0.tar.gz",
        "hashes": {"sha256": SHA},
        "requires-python": ">=3.8",
        "size": 123,
        "upload-time": "2024-05-01T12:00:00.000000Z",
    }
    assert files["demo-1.0-py3-none-any.whl"]["hashes"] == {}
    assert files["demo-1.0-py3-none-any.whl"]["core-metadata"] == {"sha256": OTHER}
    assert page(root, "demo")["versions"] == ["0.9", "1.0"]
    html = (root / "simple" / "demo" / "index.html").read_text()
    assert f'href="https://upstream.invalid/files/demo-1.0.tar.gz#sha256={SHA}"' in html
    assert f'data-core-metadata="sha256={OTHER}"' in html
    # What the index calls ours is still only what publish recorded.
    assert [f.filename for f in index.project_files(root, "demo")] == [wheel.name]
    # rebuild keeps upstream's entries (it has no network of its own).
    index.rebuild(root)
    assert len(page(root, "demo")["files"]) == 4


def test_refresh_hosts_enrolled_projects_and_writes_the_root_once(tmp_path: Path) -> None:
    root = tmp_path / "index"
    names = [f"p{i}" for i in range(30)]
    index.refresh(root, {n: [dist(f"{n}-1.0.tar.gz")] for n in names})
    listed = json.loads((root / "simple" / "index.json").read_text())["projects"]
    assert [p["name"] for p in listed] == sorted(names)
    before = (root / "simple" / "index.json").stat().st_mtime_ns
    # Nothing new: no page, and not the root, is written again.
    mtimes = {n: (root / "simple" / n / "index.json").stat().st_mtime_ns for n in names}
    index.refresh(root, {n: [dist(f"{n}-1.0.tar.gz")] for n in names})
    assert (root / "simple" / "index.json").stat().st_mtime_ns == before
    assert {n: (root / "simple" / n / "index.json").stat().st_mtime_ns for n in names} == mtimes


def published_demo(ws: Workspace, tmp_path: Path) -> tuple[Path, Path]:
    """demo 1.0 upstream, built and approved: its sdist, and the index tree it is in."""
    ws.enrol("demo", "alice")
    sdist = fixture_sdist(tmp_path, "demo", "1.0")
    ws.upstream.add_file("demo", sdist)
    assert ws.run("tick").code == 0
    assert ws.run("review", "approve", "demo", "1.0", "--as", "alice").code == 0
    return sdist, ws.state / "index"


def test_yank_unyank_and_delete_reach_our_wheel_through_ticks(
    workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    sdist, root = published_demo(ws, tmp_path)

    def ours() -> dict[str, Any]:
        (mine,) = [f for f in page(root, "demo")["files"] if f["url"].startswith("../")]
        return mine

    assert "yanked" not in ours()
    ws.upstream.add_file("demo", sdist, yanked="security hole")
    result = ws.run("tick")
    assert "index: yanked demo-1.0-py3-none-any.whl: security hole" in result.out
    assert ours()["yanked"] == "security hole"
    html = (root / "simple" / "demo" / "index.html").read_text()
    (anchor,) = [line for line in html.splitlines() if ">demo-1.0-py3-none-any.whl<" in line]
    assert 'data-yanked="security hole"' in anchor

    ws.upstream.add_file("demo", sdist)  # un-yanked
    result = ws.run("tick")
    assert "index: unyanked demo-1.0-py3-none-any.whl" in result.out
    assert "yanked" not in ours()

    ws.upstream.remove_file("demo", sdist.name)
    ws.upstream.add_file("demo", fixture_sdist(tmp_path / "2", "demo", "2.0"))
    ws.run("tick")
    assert ours()["yanked"] == DELETED_UPSTREAM
    # Never deleted: the file is still there for hash pins.
    assert (root / "files" / "demo" / "demo-1.0-py3-none-any.whl").is_file()
    # A tick where upstream did not change leaves the page alone.
    stamp = (root / "simple" / "demo" / "index.json").stat().st_mtime_ns
    ws.run("tick", "--no-build")
    assert (root / "simple" / "demo" / "index.json").stat().st_mtime_ns == stamp


def backoff_over(ws: Workspace) -> None:
    """As if the backoff after a failed check had run out (the CLI's clock is the real one)."""
    state = State(ws.state)
    try:
        state.clear_failures("demo")
    finally:
        state.close()


def test_a_project_deleted_upstream_has_our_wheels_yanked_and_kept(
    workspace: Workspace, tmp_path: Path
) -> None:
    ws = workspace
    sdist, root = published_demo(ws, tmp_path)

    ws.upstream.remove_project("demo")  # the whole project: its page is a 404
    result = ws.run("tick", "--no-build")
    assert f"index: yanked demo-1.0-py3-none-any.whl: {DELETED_UPSTREAM}" in result.out
    files = page(root, "demo")["files"]
    assert [(f["filename"], f.get("yanked")) for f in files] == [
        ("demo-1.0-py3-none-any.whl", DELETED_UPSTREAM)
    ]
    html = (root / "simple" / "demo" / "index.html").read_text()
    assert f'data-yanked="{DELETED_UPSTREAM}"' in html
    assert (root / "files" / "demo" / "demo-1.0-py3-none-any.whl").is_file()
    assert ws.run("index", "verify").code == 0
    # Still gone, checked again once its backoff has run out: the page is not written again.
    backoff_over(ws)
    stamp = (root / "simple" / "demo" / "index.json").stat().st_mtime_ns
    result = ws.run("tick", "--no-build")
    assert "not found" in result.out and "index: " not in result.out
    assert (root / "simple" / "demo" / "index.json").stat().st_mtime_ns == stamp

    backoff_over(ws)
    ws.upstream.add_file("demo", sdist)  # back again
    result = ws.run("tick", "--no-build")
    assert "index: unyanked demo-1.0-py3-none-any.whl" in result.out
    (mine,) = [f for f in page(root, "demo")["files"] if f["url"].startswith("../")]
    assert "yanked" not in mine


def test_a_deleted_projects_yank_survives_a_failed_index_write(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = workspace
    _, root = published_demo(ws, tmp_path)
    ws.upstream.remove_project("demo")
    real = index.refresh

    def broken(*args: Any, **kwargs: Any) -> list[str]:
        raise PublishError("disk full")

    monkeypatch.setattr(index, "refresh", broken)
    assert "error: index: disk full" in ws.run("tick", "--no-build").out
    monkeypatch.setattr(index, "refresh", real)
    backoff_over(ws)
    result = ws.run("tick", "--no-build")
    assert f"index: yanked demo-1.0-py3-none-any.whl: {DELETED_UPSTREAM}" in result.out
    (mine,) = [f for f in page(root, "demo")["files"] if f["url"].startswith("../")]
    assert mine["yanked"] == DELETED_UPSTREAM


def test_a_deleted_project_whose_stored_page_has_no_digest_has_our_wheels_yanked(
    workspace: Workspace, tmp_path: Path
) -> None:
    # A page stored before pages had a digest, and only answered 304 since, has none.
    ws = workspace
    _, root = published_demo(ws, tmp_path)
    state = State(ws.state)
    try:
        with state.transaction() as db:
            db.execute("UPDATE pages SET digest = NULL")
    finally:
        state.close()
    ws.upstream.remove_project("demo")
    ws.run("tick", "--no-build")
    (mine,) = [f for f in page(root, "demo")["files"] if f["url"].startswith("../")]
    assert mine["yanked"] == DELETED_UPSTREAM


def test_a_project_gone_upstream_without_a_page_of_ours_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "index"
    index.refresh(root, {"kept": [dist("kept-1.0.tar.gz")]})
    before = sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.startswith("."))
    assert index.refresh(root, {}, gone=["never-here"]) == []
    after = sorted(p.relative_to(root) for p in root.rglob("*") if not p.name.startswith("."))
    assert after == before


@pytest.fixture
def served(workspace: Workspace) -> Iterator[str]:
    server = serve.make_server(workspace.state / "index", "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_uv_first_index_strategy_sees_upstream_through_our_page(
    workspace: Workspace, tmp_path: Path, served: str
) -> None:
    ws = workspace
    ws.enrol("demo", "alice")
    # Upstream: 1.0 as a wheel and an sdist; 1.1 as an sdist only, which we build.
    ws.upstream.add_file("demo", assemble_wheel(tmp_path / "w10", "demo", "1.0"))
    ws.upstream.add_file("demo", fixture_sdist(tmp_path / "s10", "demo", "1.0"))
    ws.upstream.add_file("demo", fixture_sdist(tmp_path / "s11", "demo", "1.1"))
    assert ws.run("tick").code == 0
    assert ws.run("review", "approve", "demo", "1.1", "--as", "alice").code == 0
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    env = clean_env()
    for spec, source in (("demo==1.0", "upstream"), ("demo==1.1", "ours")):
        venv = tmp_path / f"venv-{spec}"
        subprocess.run([uv, "venv", "-q", str(venv)], check=True, env=env)
        # uv's default strategy takes the first index that has the name as the whole truth:
        # ours, listed as an extra index, comes first.
        done = subprocess.run(
            [
                uv, "pip", "install", "--python", str(venv / "bin" / "python"),
                "--index-url", ws.upstream.url, "--extra-index-url", served,
                "--no-cache", spec,
            ],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        installed = subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import demo, sys; print(demo.__file__)"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert installed.returncode == 0, source
    # pip merges indexes, and sees the same through ours.
    venv = tmp_path / "venv-pip"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run(
        [
            str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir",
            "--index-url", served, "demo==1.0", "--only-binary", ":all:",
        ],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_bulk_write_syncs_once_with_its_journal_still_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "index"
    fsyncs: list[int] = []
    syncs: list[bool] = []
    real_fsync, real_sync = os.fsync, index.sync_filesystem
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])

    def sync(path: Path) -> None:
        syncs.append((root / ".index.journal").exists())
        real_sync(path)

    monkeypatch.setattr(index, "sync_filesystem", sync)
    index.refresh(root, {f"p{i}": [dist(f"p{i}-1.0.tar.gz")] for i in range(40)})
    # 82 pages and not one fsync each: the journal's (file and directory), then one syncfs
    # while the journal still says what to finish if the machine stops before it.
    assert len(fsyncs) <= 2
    assert syncs == [True]
    assert not (root / ".index.journal").exists()
    assert len(list((root / "simple").glob("*/index.html"))) == 40

    # A publish is a few files: each is made durable as it is written, no syncfs.
    fsyncs.clear()
    wheel = assemble_wheel(tmp_path / "in", "p1", "1.0", tag="cp311-cp311-linux_x86_64")
    index.publish(root, "p1", [wheel])
    assert syncs == [True]
    assert len(fsyncs) >= 4  # the wheel, its .metadata, two pages (and the journal)


@pytest.mark.parametrize(
    ("filename", "version"),
    [
        ("demo-1.0.tar.gz", "1.0"),
        ("demo-1.0.zip", "1.0"),
        ("old-style-name-2.0rc1.tar.gz", "2.0rc1"),  # an sdist from before PEP 625
        ("demo-1.0-py3-none-any.whl", "1.0"),
        ("demo-1.0-1-cp311-cp311-linux_x86_64.whl", "1.0"),  # a build tag
        ("demo-01.00.post0-py3-none-any.whl", "1.0.post0"),
        ("demo.tar.gz", None),
        ("-1.0.tar.gz", None),
        ("demo-notaversion.tar.gz", None),
        ("demo-1.0.tar.bz2", None),
        ("demo-1.0-py3-none.whl", None),
        ("demo-1.0-1-2-py3-none-any.whl", None),
        ("README", None),
    ],
)
def test_the_version_a_filename_names(filename: str, version: str | None) -> None:
    found = index_pages._version_of(filename)
    assert (None if found is None else str(found)) == version


def test_a_page_that_cannot_be_written_fails_the_bulk_write_and_the_next_one_heals(
    tmp_path: Path,
) -> None:
    root = tmp_path / "index"
    pages = {f"p{i:02d}": [dist(f"p{i:02d}-1.0.tar.gz")] for i in range(40)}
    blocked = root / "simple" / "p17" / "index.html"
    (blocked / "in-the-way").mkdir(parents=True)  # a directory where the page goes
    with pytest.raises(PublishError, match=r"cannot write .*p17/index\.html"):
        index.refresh(root, pages)
    # The journal stays: it says what the next writer finishes.
    assert (root / ".index.journal").exists()
    shutil.rmtree(blocked)
    index.refresh(root, pages)
    assert index_verify.verify(root) == []
    assert not (root / ".index.journal").exists()
