"""The local forge's change feed and index, on real bare repos and real git: what a read costs."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from bot.errors import ForgeError
from bot.forge import PullRequest
from bot.forge.local import LocalForge

FILES = {"feedstock.yaml": "version: '1.0'\n"}


def run_git(*args: str, cwd: Path) -> str:
    """git as a person runs it, with their own name on the commits."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "carol",
        "GIT_AUTHOR_EMAIL": "carol@example.org",
        "GIT_COMMITTER_NAME": "carol",
        "GIT_COMMITTER_EMAIL": "carol@example.org",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def human_push(repo: Path, branch: str, work: Path, note: str = "a note\n") -> str:
    """Clone, commit, push: someone working on a feedstock without the forge's API."""
    run_git("clone", "--quiet", "--branch", branch, str(repo), str(work), cwd=repo.parent)
    (work / "NOTES.md").write_text(note)
    run_git("add", "NOTES.md", cwd=work)
    run_git("commit", "--quiet", "-m", "a note", cwd=work)
    run_git("push", "--quiet", "origin", branch, cwd=work)
    return run_git("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    forge = LocalForge(tmp_path / "forge")
    for project in ("alpha", "beta"):
        forge.create_feedstock(project, FILES, f"Create {project}")
    return forge


@pytest.fixture
def spawned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Callable[[], object]], list[str]]:
    """Runs a call and gives the git commands it spawned, through a logging ``git`` on PATH."""
    real = shutil.which("git")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "git-calls.log"
    wrapper = bin_dir / "git"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$*" >>{shlex.quote(str(log))}\nexec {shlex.quote(real)} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def calls() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    def run(call: Callable[[], object]) -> list[str]:
        before = len(calls())
        call()
        return calls()[before:]

    return run


def test_no_cursor_or_another_forges_is_incomplete(forge: LocalForge, tmp_path: Path) -> None:
    first = forge.changes(None)
    assert not first.complete and first.cursor
    assert forge.changes(first.cursor).complete
    other = LocalForge(tmp_path / "other")
    other.create_feedstock("alpha", FILES, "Create alpha")
    foreign = other.changes(None).cursor
    assert not forge.changes(foreign).complete
    assert not forge.changes("not a cursor").complete
    assert forge.changes(forge.changes(foreign).cursor).complete


def test_each_mutation_names_its_project_and_nothing_else(forge: LocalForge) -> None:
    cursor = forge.changes(None).cursor
    steps: list[Callable[[], object]] = [
        lambda: forge.push_change("alpha", "one", {"a.txt": "1\n"}, "one"),
        lambda: forge.open_pr("alpha", "one", "one", ""),
        lambda: forge.update_branch("alpha", "one", {"a.txt": "2\n"}, "two"),
        lambda: forge.push_change("alpha", "two", {"b.txt": "1\n"}, "two"),
        lambda: forge.open_pr("alpha", "two", "two", ""),
        lambda: forge.close_pr(2, "carol"),
        lambda: forge.merge_pr(1, "carol"),
    ]
    for step in steps:
        step()
        changes = forge.changes(cursor)
        assert (changes.projects, changes.commented, changes.complete) == ({"alpha"}, set(), True)
        cursor = changes.cursor
        assert forge.changes(cursor).projects == frozenset()
    forge.comment(1, "carol", "thanks")
    forge.comment(2, "carol", "why?")
    changes = forge.changes(cursor)
    assert (changes.projects, changes.commented) == ({"alpha"}, {1, 2})
    again = forge.changes(changes.cursor)
    assert (again.projects, again.commented, again.cursor) == (set(), set(), changes.cursor)


