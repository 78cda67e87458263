"""One cycle of the bot: registry, feedstocks, upstream, bump PRs, builds, publication."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from packaging.version import Version

from bot import __version__, commands, feedstock, index, propose, registry
from bot.build import stage
from bot.context import Bot, Summary
from bot.dependencies import Affected, affected_by, metadata_of
from bot.errors import PublishError, UpstreamError, WheelstockError, first_line
from bot.feedstock import FEEDSTOCK_FILE
from bot.forge import Changes
from bot.propose import propose_bump, source_of
from bot.prs import backoff
from bot.registry import Entry
from bot.simple import DistFile, ProjectPage
from bot.state import FORGE_CURSOR, Synced, iso, settled_versions
from bot.upstream import Validators
from bot.versions import Choice, choose_release
from bot.watch import watch

# A watch over more projects than this reports its progress.
WATCH_PROGRESS = 1000
# In the state's meta table: the change feed's URL and validators, or when upstream was
# found to offer none; and when every page was last checked, feed or not.
FEED_META = "upstream-feed"
FULL_CHECK_META = "upstream-full-check"


def choose(
    bot: Bot, entry: Entry, files: tuple[DistFile, ...], newer_than: Version | None = None
) -> Choice:
    """Like ``wanted_release``, also honouring the operator's minimum release age."""
    choice = choose_release(
        files,
        newer_than=newer_than,
        prereleases=entry.prereleases,
        ignore=entry.ignored,
        min_age=bot.min_release_age,
        now=bot.clock(),
    )
    if choice.waiting is not None and choice.ready_at is not None:
        bot.echo(
            f"{entry.name}: {choice.waiting.version} waits for its minimum release age "
            f"until {iso(choice.ready_at)}"
        )
    return choice


def create_feedstock(bot: Bot, entry: Entry, page: ProjectPage, summary: Summary) -> str | None:
    """Create the feedstock at the release the entry's rules pick; returns that version."""
    choice = choose(bot, entry, page.files)
    release = choice.release
    if choice.waiting is not None:
        summary.unsettled.add(entry.name)
    if release is None:
        if choice.waiting is not None:
            return None
        raise WheelstockError(
            f"upstream has no final, non-yanked release of {entry.project} with an sdist"
        )
    source, _ = source_of(entry, release)
    files = feedstock.render(
        bot.template_dir,
        project=entry.project,
        version=str(release.version),
        source=source,
        maintainers=entry.maintainers,
        consent=entry.consent,
    )
    bot.forge.create_feedstock(
        entry.name, files, f"Create feedstock for {entry.project} {release.version}"
    )
    summary.created += 1
    bot.echo(f"created {entry.name}-feedstock at {release.version}")
    # Read now, once: the graph behind PR bodies' "affected" lists is made of cached metadata.
    with contextlib.suppress(WheelstockError):
        metadata_of(bot, entry, str(release.version), page.files, quiet=True)
    return str(release.version)


def sync_project(
    bot: Bot, entry: Entry, page: ProjectPage, summary: Summary, affected: Affected
) -> str | None:
    """Create the feedstock, or propose what it lacks: a newer release, the newest template.

    Returns the version feedstock.yaml on main builds (None when no feedstock was made).
    """
    if not bot.forge.has_feedstock(entry.name):
        return create_feedstock(bot, entry, page, summary)
    propose.reconcile(bot, entry.name)
    text = bot.forge.read_file(entry.name, FEEDSTOCK_FILE)
    current = feedstock.parse(text, f"{entry.name}-feedstock/{FEEDSTOCK_FILE}")
    choice = choose(bot, entry, page.files, Version(current.version))
    if choice.waiting is not None:
        summary.unsettled.add(entry.name)  # it is ready later: sync again until then
    release = choice.release
    propose.close_unwanted(
        bot, entry.name, current.version, None if release is None else str(release.version)
    )
    if release is not None:
        propose_bump(bot, entry, page, text, current, release, summary, affected)
    propose.rerender_feedstock(bot, entry, text, current, summary)
    propose.settle(bot, entry.name, summary)
    return current.version


