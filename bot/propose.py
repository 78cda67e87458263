"""The bot's pull requests on feedstocks: the facts gathered, version bumps and rerenders
opened once as prs.plan_proposal decides, older ones superseded or closed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from bot import feedstock
from bot.context import Bot, Summary
from bot.dependencies import Affected, metadata_of
from bot.errors import ForgeError, SourceRefused, WheelstockError
from bot.feedstock import FEEDSTOCK_FILE, Feedstock, Source
from bot.forge import BOT_HANDLE, PullRequest
from bot.fsutil import sha256_file
from bot.metadata import ProjectMetadata
from bot.prs import (
    Bump,
    OpenPR,
    Rerender,
    parse_branch,
    plan_proposal,
    supersessions,
    unwanted,
)
from bot.registry import Entry
from bot.simple import DistFile, ProjectPage
from bot.versions import Release

__all__ = [
    "Proposal",
    "open_bot_prs",
    "open_proposal",
    "propose_bump",
    "rerender_feedstock",
    "settle",
    "source_of",
    "verify_sdist",
]


@dataclass(frozen=True)
class Proposal:
    """One PR the bot wants open: what goes on its branch, and how it reads."""

    project: str
    kind: str  # bump | rerender
    version: str  # the release, or the template version
    branch: str
    title: str
    # Checks what the PR will name (the sdist's hash) and returns the files for its branch;
    # called only once the PR is certain to be opened.
    prepare: Callable[[], Mapping[str, str]]
    message: str
    # The body, given the older PRs this one closes and those it leaves open.
    body: Callable[[tuple[int, ...], tuple[int, ...]], str]


def _others_on(bot: Bot, project: str, branch: str) -> bool:
    try:
        return bool(bot.forge.branch_authors(project, branch) - {BOT_HANDLE})
    except WheelstockError:
        # A branch that can't be read is treated as someone's: closing it could lose work.
        return True


def touched_by_others(bot: Bot, pr: PullRequest) -> bool:
    """Whether anyone but the bot committed to the PR's branch (their work stays open)."""
    return _others_on(bot, pr.project, pr.branch)


def bot_prs(bot: Bot, project: str, state: str | None = "open") -> list[PullRequest]:
    """The PRs the bot itself opened: recorded in its intents, not merely named like its own.

    A branch name is anyone's to choose; only the state database knows which PRs are ours.
    """
    ours = {i.pr_number for i in bot.state.intents(project) if i.pr_number is not None}
    return [pr for pr in bot.forge.pull_requests(project, state) if pr.number in ours]


def open_bot_prs(bot: Bot, project: str) -> list[OpenPR]:
    """The facts a plan needs of the bot's open PRs on the project (prs.plan_proposal)."""
    found = []
    for pr in bot_prs(bot, project):
        parsed = parse_branch(project, pr.branch)
        if parsed is not None:
            kind, version = parsed
            found.append(OpenPR(pr.number, kind, version, touched_by_others(bot, pr)))
    return found


