"""What one tick works with (the bot's parts and limits) and what it counts as it goes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.build.extract import Limits
from bot.build.sandbox import ResourceLimits, Sandbox
from bot.builder import Runner, run_in_own_session
from bot.forge import Forge
from bot.state import State
from bot.upstream import Upstream

# Noise limits (Renovate has the same two knobs): new PRs per tick, open bot PRs per feedstock.
MAX_NEW_PRS = 20
MAX_OPEN_PRS = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


# Watched projects from which a tick reads upstream's change feed: about where that many
# conditional requests (about 2.5 s on 2 cores, benchmarks/tick.py) cost what reading a real
# index's root page does (46 MB, fetched and parsed; it changes every few seconds, so every
# tick pays for it).
CHANGE_FEED_FROM = 5000


@dataclass
class Bot:
    """Everything a tick needs, passed in so tests can give real parts on loopback."""

    state: State
    forge: Forge
    upstream: Upstream
    registry_dir: Path
    template_dir: Path
    runner: Runner = run_in_own_session
    echo: Callable[[str], None] = print
    clock: Callable[[], datetime] = utcnow
    max_new_prs: int = MAX_NEW_PRS
    max_open_prs: int = MAX_OPEN_PRS
    min_release_age: timedelta | None = None
    # Worker processes for watching upstream (None: one per CPU); small watches stay in-process
    # on ``upstream``'s client.
    watch_processes: int | None = None
    # Ask upstream's change feed which pages moved (bot.upstream.Feed), where it offers one
    # and at least ``change_feed_from`` projects are watched (below that, one conditional
    # request a project costs less than a root page that lists every project upstream);
    # every page is still checked conditionally once per ``full_check_every``.
    change_feed: bool = True
    change_feed_from: int = CHANGE_FEED_FROM
    full_check_every: timedelta = timedelta(hours=24)
    # Builds: the sandbox (found by the tick's first build unless given), whether the operator
    # allowed builds without one, Pythons configured beyond PATH ("3.12" -> path), the limits.
    sandbox: Sandbox | None = None
    unsafe_no_sandbox: bool = False
    pythons: Mapping[str, str] = field(default_factory=dict)
    build_timeout: float = 900.0
    resource_limits: ResourceLimits = field(default_factory=ResourceLimits)
    extract_limits: Limits = field(default_factory=Limits)
    verify_reproducible: bool = False


@dataclass
class Summary:
    """What a tick did, counted for the closing line."""

    projects: int = 0
    created: int = 0
    opened: int = 0
    built: int = 0
    failed: int = 0
    published: int = 0
    skipped: int = 0
    retired: int = 0
    superseded: int = 0
    deferred: int = 0
    backing_off: int = 0
    commands: int = 0
    errors: list[str] = field(default_factory=list)
    # Projects whose sync left work for a later tick (a PR held back by a limit, a release
    # waiting for its minimum age): synced again next tick even if nothing else moved.
    unsettled: set[str] = field(default_factory=set)

    def line(self) -> str:
        extra = "".join(
            f", {count} {what}"
            for count, what in (
                (self.superseded, "PRs superseded"),
                (self.deferred, "PRs deferred by limits"),
                (self.commands, "commands"),
                (self.backing_off, "backing off"),
                (self.skipped, "skipped"),
                (self.retired, "retired"),
            )
            if count
        )
        return (
            f"tick: {self.projects} projects, {self.created} feedstocks created, "
            f"{self.opened} PRs opened, {self.built} built, {self.failed} failed, "
            f"{self.published} published{extra}, {len(self.errors)} errors"
        )

    def error(self, bot: Bot, project: str, message: str) -> None:
        self.errors.append(f"{project}: {message}")
        bot.echo(f"error: {project}: {message}")
