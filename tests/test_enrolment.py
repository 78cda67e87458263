"""How registry entries steer the tick: skip, version rules, retirement, status."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Workspace
from projects import fixture_sdist


def test_skipped_project_is_left_alone_and_says_why(workspace: Workspace) -> None:
    path = workspace.enrol("demo", "alice")
    path.write_text(path.read_text() + "skip: upstream asked us to pause until 2.1\n")
    result = workspace.run("tick")  # demo is not even upstream: a skipped entry is not asked
    assert result.code == 0, result.out
    assert "skipped demo: upstream asked us to pause until 2.1" in result.out
    assert "1 skipped" in result.out
    status = workspace.run("status")
    assert "demo" in status.out and "skipped" in status.out
    assert "(upstream asked us to pause until 2.1)" in status.out
    assert not (workspace.state / "forge" / "repos" / "demo-feedstock.git").exists()


def test_invalid_entry_shows_in_status(workspace: Workspace) -> None:
    workspace.enrol("demo", "alice").write_text("project: demo\nmaintainers: []\n")
    status = workspace.run("status")
    assert status.code == 0
    (line,) = [line for line in status.out.splitlines() if line.startswith("demo ")]
    assert "invalid" in line and "WS130" in line


@pytest.mark.slow
def test_version_rules_choose_the_release(workspace: Workspace, tmp_path: Path) -> None:
    for version in ("1.0", "1.1", "2.0rc1"):
        workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", version))
    path = workspace.enrol("demo", "alice")
    path.write_text(path.read_text() + "versions:\n  ignore: ['==1.1']\n")
    result = workspace.run("tick")
    assert "created demo-feedstock at 1.0" in result.out  # 1.1 ignored, 2.0rc1 a pre-release
    path.write_text(path.read_text().replace("ignore: ['==1.1']", "prereleases: true"))
    result = workspace.run("tick")
    assert "opened PR #1: demo 1.0 → 2.0rc1" in result.out


@pytest.mark.slow
def test_removed_entry_retires_its_feedstock_once(workspace: Workspace, tmp_path: Path) -> None:
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    entry = workspace.enrol("demo", "alice")
    assert workspace.run("tick").code == 0
    assert workspace.run("review", "approve", "demo", "1.0", "--as", "alice").code == 0
    published = workspace.state / "index" / "files" / "demo" / "demo-1.0-py3-none-any.whl"
    assert published.is_file()

    entry.unlink()
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.1"))
    first = workspace.run("tick")
    assert first.code == 0, first.out
    assert first.out.count("retired demo-feedstock") == 1
    assert "0 PRs opened" in first.out and "1 retired" in first.out
    second = workspace.run("tick")
    assert "retired" not in second.out and "0 PRs opened, 0 built" in second.out
    assert published.is_file()
    assert (
        "demo-1.0-py3-none-any.whl"
        in (workspace.state / "index/simple/demo/index.json").read_text()
    )
    assert "retired" in workspace.run("status").out

    # A broken entry file still claims the name: nothing is retired by a typo.
    workspace.enrol("demo", "alice").write_text("project: demo\nmaintainers: [alice\n")
    again = workspace.run("tick")
    assert "has a registry entry again" in again.out and "retired demo" not in again.out
