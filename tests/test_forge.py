"""The local forge on real bare git repositories."""

from __future__ import annotations

from pathlib import Path

import git
import pytest

from bot.errors import ForgeError
from bot.forge.local import LocalForge


@pytest.fixture
def forge(tmp_path: Path) -> LocalForge:
    forge = LocalForge(tmp_path / "forge")
    forge.create_feedstock(
        "demo", {"feedstock.yaml": "version: '1.0'\n", "docs/README.md": "hi\n"}, "Create demo"
    )
    return forge


def test_create_makes_a_real_bare_repo(forge: LocalForge) -> None:
    repo = git.Repo(forge.repo_path("demo"))
    assert repo.bare
    assert [h.name for h in repo.heads] == ["main"]
    assert forge.read_file("demo", "docs/README.md") == "hi\n"
    assert forge.feedstocks() == ["demo"]
    with pytest.raises(ForgeError, match="already exists"):
        forge.create_feedstock("demo", {"a": "b"}, "again")


def test_failed_create_leaves_nothing(tmp_path: Path) -> None:
    forge = LocalForge(tmp_path / "forge")
    with pytest.raises(ForgeError, match="creating empty-feedstock: git failed: .*nothing"):
        forge.create_feedstock("empty", {}, "nothing to commit")
    assert not forge.has_feedstock("empty")
    assert list((tmp_path / "forge" / "repos").iterdir()) == []


def test_relative_root_works_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git runs in temporary clones; a relative forge root must not be read relative to them.
    monkeypatch.chdir(tmp_path)
    forge = LocalForge(Path("state") / "forge")
    forge.create_feedstock("demo", {"feedstock.yaml": "a: 1\n"}, "Create")
    forge.push_change("demo", "b", {"feedstock.yaml": "a: 2\n"}, "Change")
    forge.merge_pr(forge.open_pr("demo", "b", "t", "").number, "v")
    assert forge.read_file("demo", "feedstock.yaml") == "a: 2\n"
    assert (tmp_path / "state" / "forge" / "repos" / "demo-feedstock.git").is_dir()


def test_pr_lifecycle(forge: LocalForge) -> None:
    base = forge.head("demo")
    sha = forge.push_change(
        "demo", "wheelstock/demo-1.1", {"feedstock.yaml": "version: '1.1'\n"}, "Bump"
    )
    assert forge.read_file("demo", "feedstock.yaml") == "version: '1.0'\n"
    assert forge.read_file("demo", "feedstock.yaml", sha) == "version: '1.1'\n"
    pr = forge.open_pr("demo", "wheelstock/demo-1.1", "demo 1.0 → 1.1", "body")
    assert (pr.number, pr.state, pr.base_commit, pr.head_commit) == (1, "open", base, sha)
    diff = forge.diff(1)
    assert "-version: '1.0'" in diff and "+version: '1.1'" in diff
    merged = forge.merge_pr(1, "volunteer")
    assert merged.state == "merged"
    assert forge.head("demo") == merged.merged_commit != base
    assert forge.read_file("demo", "feedstock.yaml") == "version: '1.1'\n"
    commit = git.Repo(forge.repo_path("demo")).commit(merged.merged_commit)
    assert len(commit.parents) == 2 and commit.author.name == "volunteer"
    with pytest.raises(ForgeError, match="is merged, not open"):
        forge.merge_pr(1, "volunteer")
    assert forge.pull_requests(state="open") == []
    assert [p.number for p in forge.pull_requests("demo")] == [1]


def test_close_and_unknown(forge: LocalForge) -> None:
    forge.push_change("demo", "b", {"x": "1\n"}, "x")
    pr = forge.open_pr("demo", "b", "t", "b")
    assert forge.close_pr(pr.number, "someone").state == "closed"
    with pytest.raises(ForgeError, match="no pull request #99"):
        forge.get_pr(99)
    with pytest.raises(ForgeError, match="already exists"):
        forge.push_change("demo", "b", {"x": "2\n"}, "again")
    with pytest.raises(ForgeError, match="no feedstock"):
        forge.head("nope")


def test_conflicting_merge_is_refused(forge: LocalForge) -> None:
    forge.push_change("demo", "one", {"feedstock.yaml": "version: '1.1'\n"}, "one")
    forge.push_change("demo", "two", {"feedstock.yaml": "version: '1.2'\n"}, "two")
    first = forge.open_pr("demo", "one", "one", "")
    second = forge.open_pr("demo", "two", "two", "")
    forge.merge_pr(first.number, "v")
    head = forge.head("demo")
    with pytest.raises(ForgeError, match="does not merge cleanly"):
        forge.merge_pr(second.number, "v")
    assert forge.head("demo") == head
    assert forge.get_pr(second.number).state == "open"


def test_show_and_merge_agree_after_a_later_push(forge: LocalForge, tmp_path: Path) -> None:
    forge.push_change("demo", "b", {"feedstock.yaml": "version: '1.1'\n"}, "bump")
    pr = forge.open_pr("demo", "b", "t", "")
    # Someone pushes to the PR branch after it was opened.
    work = git.Repo.clone_from(str(forge.repo_path("demo")), tmp_path / "w", branch="b")
    (tmp_path / "w" / "extra.txt").write_text("sneaked in\n")
    work.git.add("extra.txt")
    work.git.commit(
        "-m",
        "extra",
        author="x <x@e.invalid>",
        env={"GIT_COMMITTER_NAME": "x", "GIT_COMMITTER_EMAIL": "x@e.invalid"},
    )
    work.git.push("origin", "b")
    assert forge.get_pr(pr.number).head_commit == work.head.commit.hexsha != pr.head_commit
    assert "+sneaked in" in forge.diff(pr.number)  # the reviewer sees it
    merged = forge.merge_pr(pr.number, "v")
    assert merged.head_commit == work.head.commit.hexsha
    assert forge.read_file("demo", "extra.txt") == "sneaked in\n"
    assert "+sneaked in" in forge.diff(pr.number)  # and the record still shows what was merged


def test_corrupt_pull_request_record(forge: LocalForge) -> None:
    forge.pulls.mkdir(parents=True, exist_ok=True)
    (forge.pulls / "000009.json").write_text('{"number": 9}')
    with pytest.raises(ForgeError, match="not a readable pull request record"):
        forge.get_pr(9)
