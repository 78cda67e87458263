"""A tick pays for what changed: no git and no forge reads for a project where nothing moved.

git is counted for real: a ``git`` first on PATH logs each run, then hands it to the real one
(GitPython runs ``git`` through PATH too).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import git
import pytest
from test_propose import quick_sdist

from bot.forge.local import LocalForge
from bot.state import FORGE_CURSOR, State

from conftest import Workspace
from projects import fixture_sdist


@dataclass
class GitLog:
    path: Path

    def runs(self) -> list[str]:
        if not self.path.exists():
            return []
        return self.path.read_text().splitlines()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def git_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[GitLog]:
    real = shutil.which("git")
    assert real is not None
    bin_dir = tmp_path / "counting-bin"
    bin_dir.mkdir()
    log = GitLog(tmp_path / "git-runs.log")
    wrapper = bin_dir / "git"
    wrapper.write_text(f'#!/bin/sh\necho "$PWD :: $*" >> "{log.path}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield log


PROJECTS = ("alpha", "beta", "gamma", "delta")


def settled(ws: Workspace, tmp_path: Path) -> None:
    """Four feedstocks, three with an open bump PR, one PR with a comment; then quiet."""
    for name in PROJECTS:
        ws.enrol(name, "alice")
        ws.upstream.add_file(name, fixture_sdist(tmp_path / name, name, "1.0"))
    assert ws.run("tick", "--no-build").code == 0
    for name in PROJECTS[:3]:
        ws.upstream.add_file(name, fixture_sdist(tmp_path / name, name, "1.1"))
    result = ws.run("tick", "--no-build")
    assert result.code == 0 and "3 PRs opened" in result.out, result.out
    forge = LocalForge(ws.state / "forge")
    (first, *_) = forge.pull_requests(state="open")
    forge.comment(first.number, "alice", "Looks fine to me.")
    # The tick after the bot's own changes looks at what it changed once more.
    assert ws.run("tick", "--no-build").code == 0


def test_a_tick_where_nothing_moved_runs_no_git(
    workspace: Workspace, tmp_path: Path, git_log: GitLog
) -> None:
    settled(workspace, tmp_path)
    git_log.clear()
    result = workspace.run("tick", "--no-build")
    assert result.code == 0, result.out
    assert "0 PRs opened" in result.out and "0 errors" in result.out
    assert git_log.runs() == []
    # And again: nothing a no-change tick does makes the next one do more.
    assert workspace.run("tick", "--no-build").code == 0
    assert git_log.runs() == []


def quiet_since_a_tick(ws: Workspace, tmp_path: Path, git_log: GitLog) -> None:
    """settled(), one more tick that changes nothing, and the git log emptied."""
    settled(ws, tmp_path)
    assert ws.run("tick", "--no-build").code == 0
    git_log.clear()


def status_lines(ws: Workspace) -> dict[str, list[str]]:
    """``wheelstock status``'s columns, per project."""
    result = ws.run("status")
    assert result.code == 0, result.out
    return {line.split()[0]: line.split() for line in result.out.splitlines()[1:]}


def test_status_after_a_quiet_tick_runs_no_git_and_reads_what_moved_since(
    workspace: Workspace, tmp_path: Path, git_log: GitLog
) -> None:
    ws = workspace
    quiet_since_a_tick(ws, tmp_path, git_log)
    lines = status_lines(ws)
    assert git_log.runs() == []
    forge = LocalForge(ws.state / "forge")
    assert {name: lines[name][2] for name in PROJECTS} == dict.fromkeys(PROJECTS, "1.0")
    for name in PROJECTS:
        numbers = ",".join(f"#{pr.number}" for pr in forge.pull_requests(name, "open")) or "-"
        assert lines[name][3] == numbers

    # A merge by hand after the tick: status reads that feedstock, and only that one, again.
    (pr,) = forge.pull_requests("alpha", "open")
    assert ws.run("pr", "merge", str(pr.number), "--as", "volunteer").code == 0
    git_log.clear()
    lines = status_lines(ws)
    assert repos_touched(git_log.runs(), forge) == {"alpha"}
    assert (lines["alpha"][2], lines["alpha"][3], lines["beta"][2]) == ("1.1", "-", "1.0")


def test_the_graph_after_a_quiet_tick_runs_no_git_and_is_the_graph_git_gives(
    workspace: Workspace, tmp_path: Path, git_log: GitLog
) -> None:
    ws = workspace
    quiet_since_a_tick(ws, tmp_path, git_log)
    quiet = ws.run("graph", "export")
    assert quiet.code == 0 and git_log.runs() == []
    assert all(f'"{name}"' in quiet.out for name in PROJECTS)
    # Without the forge's cursor every version is read from git again: the same graph.
    state = State(ws.state)
    try:
        with state.transaction() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (FORGE_CURSOR,))
    finally:
        state.close()
    read = ws.run("graph", "export")
    assert repos_touched(git_log.runs(), LocalForge(ws.state / "forge")) == set(PROJECTS)
    assert read.out == quiet.out