def test_a_push_with_plain_git_is_seen_without_running_git(
    forge: LocalForge, tmp_path: Path, spawned: Callable[[Callable[[], object]], list[str]]
) -> None:
    forge.push_change("alpha", "fix", {"a.txt": "1\n"}, "fix")
    pr = forge.open_pr("alpha", "fix", "fix", "")
    cursor = forge.changes(None).cursor
    sha = human_push(forge.repo_path("alpha"), "fix", tmp_path / "work")
    seen: dict[str, object] = {}
    assert spawned(lambda: seen.update(changes=forge.changes(cursor))) == []
    assert spawned(lambda: seen.update(head=forge.head("alpha", "fix"))) == []
    assert spawned(lambda: seen.update(pr=forge.get_pr(pr.number))) == []
    assert spawned(lambda: seen.update(listed=forge.pull_requests("alpha", "open"))) == []
    assert seen["changes"] == forge.changes(cursor) and forge.changes(cursor).projects == {"alpha"}
    assert seen["head"] == sha != pr.head_commit
    assert isinstance(seen["pr"], PullRequest) and seen["pr"].head_commit == sha
    assert seen["listed"] == [seen["pr"]]
    assert forge.branch_authors("alpha", "fix") == {"wheelstock-bot", "carol"}
    # A new branch and a deleted one, pushed with git, reach branches() too.
    work = tmp_path / "work"
    run_git("push", "--quiet", "origin", "HEAD:refs/heads/extra", ":refs/heads/fix", cwd=work)
    assert spawned(lambda: seen.update(branches=forge.branches("alpha"))) == []
    assert seen["branches"] == ["extra", "main"]
    # With its branch gone, the PR shows the head it was opened with, as before.
    assert forge.get_pr(pr.number).head_commit == pr.head_commit


def test_branch_authors_run_git_once_until_a_ref_moves(
    forge: LocalForge, tmp_path: Path, spawned: Callable[[Callable[[], object]], list[str]]
) -> None:
    forge.push_change("alpha", "fix", {"a.txt": "1\n"}, "fix")
    seen: list[set[str]] = []
    assert len(spawned(lambda: seen.append(forge.branch_authors("alpha", "fix")))) == 1
    assert spawned(lambda: seen.append(forge.branch_authors("alpha", "fix"))) == []
    assert seen == [{"wheelstock-bot"}, {"wheelstock-bot"}]
    human_push(forge.repo_path("alpha"), "fix", tmp_path / "work")
    assert len(spawned(lambda: seen.append(forge.branch_authors("alpha", "fix")))) == 1
    assert seen[-1] == {"wheelstock-bot", "carol"}


def test_what_reads_and_writes_cost_in_git_processes(
    forge: LocalForge, spawned: Callable[[Callable[[], object]], list[str]]
) -> None:
    forge.changes(None)  # the database is open, as in any process after its first call
    (fast_import,) = spawned(lambda: forge.push_change("alpha", "b", {"a.txt": "1\n"}, "b"))
    assert " fast-import " in f" {fast_import} "
    assert spawned(lambda: forge.open_pr("alpha", "b", "t", "")) == []
    reads: list[Callable[[], object]] = [
        lambda: forge.pull_requests("alpha"),
        lambda: forge.pull_requests(state="open"),
        lambda: forge.get_pr(1),
        lambda: forge.head("alpha", "b"),
        lambda: forge.head("alpha"),
        lambda: forge.branches("alpha"),
        lambda: forge.changes(None),
        lambda: forge.comments(1),
        lambda: forge.comment(1, "carol", "hi"),
        lambda: forge.close_pr(1, "carol"),
    ]
    for read in reads:
        assert spawned(read) == []
    # ls-tree, then fast-import; nothing at all when the files change nothing.
    assert len(spawned(lambda: forge.update_branch("alpha", "b", {"a.txt": "2\n"}, "b2"))) == 2
    assert len(spawned(lambda: forge.update_branch("alpha", "b", {"a.txt": "2\n"}, "b3"))) == 1