def open_proposal(bot: Bot, proposal: Proposal, summary: Summary) -> PullRequest | None:
    """Open ``proposal`` unless a PR for its branch exists or a limit holds it back.

    The intent is recorded before anything is pushed, and every step first looks for what an
    interrupted run may have left: a PR for the branch (done), or the branch (open the PR
    from it). So a crash at any point never yields a second PR (and closed PRs stay closed).
    """
    forge, state, name = bot.forge, bot.state, proposal.project
    branch_has_pr = any(pr.branch == proposal.branch for pr in forge.pull_requests(name))
    plan = plan_proposal(
        project=name,
        kind=proposal.kind,
        version=proposal.version,
        title=proposal.title,
        branch_has_pr=branch_has_pr,
        open_prs=[] if branch_has_pr else open_bot_prs(bot, name),
        max_open=bot.max_open_prs,
        opened=summary.opened,
        max_new=bot.max_new_prs,
    )
    if plan.action == "skip":
        return None
    if plan.action == "defer":
        summary.deferred += 1
        summary.unsettled.add(name)
        bot.echo(plan.reason)
        return None
    closes, kept = plan.closes, plan.kept
    files = proposal.prepare()
    pushed = proposal.branch in forge.branches(name)
    if pushed:
        # Only a branch an interrupted run of the bot pushed is reused; anyone else's branch
        # of that name holds their commits, not the change this PR describes.
        ours = any(i.branch == proposal.branch for i in state.intents(name, pending=True))
        if not ours or _others_on(bot, name, proposal.branch):
            raise ForgeError(
                f"branch {proposal.branch} already exists on {name}-feedstock and was not "
                "pushed by wheelstock; not opening a pull request from it"
            )
    state.record_intent(name, proposal.branch, proposal.kind, proposal.version)
    if not pushed:
        forge.push_change(name, proposal.branch, files, proposal.message)
    pr = forge.open_pr(name, proposal.branch, proposal.title, proposal.body(closes, kept))
    state.intent_opened(name, proposal.branch, pr.number)
    summary.opened += 1
    bot.echo(f"opened PR #{pr.number}: {pr.title}")
    settle(bot, name, summary)
    return pr


def reconcile(bot: Bot, project: str) -> None:
    """Intents whose PR an interrupted run opened but never recorded get its number now."""
    pending = bot.state.intents(project, pending=True)
    if not pending:
        return
    numbers = {pr.branch: pr.number for pr in bot.forge.pull_requests(project)}
    for intent in pending:
        if intent.branch in numbers and not _others_on(bot, project, intent.branch):
            bot.state.intent_opened(project, intent.branch, numbers[intent.branch])


def settle(bot: Bot, project: str, summary: Summary) -> None:
    """Close each open bot PR that a newer one of its kind made moot, linking the newer one.

    A PR someone else pushed to is left open; the newer PR's body says so.
    """
    prs = bot_prs(bot, project)
    for moot in supersessions(project, prs, lambda pr: touched_by_others(bot, pr)):
        if not moot.close:
            continue
        bot.forge.comment(
            moot.old.number,
            BOT_HANDLE,
            f"Superseded by #{moot.new.number} ({moot.new.title}); closing this one.",
        )
        bot.forge.close_pr(moot.old.number, BOT_HANDLE)
        summary.superseded += 1
        bot.echo(f"closed PR #{moot.old.number}: superseded by #{moot.new.number}")


def close_unwanted(bot: Bot, project: str, current: str, wanted: str | None) -> None:
    """Close open bot bump PRs for releases the entry's rules no longer pick.

    A release yanked or ignored after its PR was opened, or one that ``main`` already reached
    by other means, would otherwise stay open and rank as the newest. Someone's pushes keep
    a PR open, as when superseding.
    """
    for number, why in unwanted(current, wanted, open_bot_prs(bot, project)):
        bot.forge.comment(number, BOT_HANDLE, f"Closing: {why}.")
        bot.forge.close_pr(number, BOT_HANDLE)
        bot.echo(f"closed PR #{number}: {why}")


def rerender_feedstock(
    bot: Bot, entry: Entry, text: str, current: Feedstock, summary: Summary
) -> PullRequest | None:
    """Open a rerender PR when ``feedstock-template/`` is newer than the feedstock's files.

    ``text`` is ``feedstock.yaml`` on ``main`` and ``current`` its parse, as the caller
    already has them (a sync of every project parses each once, not twice).
    """
    name = entry.name
    newest = feedstock.template_version(bot.template_dir)
    if current.template >= newest:
        return None
    files = feedstock.rerender(
        bot.template_dir,
        text,
        maintainers=entry.maintainers,
        consent=entry.consent,
        where=f"{name}-feedstock/{FEEDSTOCK_FILE}",
    )
    changed = tuple(
        sorted(path for path, content in files.items() if _differs(bot, name, path, content))
    )

    pr = Rerender(
        project=name,
        old=current.template,
        new=newest,
        changed=changed,
        maintainers=entry.maintainers,
    )

    def body(closes: tuple[int, ...], kept: tuple[int, ...]) -> str:
        return replace(pr, supersedes=closes, kept_open=kept).body()

    return open_proposal(
        bot,
        Proposal(
            project=name,
            kind="rerender",
            version=str(newest),
            branch=pr.branch,
            title=pr.title,
            prepare=lambda: files,
            message=pr.commit_message,
            body=body,
        ),
        summary,
    )