@pytest.mark.parametrize("how", ["skip", "remove"])
def test_status_and_graph_show_mains_version_after_a_merge_while_the_entry_is_not_synced(
    workspace: Workspace, tmp_path: Path, how: str
) -> None:
    # A skipped or removed entry is not synced, so the state's version of it is not main's
    # once main moves; status and the graph must read it from the forge.
    ws = workspace
    for name in ("base", "demo"):
        ws.enrol(name, "alice")
        ws.upstream.add_file(name, quick_sdist(tmp_path / name, name, "1.0"))
    assert ws.run("tick", "--no-build").code == 0
    ws.upstream.add_file("demo", quick_sdist(tmp_path / "demo-1.1", "demo", "1.1", ("base",)))
    assert ws.run("tick", "--no-build").code == 0  # the bump PR; 1.1's metadata are read
    assert ws.run("tick", "--no-build").code == 0  # settled: the state keeps main's 1.0
    (pr,) = LocalForge(ws.state / "forge").pull_requests("demo", "open")
    path = ws.registry / "demo.yaml"
    if how == "skip":
        path.write_text(path.read_text() + "skip: paused by upstream's request\n")
    else:
        path.unlink()
    assert ws.run("pr", "merge", str(pr.number), "--as", "alice").code == 0
    assert ws.run("tick", "--no-build").code == 0  # past the merge; demo is not synced
    assert status_lines(ws)["demo"][2] == "1.1"
    if how == "skip":
        assert "demo" in ws.run("graph", "impact", "base").out


def human_push(forge: LocalForge, project: str, branch: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = git.Repo.clone_from(str(forge.repo_path(project)), tmp, branch=branch)
        (Path(tmp) / "NOTES.md").write_text("a volunteer's note\n")
        work.git.add("--all")
        work.git.update_environment(
            GIT_AUTHOR_NAME="carol",
            GIT_AUTHOR_EMAIL="carol@example.org",
            GIT_COMMITTER_NAME="carol",
            GIT_COMMITTER_EMAIL="carol@example.org",
        )
        work.git.commit("-m", "volunteer fix")
        work.git.push("origin", branch)


def repos_touched(runs: list[str], forge: LocalForge) -> set[str]:
    """The feedstocks whose bare repo a git run named or ran in."""
    names = set(forge.feedstocks())
    return {
        name
        for run in runs
        for name in names
        if str(forge.repo_path(name)) in run or f"{name}-feedstock" in run
    }


def test_only_the_project_that_moved_is_read(
    workspace: Workspace, tmp_path: Path, git_log: GitLog
) -> None:
    settled(workspace, tmp_path)
    forge = LocalForge(workspace.state / "forge")
    (pr,) = forge.pull_requests("beta", "open")
    human_push(forge, "beta", pr.branch)
    git_log.clear()
    result = workspace.run("tick", "--no-build")
    assert result.code == 0, result.out
    assert repos_touched(git_log.runs(), forge) == {"beta"}

    # A merge by hand moves main: that project alone is read again, and its new head is the
    # one the next build looks at.
    assert (
        workspace.run(
            "pr", "merge", str(forge.pull_requests("alpha", "open")[0].number), "--as", "volunteer"
        ).code
        == 0
    )
    git_log.clear()
    assert workspace.run("tick", "--no-build").code == 0
    assert repos_touched(git_log.runs(), forge) == {"alpha"}
    git_log.clear()
    assert workspace.run("tick", "--no-build").code == 0
    assert git_log.runs() == []


def test_a_new_release_is_seen_through_the_watch_alone(
    workspace: Workspace, tmp_path: Path, git_log: GitLog
) -> None:
    settled(workspace, tmp_path)
    workspace.upstream.add_file("delta", fixture_sdist(tmp_path / "delta", "delta", "2.0"))
    git_log.clear()
    result = workspace.run("tick", "--no-build")
    assert result.code == 0 and "1 PRs opened" in result.out, result.out
    forge = LocalForge(workspace.state / "forge")
    assert repos_touched(git_log.runs(), forge) == {"delta"}


def test_a_registry_edit_syncs_that_project(
    workspace: Workspace, tmp_path: Path, git_log: GitLog
) -> None:
    settled(workspace, tmp_path)
    # Ignoring the release its PR proposes: the PR must close, though nothing else moved.
    entry = workspace.registry / "gamma.yaml"
    entry.write_text(entry.read_text() + "versions:\n  ignore: ['==1.1']\n")
    git_log.clear()
    result = workspace.run("tick", "--no-build")
    assert result.code == 0, result.out
    assert "closed PR" in result.out and "no longer a release to build" in result.out
    forge = LocalForge(workspace.state / "forge")
    assert repos_touched(git_log.runs(), forge) == {"gamma"}
