"""The bot's PRs on real git feedstocks: dedupe after crashes, supersede, limits, backoff,
comment commands and rerender PRs. Upstream is a real server on loopback."""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import git
import pytest

from bot import feedstock, status, tick
from bot.context import Bot, Summary
from bot.forge import BOT_HANDLE, PullRequest
from bot.forge.local import LocalForge
from bot.prs import backoff, parse_branch, parse_commands, rerender_branch
from bot.state import State
from bot.upstream import Upstream, make_client

from conftest import TEMPLATE, Workspace
from support import Fault, UpstreamServer

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def quick_sdist(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A real sdist (PKG-INFO + pyproject.toml in a tar.gz), made without running a backend."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{version}.tar.gz"
    pkg_info = (
        f"Metadata-Version: 2.2\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires)
        + "Project-URL: Changelog, https://example.org/changes\n"
    )
    pyproject = (
        '[build-system]\nrequires = ["flit_core>=3.12"]\nbuild-backend = "flit_core.buildapi"\n'
    )
    with tarfile.open(path, "w:gz") as tar:
        for member, text in (("PKG-INFO", pkg_info), ("pyproject.toml", pyproject)):
            data = text.encode()
            info = tarfile.TarInfo(f"{name}-{version}/{member}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@dataclass
class Kit:
    """A bot on real parts, with a clock the test moves."""

    root: Path
    upstream: UpstreamServer
    now: datetime = START
    lines: list[str] = field(default_factory=list)
    forge: LocalForge | None = None
    limits: dict[str, int] = field(default_factory=dict)
    template: Path = TEMPLATE

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    def enrol(self, name: str, *maintainers: str) -> None:
        self.registry.mkdir(exist_ok=True)
        handles = "".join(f"  - {m}\n" for m in maintainers)
        (self.registry / f"{name}.yaml").write_text(
            f"project: {name}\nmaintainers:\n{handles}consent: https://example.org/{name}/1\n"
        )

    def release(self, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
        self.upstream.add_file(
            name, quick_sdist(self.root / "dist" / version, name, version, requires)
        )

    def bot(self) -> Bot:
        state = State(self.root / "state")
        return Bot(
            state=state,
            forge=self.forge or LocalForge(state.forge_dir),
            upstream=Upstream(self.upstream.url, make_client(), attempts=1),
            registry_dir=self.registry,
            template_dir=self.template,
            echo=self.lines.append,
            clock=lambda: self.now,
            **self.limits,  # type: ignore[arg-type]
        )

    def tick(self) -> Summary:
        """A tick without builds: watch upstream, tend PRs, answer commands."""
        self.lines.clear()
        bot = self.bot()
        try:
            return tick.tick(bot, build=False)
        finally:
            bot.state.close()

    @property
    def local(self) -> LocalForge:
        return LocalForge(self.root / "state" / "forge")

    def prs(self, project: str | None = None, state: str | None = None) -> list[PullRequest]:
        return self.local.pull_requests(project, state)


@pytest.fixture
def kit(tmp_path: Path) -> Iterator[Kit]:
    with UpstreamServer(tmp_path / "upstream") as upstream:
        yield Kit(tmp_path, upstream)


def human_push(forge: LocalForge, project: str, branch: str, who: str = "carol") -> None:
    """Someone other than the bot commits to a PR branch, as a volunteer would."""
    with tempfile.TemporaryDirectory() as tmp:
        work = git.Repo.clone_from(str(forge.repo_path(project)), tmp, branch=branch)
        (Path(tmp) / "NOTES.md").write_text("a volunteer's note\n")
        work.git.add("--all")
        work.git.update_environment(
            GIT_AUTHOR_NAME=who,
            GIT_AUTHOR_EMAIL=f"{who}@example.org",
            GIT_COMMITTER_NAME=who,
            GIT_COMMITTER_EMAIL=f"{who}@example.org",
        )
        work.git.commit("-m", "volunteer fix")
        work.git.push("origin", branch)


def enrolled_at(kit: Kit, name: str = "demo", version: str = "1.0", *maintainers: str) -> None:
    kit.enrol(name, *(maintainers or ("alice",)))
    kit.release(name, version)
    summary = kit.tick()
    assert summary.created == 1, kit.lines


# --- one commit, verified sdist, a body a reviewer can use ------------------------------------


def test_bump_pr_is_one_commit_editing_feedstock_yaml(kit: Kit) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1", requires=("attrs>=22",))
    summary = kit.tick()
    assert summary.opened == 1
    (pr,) = kit.prs("demo")
    assert pr.branch == "wheelstock/demo-1.1" and pr.title == "demo 1.0 → 1.1"
    repo = git.Repo(kit.local.repo_path("demo"))
    commits = list(repo.iter_commits(f"main..{pr.branch}"))
    assert len(commits) == 1 and commits[0].author.name == BOT_HANDLE
    assert list(commits[0].stats.files) == ["feedstock.yaml"]
    text = kit.local.read_file("demo", "feedstock.yaml", pr.branch)
    assert text.startswith("# Feedstock of demo, managed by wheelstock.")  # comments kept
    fs = feedstock.parse(text)
    assert fs.version == "1.1" and fs.source.filename == "demo-1.1.tar.gz"
    served = {f.filename: f.sha256 for f in kit.upstream.dist_files("demo")}
    assert fs.source.sha256 == served["demo-1.1.tar.gz"]
    # The sdist was downloaded (and its hash checked) before the PR was opened.
    assert ("GET", "/files/demo/demo-1.1.tar.gz") in kit.upstream.requests
    assert fs.source.sha256 in pr.body
    assert "https://example.org/changes" in pr.body  # the changelog from Project-URL
    assert "attrs>=22" in pr.body and "Requires-Dist" in pr.body


def test_a_bump_downloads_its_sdist_once_for_the_pr_and_its_metadata(kit: Kit) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1", requires=("attrs>=22",))
    assert kit.tick().opened == 1
    (pr,) = kit.prs("demo")
    assert "attrs>=22" in pr.body  # the new release's metadata, read from the verified copy
    assert kit.upstream.requests.count(("GET", "/files/demo/demo-1.1.tar.gz")) == 1


def test_no_pr_when_the_sdist_does_not_match_its_hash(kit: Kit) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1")
    # Upstream's page promises one sha256, the file it serves has other bytes.
    (kit.upstream.root / "files" / "demo" / "demo-1.1.tar.gz").write_bytes(b"other bytes")
    summary = kit.tick()
    assert summary.opened == 0 and kit.prs("demo") == []
    (error,) = summary.errors
    assert error.startswith("demo: sha256 mismatch for demo-1.1.tar.gz")
    assert "wheelstock/demo-1.1" not in kit.local.branches("demo")


# --- no duplicates after a crash --------------------------------------------------------------


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no except clause catches it."""


class CrashingForge(LocalForge):
    def __init__(self, root: Path, at: str) -> None:
        super().__init__(root)
        self.at = at

    def push_change(self, project: str, branch: str, files: Mapping[str, str], message: str) -> str:
        if self.at == "before-push":
            raise Crash
        return super().push_change(project, branch, files, message)

    def open_pr(self, project: str, branch: str, title: str, body: str) -> PullRequest:
        if self.at == "before-open":
            raise Crash
        pr = super().open_pr(project, branch, title, body)
        if self.at == "after-open":
            raise Crash
        return pr


@pytest.mark.parametrize("at", ["before-push", "before-open", "after-open"])
def test_a_crash_at_any_point_never_gives_a_second_pr(kit: Kit, at: str) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1")
    kit.forge = CrashingForge(kit.root / "state" / "forge", at)
    with pytest.raises(Crash):
        kit.tick()
    state = State(kit.root / "state")
    (intent,) = state.intents("demo")
    assert (intent.branch, intent.kind, intent.version) == ("wheelstock/demo-1.1", "bump", "1.1")
    assert intent.pr_number is None  # recorded before anything was pushed
    branch_pushed = "wheelstock/demo-1.1" in kit.local.branches("demo")
    assert branch_pushed == (at != "before-push")
    assert len(kit.prs("demo")) == (1 if at == "after-open" else 0)

    kit.forge = None
    kit.tick()
    kit.tick()
    (pr,) = kit.prs("demo")
    assert pr.branch == "wheelstock/demo-1.1" and pr.state == "open"
    (intent,) = state.intents("demo")
    assert intent.pr_number == pr.number
    state.close()


# --- supersede --------------------------------------------------------------------------------


def test_a_newer_release_supersedes_the_open_pr(kit: Kit) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1")
    kit.tick()
    kit.release("demo", "1.2")
    summary = kit.tick()
    assert (summary.opened, summary.superseded) == (1, 1)
    old, new = kit.prs("demo")
    assert old.state == "closed" and old.closed_by == BOT_HANDLE
    assert new.state == "open" and new.title == "demo 1.0 → 1.2"
    (comment,) = kit.local.comments(old.number)
    assert comment.author == BOT_HANDLE and f"Superseded by #{new.number}" in comment.body
    assert f"Supersedes #{old.number}" in new.body
    # The closed PR stays closed, and nothing more happens on the next tick.
    assert kit.tick().opened == 0 and [p.state for p in kit.prs("demo")] == ["closed", "open"]


def test_an_older_pr_someone_pushed_to_is_left_open_and_the_new_one_says_so(kit: Kit) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1")
    kit.tick()
    (old,) = kit.prs("demo")
    human_push(kit.local, "demo", old.branch)
    kit.release("demo", "1.2")
    summary = kit.tick()
    assert (summary.opened, summary.superseded) == (1, 0)
    old, new = kit.prs("demo")
    assert old.state == "open" and kit.local.comments(old.number) == []
    assert f"#{old.number} was left open because someone other than the bot pushed to it" in (
        new.body
    )
    assert "Supersedes" not in new.body


# --- limits and backoff -----------------------------------------------------------------------


def test_at_most_n_new_prs_per_tick(kit: Kit) -> None:
    for name in ("aaa", "bbb", "ccc"):
        kit.enrol(name, "alice")
        kit.release(name, "1.0")
    kit.tick()
    for name in ("aaa", "bbb", "ccc"):
        kit.release(name, "2.0")
    kit.limits = {"max_new_prs": 2}
    first = kit.tick()
    assert (first.opened, first.deferred) == (2, 1)
    assert any("2 PRs opened this tick (the limit)" in line for line in kit.lines)
    second = kit.tick()
    assert (second.opened, second.deferred) == (1, 0)
    assert sorted(p.project for p in kit.prs(state="open")) == ["aaa", "bbb", "ccc"]


def test_at_most_m_open_bot_prs_per_feedstock(kit: Kit) -> None:
    enrolled_at(kit)
    kit.release("demo", "1.1")
    kit.tick()
    (old,) = kit.prs("demo")
    human_push(kit.local, "demo", old.branch)  # so it is not superseded, it stays open
    kit.limits = {"max_open_prs": 1}
    kit.release("demo", "1.2")
    summary = kit.tick()
    assert (summary.opened, summary.deferred) == (0, 1)
    assert any("1 bot PRs already open (limit 1)" in line for line in kit.lines)
    kit.local.close_pr(old.number, "carol")
    assert kit.tick().opened == 1


def test_a_failing_project_backs_off_exponentially_and_status_says_until_when(
    kit: Kit, tmp_path: Path
) -> None:
    enrolled_at(kit)
    kit.enrol("ghost", "alice")  # unknown upstream: fails every time
    first = kit.tick()
    assert [e.split(" (")[0] for e in first.errors] == [
        f"ghost: project 'ghost' not found at {kit.upstream.url}"
    ]
    assert "failure 1; next attempt after 2026-11-01T14:00:00Z" in first.errors[0]

    kit.now = START + timedelta(hours=1)
    held = kit.tick()
    assert held.errors == [] and held.backing_off == 1
    assert any(line.startswith("ghost: backing off after 1 failed attempts") for line in kit.lines)
    ghost_requests = [r for r in kit.upstream.requests if r[1] == "/simple/ghost/"]
    assert len(ghost_requests) == 1  # upstream was not asked again

    kit.now = START + timedelta(hours=2, seconds=1)
    again = kit.tick()
    assert "failure 2; next attempt after 2026-11-01T18:00:01Z" in again.errors[0]

    bot = kit.bot()
    rows = {row.name: row for row in status.status(bot.state, bot.forge, kit.registry)}
    note = rows["ghost"].note or ""
    assert "backing off after 2 failed attempts: project 'ghost' not found" in note
    assert "next attempt after 2026-11-01T18:00:01Z" in note
    assert rows["demo"].note is None

    # Once upstream knows it, the next attempt succeeds and the count is cleared.
    kit.release("ghost", "0.1")
    kit.now = START + timedelta(days=1)
    assert kit.tick().created == 1
    assert bot.state.attempt("ghost") is None
    bot.state.close()


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (0, timedelta(0)),
        (1, timedelta(hours=2)),
        (2, timedelta(hours=4)),
        (3, timedelta(hours=8)),
        (7, timedelta(hours=128)),
        (8, timedelta(days=7)),  # 256 h is more than a week: capped
        (10_000, timedelta(days=7)),
    ],
)
def test_backoff_doubles_from_two_hours_up_to_a_week(failures: int, delay: timedelta) -> None:
    assert backoff(failures) == delay


# --- comment commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "commands"),
    [
        ("@wheelstock rebuild", ["rebuild"]),
        ("Thanks!\n@wheelstock rerender\n@WheelStock Close.", ["rerender", "close"]),
        ("please @wheelstock rebuild", []),  # only at the start of a line
        ("@wheelstock frobnicate", ["frobnicate"]),
        ("no command here", []),
    ],
)
def test_parse_commands(body: str, commands: list[str]) -> None:
    assert parse_commands(body) == commands


def open_bump(kit: Kit) -> PullRequest:
    enrolled_at(kit)
    kit.release("demo", "1.1")
    kit.tick()
    (pr,) = kit.prs("demo")
    return pr


def test_close_command_from_a_listed_maintainer(kit: Kit) -> None:
    pr = open_bump(kit)
    kit.local.comment(pr.number, "alice", "Not this one.\n@wheelstock close")
    summary = kit.tick()
    assert summary.commands == 1
    closed = kit.local.get_pr(pr.number)
    assert closed.state == "closed" and closed.closed_by == "alice"
    reply = kit.local.comments(pr.number)[-1]
    assert reply.author == BOT_HANDLE and reply.body == "Closed at the request of @alice."
    # Acted on once: the next tick neither replies again nor reopens anything.
    assert kit.tick().commands == 0 and len(kit.local.comments(pr.number)) == 2


def test_commands_from_others_are_refused_with_a_reply(kit: Kit) -> None:
    pr = open_bump(kit)
    kit.local.comment(pr.number, "mallory", "@wheelstock close")
    kit.local.comment(pr.number, "alice", "@wheelstock dance")
    kit.tick()
    assert kit.local.get_pr(pr.number).state == "open"
    _, _, refusal, unknown = kit.local.comments(pr.number)
    assert refusal.body == (
        "@mallory: only the maintainers listed for demo (@alice) can give wheelstock commands; "
        "ignored."
    )
    assert unknown.body.startswith("@alice: unknown command `dance`; wheelstock knows")


def fail_build_of_main(kit: Kit, log: str) -> tuple[str, Path]:
    bot = kit.bot()
    head = bot.forge.head("demo")
    failed_dir = bot.state.builds_dir / "demo" / head[:12]
    failed_dir.mkdir(parents=True)
    (failed_dir / "build.log").write_text(log)
    bot.state.record_build(
        project="demo", version="1.0", commit=head, status="failed", directory=failed_dir
    )
    bot.state.close()
    return head, failed_dir


def test_rebuild_command_retries_a_failed_build_every_time_it_fails(kit: Kit) -> None:
    enrolled_at(kit)
    head, failed_dir = fail_build_of_main(kit, "the runner ran out of disk\n")
    kit.release("demo", "1.1")
    kit.tick()
    (pr,) = kit.prs("demo")
    kit.local.comment(pr.number, "alice", "@wheelstock rebuild")
    kit.tick()
    reply = kit.local.comments(pr.number)[-1].body
    assert reply.startswith(f"@alice: rebuilding 1.0 from main ({head[:12]}) at the next build")
    state = State(kit.root / "state")
    assert state.build_for("demo", head) is None  # so build_heads builds it again
    # It fails again, and is rebuilt again: every failed attempt's log is kept.
    fail_build_of_main(kit, "flaky network\n")
    kit.local.comment(pr.number, "alice", "@wheelstock rebuild")
    kit.tick()
    assert "rebuilding 1.0" in kit.local.comments(pr.number)[-1].body
    logs = sorted(p.read_text() for p in failed_dir.parent.glob(f"{head[:12]}.failed-*/build.log"))
    assert logs == ["flaky network\n", "the runner ran out of disk\n"]
    # Asking again while nothing failed says why nothing happens.
    kit.local.comment(pr.number, "alice", "@wheelstock rebuild")
    kit.tick()
    assert "has not been built yet" in kit.local.comments(pr.number)[-1].body
    state.close()


def test_one_refusal_per_comment_however_many_commands(kit: Kit) -> None:
    pr = open_bump(kit)
    kit.local.comment(pr.number, "mallory", "@wheelstock close\n@wheelstock rebuild\n" * 20)
    assert kit.tick().commands == 1
    assert len(kit.local.comments(pr.number)) == 2


def test_commands_on_a_pr_superseded_in_the_same_tick_are_answered(kit: Kit) -> None:
    pr = open_bump(kit)
    kit.local.comment(pr.number, "alice", "@wheelstock rebuild")
    kit.release("demo", "1.2")
    summary = kit.tick()
    assert summary.commands == 1 and summary.superseded == 1
    bodies = [c.body for c in kit.local.comments(pr.number)]
    assert bodies[1].startswith("@alice: ") and bodies[2].startswith("Superseded by #2")


# --- only the bot's own PRs and branches --------------------------------------------------------


def test_a_human_pr_named_like_the_bots_is_not_the_bots(kit: Kit) -> None:
    pr = open_bump(kit)
    branch = "wheelstock/demo-99"
    kit.local.push_change("demo", branch, {"NOTES.md": "mine\n"}, "my change")
    human = kit.local.open_pr("demo", branch, "my unrelated change", "")
    kit.local.comment(human.number, "alice", "@wheelstock close")
    summary = kit.tick()
    assert summary.superseded == 0 and summary.commands == 0
    assert kit.local.get_pr(pr.number).state == "open"
    assert kit.local.get_pr(human.number).state == "open"
    assert kit.local.comments(pr.number) == []


def test_a_branch_someone_else_pushed_under_the_bots_name_is_not_used(kit: Kit) -> None:
    enrolled_at(kit)
    human_branch = "wheelstock/demo-1.1"
    kit.local.push_change("demo", human_branch, {"X.md": "mallory was here\n"}, "x")
    human_push(kit.local, "demo", human_branch, who="mallory")
    kit.release("demo", "1.1")
    summary = kit.tick()
    assert summary.opened == 0 and kit.prs("demo") == []
    (error,) = summary.errors
    assert "branch wheelstock/demo-1.1 already exists on demo-feedstock and was not pushed" in error


def test_a_pr_whose_release_was_yanked_is_closed(kit: Kit, tmp_path: Path) -> None:
    pr = open_bump(kit)
    kit.upstream.add_file(
        "demo", quick_sdist(kit.root / "dist" / "1.1", "demo", "1.1"), yanked="broken build"
    )
    kit.tick()
    closed = kit.local.get_pr(pr.number)
    assert closed.state == "closed" and closed.closed_by == BOT_HANDLE
    assert "no longer a release to build" in kit.local.comments(pr.number)[-1].body


# --- rerender ---------------------------------------------------------------------------------


def template_v2(kit: Kit) -> Path:
    template = kit.root / "template"
    shutil.copytree(TEMPLATE, template)
    (template / "TEMPLATE_VERSION").write_text("2\n")
    readme = template / "README.md.j2"
    readme.write_text(readme.read_text() + "\nRendered from feedstock-template v2.\n")
    return template


def test_template_change_opens_one_rerender_pr_per_feedstock(kit: Kit) -> None:
    for name in ("aaa", "bbb"):
        kit.enrol(name, "alice")
        kit.release(name, "1.0")
    kit.tick()
    kit.template = template_v2(kit)
    summary = kit.tick()
    assert summary.opened == 2
    for name in ("aaa", "bbb"):
        (pr,) = kit.prs(name)
        assert pr.branch == rerender_branch(2) == "wheelstock/rerender/v2"
        assert pr.title == f"{name}: re-render with feedstock-template v2"
        diff = kit.local.diff(pr.number)
        assert "+Rendered from feedstock-template v2." in diff
        assert "-template: 1  #" in diff and "+template: 2  #" in diff
        fs = feedstock.parse(kit.local.read_file(name, "feedstock.yaml", pr.branch))
        assert (fs.version, fs.template) == ("1.0", 2)
        assert "`README.md`" in pr.body
    assert kit.tick().opened == 0  # no duplicates
    # Merged, the feedstock is current: no further rerender PR.
    kit.local.merge_pr(kit.prs("aaa")[0].number, "carol")
    assert kit.tick().opened == 0


def test_rerender_command_renders_onto_the_pr_branch(kit: Kit) -> None:
    pr = open_bump(kit)
    kit.template = template_v2(kit)
    kit.limits = {"max_new_prs": 0}  # no rerender PR of its own, to see the command alone
    kit.local.comment(pr.number, "alice", "@wheelstock rerender")
    kit.tick()
    reply = kit.local.comments(pr.number)[-1].body
    assert reply.startswith("@alice: re-rendered with feedstock-template v2 in ")
    assert "Rendered from feedstock-template v2." in kit.local.read_file(
        "demo", "README.md", pr.branch
    )
    fs = feedstock.parse(kit.local.read_file("demo", "feedstock.yaml", pr.branch))
    assert (fs.version, fs.template) == ("1.1", 2)  # the bump is kept
    kit.local.comment(pr.number, "alice", "@wheelstock rerender")
    kit.tick()
    assert "nothing to re-render" in kit.local.comments(pr.number)[-1].body


def test_parse_branch() -> None:
    assert parse_branch("demo", "wheelstock/demo-1.1") == ("bump", "1.1")
    assert parse_branch("demo", "wheelstock/rerender/v3") == ("rerender", "3")
    assert parse_branch("demo", "wheelstock/other-1.1") is None
    assert parse_branch("demo", "feature/x") is None
    assert parse_branch("demo", "wheelstock/demo-not-a-version!") is None


# --- the command line -------------------------------------------------------------------------


def test_pr_comment_on_the_command_line(workspace: Workspace, tmp_path: Path) -> None:
    ws = workspace
    ws.enrol("demo", "alice")
    ws.upstream.add_file("demo", quick_sdist(tmp_path / "d1", "demo", "1.0"))
    assert ws.run("tick", "--no-build").code == 0
    ws.upstream.add_file("demo", quick_sdist(tmp_path / "d2", "demo", "1.1"))
    assert "1 PRs opened" in ws.run("tick", "--no-build").out

    missing = ws.run("pr", "comment", "9", "--as", "alice", "@wheelstock close")
    assert missing.code == 1 and missing.err.strip() == "error: no pull request #9"
    empty = ws.run("pr", "comment", "1", "--as", "alice", "  ")
    assert empty.code == 1 and empty.err.strip() == "error: a comment needs some text"

    said = ws.run("pr", "comment", "1", "--as", "alice", "@wheelstock close")
    assert said.code == 0 and "commented on #1 as alice" in said.out
    ticked = ws.run("tick", "--no-build")
    assert "PR #1: @alice close: Closed at the request of @alice." in ticked.out
    assert "1 commands" in ticked.out
    shown = ws.run("pr", "show", "1")
    assert "[closed]" in shown.out and "comment 2 by @wheelstock-bot" in shown.out


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--max-new-prs", "-1", "'-1' is not a count"),
        ("--max-open-prs", "many", "'many' is not a count"),
        ("--min-release-age", "soon", "'soon' is not a number of hours"),
    ],
)
def test_bad_tick_options_are_one_line(
    workspace: Workspace, capsys: pytest.CaptureFixture[str], option: str, value: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        workspace.run("tick", option, value)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# --- the tick watches upstream conditionally ----------------------------------------------------


def test_the_tick_reuses_etags_and_works_from_the_stored_page(kit: Kit) -> None:
    enrolled_at(kit)
    first = kit.upstream.seen("/simple/demo/")
    assert first[-1].status == 200 and "if-none-match" not in first[-1].headers
    # Nothing changed upstream: the page costs a 304, and the tick still has the release.
    assert kit.tick().errors == []
    again = kit.upstream.seen("/simple/demo/")[-1]
    assert again.status == 304 and again.headers["if-none-match"]
    assert again.body_bytes == 0
    # A PR closed by a volunteer, with the page unchanged: the stored page shows that the
    # release is still 1.1, so no new PR for it either.
    kit.release("demo", "1.1")
    assert kit.tick().opened == 1
    assert kit.upstream.seen("/simple/demo/")[-1].status == 200
    kit.local.close_pr(kit.prs("demo")[0].number, "carol")
    summary = kit.tick()
    assert summary.opened == 0 and summary.errors == []
    assert kit.upstream.seen("/simple/demo/")[-1].status == 304


def test_a_project_whose_checks_fail_does_not_stop_the_others(kit: Kit) -> None:
    for name in ("aaa", "bbb"):
        kit.enrol(name, "alice")
        kit.release(name, "1.0")
    kit.upstream.misbehave("aaa", Fault(status=503), forever=True)
    summary = kit.tick()
    assert summary.created == 1 and kit.local.feedstocks() == ["bbb"]
    (error,) = summary.errors
    assert error.startswith("aaa: upstream ") and "503" in error and "failure 1" in error


def test_another_upstream_gets_no_validators_of_the_old_one(kit: Kit, tmp_path: Path) -> None:
    enrolled_at(kit)
    with UpstreamServer(tmp_path / "mirror") as mirror:
        mirror.add_file("demo", quick_sdist(kit.root / "dist" / "1.0", "demo", "1.0"))
        mirror.add_file("demo", quick_sdist(kit.root / "dist" / "1.1", "demo", "1.1"))
        kit.upstream = mirror
        summary = kit.tick()
        (seen,) = mirror.seen("/simple/demo/")
        assert seen.status == 200 and "if-none-match" not in seen.headers
        assert "if-modified-since" not in seen.headers
        (pr,) = kit.prs("demo")
        assert summary.opened == 1 and mirror.url in pr.body  # the mirror's page, not the old one


def test_the_affected_list_comes_from_metadata_read_when_each_feedstock_was_made(
    kit: Kit,
) -> None:
    kit.enrol("base", "alice")
    kit.enrol("app", "alice")
    kit.enrol("other", "alice")
    kit.release("base", "1.0")
    kit.release("app", "1.0", requires=("base>=1",))
    kit.release("other", "1.0")
    assert kit.tick().created == 3
    # As if "other" were enrolled by a wheelstock that did not read metadata at creation:
    # not looked up for base's PR either (it is not read for every project at every PR).
    shutil.rmtree(kit.root / "state" / "metadata" / "other")
    kit.release("base", "1.1")
    before = len(kit.upstream.log)
    assert kit.tick().opened == 1
    (pr,) = kit.prs("base", "open")
    assert "- app\n" in pr.body and "- other" not in pr.body
    # The tick read upstream for base alone: three page checks, then base's own files.
    assert (kit.root / "state" / "metadata" / "app").is_dir()
    paths = [seen.path for seen in kit.upstream.log[before:]]
    others = [p for p in paths if ("app" in p or "other" in p) and not p.startswith("/simple/")]
    assert others == []
    assert sum(p.startswith("/simple/") for p in paths) == 3