def test_commits_are_those_a_clone_would_make(forge: LocalForge) -> None:
    base = forge.head("alpha")
    files = {"feedstock.yaml": "version: '1.1'\n", 'dir with space/"q".txt': "é\n"}
    sha = forge.push_change("alpha", "wheelstock/alpha-1.1", files, "Bump  \n\n\n\nbody\n\n")
    repo = forge.repo_path("alpha")
    show = ["log", "-1", "--format=%P|%an <%ae>|%cn <%ce>|%B", sha]
    parent, author, committer, message = run_git(*show, cwd=repo).split("|")
    assert (parent, author, committer) == (base, *["wheelstock-bot <bot@wheelstock.invalid>"] * 2)
    assert message == "Bump\n\nbody"
    for path, text in files.items():
        assert forge.read_file("alpha", path, sha) == text
    assert forge.read_file("alpha", "feedstock.yaml") == FILES["feedstock.yaml"]
    ls = run_git("ls-tree", "-r", "--format=%(objectmode) %(path)", sha, cwd=repo)
    assert set(ls.splitlines()) == {
        "100644 feedstock.yaml",
        '100644 "dir with space/\\"q\\".txt"',
    }
    assert forge.update_branch("alpha", "wheelstock/alpha-1.1", files, "same") is None
    with pytest.raises(ForgeError, match="nothing to commit"):
        forge.push_change("alpha", "empty", {}, "nothing")


def test_update_branch_never_overwrites_a_push_it_did_not_see(
    forge: LocalForge, tmp_path: Path
) -> None:
    forge.push_change("alpha", "b", {"a.txt": "1\n"}, "b")
    sha = human_push(forge.repo_path("alpha"), "b", tmp_path / "work")
    # Seen through the hook: the bot's commit goes on top of the person's.
    mine = forge.update_branch("alpha", "b", {"a.txt": "2\n"}, "b2")
    assert run_git("rev-parse", f"{mine}^", cwd=forge.repo_path("alpha")) == sha
    # Moved behind the forge's back (update-ref runs no hook) to a commit the next one would
    # not contain: fast-import refuses, and the branch keeps what it has.
    (tmp_path / "work" / "NOTES.md").write_text("another note\n")
    run_git("commit", "--quiet", "-am", "another", cwd=tmp_path / "work")
    theirs = run_git("rev-parse", "HEAD", cwd=tmp_path / "work")
    run_git("push", "--quiet", "origin", "HEAD:refs/heads/side", cwd=tmp_path / "work")
    run_git("update-ref", "refs/heads/b", theirs, cwd=forge.repo_path("alpha"))
    with pytest.raises(ForgeError, match=r"^pushing to b of alpha-feedstock: git failed: "):
        forge.update_branch("alpha", "b", {"a.txt": "3\n"}, "b3")
    assert run_git("rev-parse", "b", cwd=forge.repo_path("alpha")) == theirs
    # The refusal set the index right: the next attempt goes on top of what git holds.
    assert forge.head("alpha", "b") == theirs
    again = forge.update_branch("alpha", "b", {"a.txt": "3\n"}, "b3")
    assert run_git("rev-parse", f"{again}^", cwd=forge.repo_path("alpha")) == theirs
    # The same for a branch made behind the forge's back: refused, then known.
    run_git("update-ref", "refs/heads/ghost", theirs, cwd=forge.repo_path("alpha"))
    with pytest.raises(ForgeError, match="^pushing ghost to alpha-feedstock: git failed: "):
        forge.push_change("alpha", "ghost", {"a.txt": "4\n"}, "ghost")
    assert "ghost" in forge.branches("alpha")


def test_a_record_changed_by_hand_is_noticed(forge: LocalForge) -> None:
    forge.push_change("alpha", "b", {"a.txt": "1\n"}, "b")
    pr = forge.open_pr("alpha", "b", "title", "")
    # Some time later (without waiting: pulls/ is dated back a minute), someone edits it.
    info = forge.pulls.stat()
    os.utime(forge.pulls, ns=(info.st_atime_ns, info.st_mtime_ns - 60 * 10**9))
    cursor = forge.changes(None).cursor
    path = forge.pulls / "000001.json"
    # As editors and `sed -i` save: a new file renamed over the old one.
    edited = forge.pulls / ".edit"
    edited.write_text(json.dumps({**asdict(pr), "title": "retitled", "project": "beta"}))
    edited.rename(path)
    assert forge.get_pr(1).title == "retitled"
    assert forge.changes(cursor).projects == {"alpha", "beta"}
    assert forge.pull_requests("alpha") == [] and len(forge.pull_requests("beta")) == 1
    cursor = forge.changes(cursor).cursor
    path.unlink()
    assert forge.pull_requests() == []
    assert forge.changes(cursor).projects == {"beta"}
    (forge.pulls / "000007.json").write_text("{not json")
    with pytest.raises(ForgeError, match=r"000007\.json: not a readable pull request record$"):
        forge.pull_requests("alpha")
    assert forge.open_pr("alpha", "b", "again", "").number == 8  # 7 stays the broken file's