def load_registry(bot: Bot, summary: Summary) -> registry.Registry:
    # Parsed entries are kept between ticks: 25,000 YAML files took 11 s to parse, 0.4 s to
    # stat and reuse (bot.registry).
    reg = registry.load_directory(bot.registry_dir, cache=bot.state.registry_cache)
    for problem in reg.problems:
        summary.errors.append(str(problem))
        bot.echo(f"error: {problem}")
    summary.projects = len(reg.entries)
    return reg


def retire_removed(bot: Bot, reg: registry.Registry, summary: Summary) -> None:
    """Feedstocks whose entry left the registry: reported once, then left alone.

    No new PRs or builds reach them (only entries are synced and built); what was published
    stays. A file that is merely invalid still claims its name, so a typo retires nothing.
    """
    retired = bot.state.retired()
    for name in bot.forge.feedstocks():
        if name in reg.claimed:
            if name in retired:
                bot.state.unretire(name)
                bot.echo(f"{name} has a registry entry again; its feedstock is no longer retired")
        elif name not in retired:
            bot.state.retire(name)
            summary.retired += 1
            bot.echo(
                f"retired {name}-feedstock: its entry left the registry; no new PRs or builds, "
                "published files stay"
            )


def active(bot: Bot, reg: registry.Registry, summary: Summary) -> tuple[Entry, ...]:
    """The entries the bot works on this tick; a skipped one is named with its reason."""
    entries = []
    for entry in reg.entries:
        if entry.skip is not None:
            summary.skipped += 1
            bot.echo(f"skipped {entry.name}: {entry.skip}")
        else:
            entries.append(entry)
    return tuple(entries)


@dataclass
class Watched:
    """What the watch found per project: a page sent anew, a page upstream said is unchanged
    (kept in state, and read only when a sync needs it), or why there is none."""

    fresh: dict[str, ProjectPage] = field(default_factory=dict)
    unchanged: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    # Projects upstream answered 404 for where a page was stored: deleted upstream.
    gone: set[str] = field(default_factory=set)

    def page(self, bot: Bot, name: str) -> ProjectPage:
        """The page to work from; UpstreamError with the reason when there is none."""
        if name in self.fresh:
            return self.fresh[name]
        if name in self.unchanged:
            cached = bot.state.cached_page(name, bot.upstream.index_url)
            if cached is None:
                raise UpstreamError("upstream answered 304 but no page is stored")
            return cached
        raise UpstreamError(self.errors.get(name, "not checked"))


def _due(moment: datetime, stamp: object, every: timedelta) -> bool:
    """Whether ``every`` has passed since ``stamp`` (as ``iso`` writes it; else never was)."""
    try:
        when = datetime.fromisoformat(str(stamp))
    except ValueError:
        return True
    return when.tzinfo is None or moment - when >= every


def read_feed(bot: Bot, names: list[str]) -> tuple[set[str], dict[str, int] | None]:
    """Which of ``names`` upstream's change feed says did not move, and the serials it gave.

    One conditional request for the root page (bot.upstream.Upstream.feed), when at least
    ``bot.change_feed_from`` projects are watched. A project is left out of the watch only
    if its stored page is current at the serial the feed gives now; every other one, and
    every project once per ``bot.full_check_every``, is checked as before. An index that
    offers no feed is asked again after that same period; a feed that fails costs nothing
    but the request: the watch checks every page.
    """
    if not bot.change_feed or not names or len(names) < bot.change_feed_from:
        return set(), None
    url = bot.upstream.index_url
    moment = bot.clock()
    try:
        stored = json.loads(bot.state.get_meta(FEED_META) or "{}")
    except ValueError:
        stored = {}
    if not isinstance(stored, dict) or stored.get("url") != url:
        stored = {}
    if "none_at" in stored and not _due(moment, stored["none_at"], bot.full_check_every):
        return set(), None
    sent = Validators(etag=stored.get("etag"), last_modified=stored.get("last_modified"))
    try:
        feed = bot.upstream.feed(sent)
    except UpstreamError as exc:
        bot.echo(f"upstream: change feed unavailable ({first_line(exc)}); checking every page")
        return set(), None
    if feed.status == "none":
        bot.state.set_meta(FEED_META, json.dumps({"url": url, "none_at": iso(moment)}))
        return set(), None
    if feed.serials is not None:
        serials = {name: feed.serials[name] for name in names if name in feed.serials}
        bot.state.record_feed(feed.serials)
        etag, modified = feed.validators.etag, feed.validators.last_modified
        bot.state.set_meta(
            FEED_META, json.dumps({"url": url, "etag": etag, "last_modified": modified})
        )
    else:
        # A 304: the serials stored from the root page last time still hold.
        serials = bot.state.feed_serials(url)
    if _due(moment, bot.state.get_meta(FULL_CHECK_META), bot.full_check_every):
        return set(), serials
    unmoved = bot.state.unmoved(url).intersection(names)
    bot.echo(
        f"upstream: change feed: {len(names) - len(unmoved)} of {len(names)} projects "
        "moved since their last check"
    )
    return unmoved, serials