def _differs(bot: Bot, project: str, path: str, content: str, ref: str = "main") -> bool:
    try:
        return bot.forge.read_file(project, path, ref) != content
    except WheelstockError:
        return True  # a file the feedstock does not have yet


# --- version bumps --------------------------------------------------------------------------


def source_of(entry: Entry, release: Release) -> tuple[Source, DistFile]:
    sdist = release.sdist
    if sdist is None:  # latest_release only returns releases with an sdist
        raise WheelstockError(f"release {release.version} has no sdist")
    if not sdist.sha256:
        raise WheelstockError(f"upstream gives no sha256 for {sdist.filename}")
    # The name becomes a path under downloads/ and goes into feedstock.yaml: a bare sdist
    # name of this project at this version, or nothing (DESIGN, trust rules).
    feedstock.check_sdist_name(
        sdist.filename, entry.project, str(release.version), f"upstream's page of {entry.project}"
    )
    return Source(filename=sdist.filename, url=sdist.url, sha256=sdist.sha256), sdist


def verify_sdist(bot: Bot, entry: Entry, source: Source) -> Path:
    """Download the sdist and check upstream's sha256 before a PR names it (kept for the build)."""
    folder = bot.state.downloads_dir / entry.name
    path = folder / source.filename
    if path.resolve().parent != folder.resolve():
        raise SourceRefused(f"{source.filename!r} is not a bare sdist file name")
    if not (path.is_file() and sha256_file(path) == source.sha256):
        bot.upstream.download(source.url, path, source.sha256)
    return path


def _metadata_or_none(
    bot: Bot, entry: Entry, version: str, files: tuple[DistFile, ...]
) -> ProjectMetadata | None:
    # The PR says "unknown" rather than not being opened: the bump itself does not need it.
    try:
        return metadata_of(bot, entry, version, files)
    except WheelstockError as exc:
        bot.echo(f"{entry.name}: metadata of {version} unknown ({exc})")
        return None


def propose_bump(
    bot: Bot,
    entry: Entry,
    page: ProjectPage,
    text: str,
    current: Feedstock,
    release: Release,
    summary: Summary,
    affected: Affected,
) -> None:
    """Open the version-bump PR for ``release`` (one commit editing feedstock.yaml ``text``)."""
    source, sdist = source_of(entry, release)
    bump = Bump(
        project=entry.name,
        old=current.version,
        new=str(release.version),
        source=source,
        maintainers=entry.maintainers,
        page_url=page.url,
        requires_python=sdist.requires_python,
    )
    # Never two PRs for one (project, version): the branch names the pair, and a PR that a
    # volunteer closed stays closed rather than coming back every tick.
    if any(pr.branch == bump.branch for pr in bot.forge.pull_requests(entry.name)):
        return

    def prepare() -> Mapping[str, str]:
        verify_sdist(bot, entry, source)
        return {FEEDSTOCK_FILE: feedstock.bump(text, bump.new, source)}

    def body(closes: tuple[int, ...], kept: tuple[int, ...]) -> str:
        return replace(
            bump,
            old_meta=_metadata_or_none(bot, entry, bump.old, page.files),
            new_meta=_metadata_or_none(bot, entry, bump.new, page.files),
            affected=affected(entry.name),
            supersedes=closes,
            kept_open=kept,
        ).body()

    open_proposal(
        bot,
        Proposal(
            project=entry.name,
            kind="bump",
            version=bump.new,
            branch=bump.branch,
            title=bump.title,
            prepare=prepare,
            message=bump.commit_message,
            body=body,
        ),
        summary,
    )