def test_two_forges_on_one_root_see_each_other(forge: LocalForge) -> None:
    other = LocalForge(forge.root)
    cursor = other.changes(None).cursor
    forge.push_change("alpha", "b", {"a.txt": "1\n"}, "b")
    assert other.branches("alpha") == ["b", "main"]
    mine, theirs = forge.open_pr("alpha", "b", "t", ""), other.open_pr("alpha", "b", "u", "")
    assert (mine.number, theirs.number) == (1, 2)
    assert forge.comment(1, "carol", "x").id == 1 and other.comment(2, "dave", "y").id == 2
    assert other.changes(cursor).projects == {"alpha"}
    assert other.changes(cursor).commented == {1, 2}
    other.merge_pr(1, "carol")
    assert forge.get_pr(1).state == "merged" and forge.head("alpha") == other.head("alpha")
    with pytest.raises(ForgeError, match="is merged, not open"):
        forge.close_pr(1, "dave")


@pytest.fixture
def old_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A forge root as the code before forge.db left it: bare repos, pulls/ and comments/."""
    root = tmp_path / "old"
    repo = root / "repos" / "legacy-feedstock.git"
    repo.parent.mkdir(parents=True)
    run_git("init", "--quiet", "--bare", "--initial-branch=main", str(repo), cwd=tmp_path)
    work = tmp_path / "legacy"
    run_git("init", "--quiet", "--initial-branch=main", str(work), cwd=tmp_path)
    (work / "feedstock.yaml").write_text("version: '1.0'\n")
    run_git("add", "--all", cwd=work)
    run_git("commit", "--quiet", "-m", "Create", cwd=work)
    base = run_git("rev-parse", "HEAD", cwd=work)
    run_git("checkout", "--quiet", "-b", "bump", cwd=work)
    (work / "feedstock.yaml").write_text("version: '1.1'\n")
    run_git("commit", "--quiet", "-am", "Bump", cwd=work)
    head = run_git("rev-parse", "HEAD", cwd=work)
    run_git("push", "--quiet", str(repo), "main", "bump", cwd=work)
    (root / "pulls").mkdir()
    for number, state in ((1, "closed"), (2, "open")):
        record = PullRequest(number, "legacy", "bump", "t", "", state, base, base, "then")
        (root / "pulls" / f"{number:06d}.json").write_text(json.dumps(asdict(record)))
    (root / "comments").mkdir()
    thread = [{"id": 41, "number": 2, "author": "carol", "body": "hi", "created_at": "then"}]
    (root / "comments" / "000002.json").write_text(json.dumps(thread))
    yield root, head


def test_a_root_from_before_the_database_is_taken_in(
    old_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, head = old_root
    forge = LocalForge(root)
    assert not forge.changes(None).complete
    assert [(p.number, p.state) for p in forge.pull_requests("legacy")] == [
        (1, "closed"),
        (2, "open"),
    ]
    assert forge.get_pr(2).head_commit == head  # the open one shows its branch, as before
    assert forge.branches("legacy") == ["bump", "main"]
    hook = forge.repo_path("legacy") / "hooks" / "post-receive"
    assert os.access(hook, os.X_OK)
    assert forge.comment(2, "dave", "next").id == 42
    assert forge.open_pr("legacy", "bump", "again", "").number == 3
    cursor = forge.changes(None).cursor
    sha = human_push(forge.repo_path("legacy"), "bump", tmp_path / "work")
    assert forge.changes(cursor).projects == {"legacy"}
    assert forge.get_pr(2).head_commit == sha
    # A second process on the migrated root sees the same, and no second migration runs.
    assert LocalForge(root).get_pr(2).head_commit == sha
    assert forge.changes(cursor).complete