def watch_upstream(bot: Bot, entries: list[Entry]) -> Watched:
    """Check the entries' pages upstream, concurrently and conditionally (ETag/Last-Modified).

    Where upstream offers a change feed, only the pages it says moved (``read_feed``). Every
    outcome is recorded in state. A page upstream answered 304 for, or the feed passed over,
    is not loaded here: a tick where nothing moved reads none of the 25,000 stored pages.
    """
    watched = Watched()
    if not entries:
        return watched
    moment = bot.clock()
    unmoved, serials = read_feed(bot, [e.name for e in entries])
    watched.unchanged.update(unmoved)
    known = bot.state.validators(bot.upstream.index_url)
    items = [(e.project, known.get(e.name)) for e in entries if e.name not in unmoved]

    def progress(done: int, total: int) -> None:
        bot.echo(f"watched {done}/{total} projects upstream")

    checks = list(
        watch(
            bot.upstream,
            items,
            processes=bot.watch_processes,
            progress=progress if len(items) > WATCH_PROGRESS else None,
        )
    )
    watched.gone = {c.name for c in checks if c.status == "missing"}
    bot.state.record_checks(checks, serials)
    if not unmoved:
        bot.state.set_meta(FULL_CHECK_META, iso(moment))
    for checked in checks:
        if checked.page is not None:
            watched.fresh[checked.name] = checked.page
        elif checked.status == "unchanged":
            watched.unchanged.add(checked.name)
        else:
            watched.errors[checked.name] = checked.error or f"upstream check {checked.status}"
    counts = Counter(c.status for c in checks)
    bot.echo(
        f"upstream: {len(checks)} projects checked: {counts['changed']} pages fetched, "
        f"{counts['unchanged']} unchanged (304), "
        f"{counts['failed'] + counts['missing']} failed"
    )
    return watched


def mirror_upstream(bot: Bot, fresh: Mapping[str, ProjectPage], gone: Iterable[str] = ()) -> None:
    """Put upstream's files, and their yanks, on our pages of the projects whose page changed.

    Only pages upstream sent anew are touched, and those of projects upstream deleted
    (``gone``: our wheels of them are yanked): a tick where nothing moved rewrites nothing.
    """
    gone = set(gone)
    if not fresh and not gone:
        return
    try:
        files = {n: p.files for n, p in fresh.items()}
        said = index.refresh(bot.state.index_dir, files, gone)
    except PublishError as exc:
        bot.echo(f"error: index: {exc}")
        return
    for line in said:
        bot.echo(f"index: {line}")


def fingerprint(bot: Bot, entry: Entry, page_mark: str | None, template: int) -> str:
    """Everything a project's sync depends on besides the forge, as one digest.

    The forge's side is its change feed: a project it names is synced whatever this says.
    """
    parts = (
        __version__,
        repr(entry),
        page_mark,
        bot.upstream.index_url,
        template,
        bot.max_open_prs,
        bot.min_release_age,
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def sync_all(
    bot: Bot, entries: tuple[Entry, ...], summary: Summary, changes: Changes
) -> dict[str, str]:
    """Sync each entry whose inputs changed; returns main's head per project, where known.

    A project is synced when the forge says something of it changed, when its fingerprint
    differs from its last complete sync's, or when that sync left something for later (a
    PR held back by a limit, a release waiting for its minimum age). The rest cost no git,
    no forge call and no page read. One that fails is retried after an exponential backoff.
    """
    moment = bot.clock()
    attempts = bot.state.attempts()
    synced = bot.state.synced()
    moved = {name for name in synced if not changes.complete or name in changes.projects}
    # What main builds, where the forge said nothing changed: the graph behind PR bodies'
    # "affected" list reads git only for the rest.
    versions = settled_versions(synced, changes)
    affected = affected_by(bot, entries, versions)
    due = []
    for entry in entries:
        attempt = attempts.get(entry.name)
        if attempt is not None and attempt.next_attempt > moment:
            summary.backing_off += 1
            bot.echo(
                f"{entry.name}: backing off after {attempt.failures} failed attempts "
                f"({attempt.reason}); next attempt after {iso(attempt.next_attempt)}"
            )
        else:
            due.append(entry)
    # Moved but not synced now (skipped, retired, backing off): its version is no longer
    # known, so status, the graph and a later sync do not take the stale one.
    unsynced = moved - {e.name for e in due}
    if unsynced:
        bot.state.forget_synced(*sorted(unsynced))
    watched = watch_upstream(bot, due)
    mirror_upstream(bot, watched.fresh, watched.gone)
    marks = bot.state.page_marks()
    template = feedstock.template_version(bot.template_dir)
    heads = {
        name: row.head for name, row in synced.items() if row.head is not None and name not in moved
    }
    for entry in due:
        name = entry.name
        wanted = fingerprint(bot, entry, marks.get(name), template)
        last = synced.get(name)
        if name not in moved and last is not None and last.fingerprint == wanted:
            continue
        attempt = attempts.get(name)
        bot.state.forget_synced(name)
        heads.pop(name, None)
        versions.pop(name, None)
        try:
            version = sync_project(bot, entry, watched.page(bot, name), summary, affected)
        except WheelstockError as exc:
            failed = bot.state.record_failure(name, str(exc), moment, backoff)
            summary.error(
                bot,
                name,
                f"{exc} (failure {failed.failures}; next attempt after {iso(failed.next_attempt)})",
            )
            continue
        if attempt is not None:
            bot.state.clear_failures(name)
        if name in summary.unsettled:
            continue
        head = bot.forge.head(name) if bot.forge.has_feedstock(name) else None
        if head is not None:
            heads[name] = head
        if version is not None:
            versions[name] = version
        bot.state.record_synced(name, Synced(wanted, head, version))
    return heads


def tick(bot: Bot, *, build: bool = True) -> Summary:
    """Run one whole cycle; one project's failure never stops the others.

    With ``build=False`` only upstream is watched and PRs are tended; merged heads are built
    and approved builds published by the next full tick.
    """
    summary = Summary()
    reg = load_registry(bot, summary)
    retire_removed(bot, reg, summary)
    entries = active(bot, reg, summary)
    # One question to the forge for the whole tick: what changed since the last one.
    changes = bot.forge.changes(bot.state.get_meta(FORGE_CURSOR))
    # Commands first: a PR that this tick supersedes still gets its answers.
    try:
        commands.answer_commands(
            bot,
            {e.name: e for e in reg.entries},
            summary,
            lambda entry: stage.rebuild(bot, entry),
            commented=changes.commented if changes.complete else None,
        )
    except WheelstockError as exc:
        summary.error(bot, "commands", str(exc))
    heads = sync_all(bot, entries, summary, changes)
    if build:
        stage.build_heads(bot, entries, summary, heads)
        stage.publish(bot, summary)
    # Only now: a tick that dies before this point sees the same changes again next time.
    bot.state.set_meta(FORGE_CURSOR, changes.cursor)
    return summary
