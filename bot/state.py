"""What the bot remembers between ticks: builds and their review status, in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bot.errors import WheelstockError
from bot.state_pages import WATCH_SCHEMA, UpstreamPages
from bot.state_pages import now as now  # re-exported: times as the database writes them

if TYPE_CHECKING:
    from bot.forge import Changes

SCHEMA = """
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL,
    version TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    status TEXT NOT NULL,          -- see STATUSES
    reason TEXT,
    directory TEXT NOT NULL,       -- builds/<project>/<commit>: log, wheels, provenance
    wheels TEXT NOT NULL DEFAULT '[]',
    decided_by TEXT,
    decided_at TEXT,
    created_at TEXT NOT NULL,
    UNIQUE (project, commit_sha)
);
CREATE TABLE IF NOT EXISTS failed_sdists (
    sha256 TEXT NOT NULL,          -- the sdist that failed to build
    builder TEXT NOT NULL,         -- "wheelstock <version>": a new builder tries again
    project TEXT NOT NULL,
    commit_sha TEXT NOT NULL,      -- the head whose build failed first
    reason TEXT NOT NULL,
    failed_at TEXT NOT NULL,
    PRIMARY KEY (sha256, builder)
);
CREATE TABLE IF NOT EXISTS retired (
    project TEXT PRIMARY KEY,      -- a feedstock whose registry entry was removed
    retired_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intents (
    project TEXT NOT NULL,
    branch TEXT NOT NULL,          -- the duplicate key: one PR per branch, ever
    kind TEXT NOT NULL,            -- bump | rerender
    version TEXT NOT NULL,         -- the release, or the template version of a rerender
    pr_number INTEGER,             -- set once the PR is open
    created_at TEXT NOT NULL,
    PRIMARY KEY (project, branch)
);
CREATE TABLE IF NOT EXISTS attempts (
    project TEXT PRIMARY KEY,      -- a project whose last sync failed
    failures INTEGER NOT NULL,     -- in a row
    reason TEXT NOT NULL,
    next_attempt TEXT NOT NULL     -- ISO 8601, UTC
);
CREATE TABLE IF NOT EXISTS comments_seen (
    pr_number INTEGER PRIMARY KEY, -- the newest comment the bot has acted on, per PR
    last_id INTEGER NOT NULL
);
"""

# failed: the build or its source was refused; skipped: the version is already published;
# staged -> approved -> published, or rejected; superseded: a newer build of the same version
# was staged; refused: approved, but the index would not take it (the reason says why).
STATUSES = (
    "failed",
    "skipped",
    "staged",
    "superseded",
    "approved",
    "rejected",
    "published",
    "refused",
)


# What a tick over many feedstocks needs so that it pays only for what changed: per project,
# a fingerprint of everything its last complete sync depended on, and main's head then; and
# the forge's cursor as of the last tick that went through.
SYNC_SCHEMA = """
CREATE TABLE IF NOT EXISTS synced (
    project TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,     -- entry, upstream page, template, settings, wheelstock
    head TEXT,                     -- main's head after that sync (NULL: no feedstock)
    version TEXT,                  -- the version feedstock.yaml on main builds then
    synced_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


# In the meta table: the forge's cursor (bot.forge.Changes) as of the last tick that went
# through; what the forge says changed since is what the state does not know yet.
FORGE_CURSOR = "forge-cursor"


def settled_versions(synced: Mapping[str, Synced], changes: Changes) -> dict[str, str]:
    """``State.settled_versions`` from rows already read (the tick has them in hand)."""
    if not changes.complete:
        return {}
    return {
        name: row.version
        for name, row in synced.items()
        if row.version is not None and name not in changes.projects
    }


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Intent:
    """A PR the bot set out to open: recorded before anything is pushed."""

    project: str
    branch: str
    kind: str
    version: str
    pr_number: int | None


@dataclass(frozen=True)
class Synced:
    """A project's last complete sync: what it depended on, and main as it left it."""

    fingerprint: str
    head: str | None  # None: no feedstock
    version: str | None  # what feedstock.yaml on main builds


@dataclass(frozen=True)
class Attempt:
    """A project whose syncs keep failing, and when the bot tries it again."""

    project: str
    failures: int
    reason: str
    next_attempt: datetime


@dataclass(frozen=True)
class Build:
    id: int
    project: str
    version: str
    commit: str
    status: str
    reason: str | None
    directory: Path
    wheels: tuple[str, ...]
    decided_by: str | None
    created_at: str

    @property
    def log_path(self) -> Path:
        return self.directory / "build.log"


class State(UpstreamPages):
    """The state directory: ``state.db`` plus the folders each stage writes."""

    def __init__(self, root: Path):
        # Absolute, because git and the builder run in other working directories.
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.root / "state.db")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
            self.db.executescript(WATCH_SCHEMA)
            self.db.executescript(SYNC_SCHEMA)
            self._add_column("pages", "digest", "TEXT")
            self._add_column("pages", "serial", "INTEGER")
            self._add_column("pages", "feed_serial", "INTEGER")
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WheelstockError(f"state directory {root}: {reason}") from exc

    def _add_column(self, table: str, column: str, kind: str) -> None:
        # A state directory from an older wheelstock: its table lacks the column; add it.
        columns = {str(row[1]) for row in self.db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    @property
    def forge_dir(self) -> Path:
        return self.root / "forge"

    @property
    def builds_dir(self) -> Path:
        return self.root / "builds"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    @property
    def registry_cache(self) -> Path:
        """The registry's entries as last parsed, per file (bot.registry_cache)."""
        return self.root / "registry-cache.json"

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.db:
            yield self.db

    def _build(self, row: tuple[object, ...]) -> Build:
        (id_, project, version, commit, status, reason, directory, wheels, by, created) = row
        return Build(
            id=int(str(id_)),
            project=str(project),
            version=str(version),
            commit=str(commit),
            status=str(status),
            reason=None if reason is None else str(reason),
            directory=Path(str(directory)),
            wheels=tuple(json.loads(str(wheels))),
            decided_by=None if by is None else str(by),
            created_at=str(created),
        )

    _COLUMNS = (
        "id, project, version, commit_sha, status, reason, directory, wheels, decided_by, "
        "created_at"
    )

    def build_for(self, project: str, commit: str) -> Build | None:
        row = self.db.execute(
            f"SELECT {self._COLUMNS} FROM builds WHERE project = ? AND commit_sha = ?",
            (project, commit),
        ).fetchone()
        return None if row is None else self._build(row)

    def builds(self, *, status: str | None = None, project: str | None = None) -> list[Build]:
        query = f"SELECT {self._COLUMNS} FROM builds WHERE 1=1"
        args: list[str] = []
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        if project is not None:
            query += " AND project = ?"
            args.append(project)
        return [self._build(r) for r in self.db.execute(query + " ORDER BY id", args)]

    def record_build(
        self,
        *,
        project: str,
        version: str,
        commit: str,
        status: str,
        directory: Path,
        reason: str | None = None,
        wheels: tuple[str, ...] = (),
    ) -> Build:
        assert status in ("failed", "skipped", "staged")
        with self.transaction() as db:
            db.execute(
                "INSERT INTO builds (project, version, commit_sha, status, reason, directory, "
                "wheels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    project,
                    version,
                    commit,
                    status,
                    reason,
                    str(directory),
                    json.dumps(wheels),
                    now(),
                ),
            )
        build = self.build_for(project, commit)
        assert build is not None
        return build

    def set_status(
        self, build: Build, status: str, *, by: str | None = None, reason: str | None = None
    ) -> None:
        assert status in STATUSES
        with self.transaction() as db:
            if by is None:
                db.execute(
                    "UPDATE builds SET status = ?, reason = COALESCE(?, reason) WHERE id = ?",
                    (status, reason, build.id),
                )
            else:
                db.execute(
                    "UPDATE builds SET status = ?, decided_by = ?, decided_at = ?, "
                    "reason = COALESCE(?, reason) WHERE id = ?",
                    (status, by, now(), reason, build.id),
                )

    # -- PR intents ------------------------------------------------------------------------
    def record_intent(self, project: str, branch: str, kind: str, version: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO intents (project, branch, kind, version, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (project, branch, kind, version, now()),
            )

    def intent_opened(self, project: str, branch: str, number: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE intents SET pr_number = ? WHERE project = ? AND branch = ?",
                (number, project, branch),
            )

    def drop_intent(self, project: str, branch: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM intents WHERE project = ? AND branch = ?", (project, branch))

    def intents(self, project: str | None = None, *, pending: bool = False) -> list[Intent]:
        query = "SELECT project, branch, kind, version, pr_number FROM intents WHERE 1=1"
        args: list[str] = []
        if project is not None:
            query += " AND project = ?"
            args.append(project)
        if pending:
            query += " AND pr_number IS NULL"
        return [
            Intent(str(p), str(b), str(k), str(v), None if n is None else int(n))
            for p, b, k, v, n in self.db.execute(query + " ORDER BY created_at, branch", args)
        ]

    # -- backoff of failing projects -------------------------------------------------------
    def attempt(self, project: str) -> Attempt | None:
        return self.attempts().get(project)

    def attempts(self) -> dict[str, Attempt]:
        rows = self.db.execute("SELECT project, failures, reason, next_attempt FROM attempts")
        return {
            str(p): Attempt(str(p), int(f), str(r), datetime.fromisoformat(str(t)))
            for p, f, r, t in rows
        }

    def record_failure(
        self, project: str, reason: str, when: datetime, delay: Callable[[int], timedelta]
    ) -> Attempt:
        """Count one more failure in a row; the next attempt waits ``delay(failures)``."""
        previous = self.attempt(project)
        failures = 1 if previous is None else previous.failures + 1
        attempt = Attempt(project, failures, reason, when + delay(failures))
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO attempts VALUES (?, ?, ?, ?)",
                (project, failures, reason, iso(attempt.next_attempt)),
            )
        return attempt

    def clear_failures(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM attempts WHERE project = ?", (project,))

    # -- PR comments the bot has acted on ------------------------------------------------
    def last_comment_seen(self, number: int) -> int:
        row = self.db.execute(
            "SELECT last_id FROM comments_seen WHERE pr_number = ?", (number,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def see_comment(self, number: int, comment_id: int) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO comments_seen VALUES (?, ?) ON CONFLICT (pr_number) "
                "DO UPDATE SET last_id = MAX(last_id, excluded.last_id)",
                (number, comment_id),
            )

    # -- sdists that failed ------------------------------------------------------------------
    def failed_sdist(self, sha256: str, builder: str) -> tuple[str, str] | None:
        """(commit, reason) of the first failed build of this sdist by this builder."""
        row = self.db.execute(
            "SELECT commit_sha, reason FROM failed_sdists WHERE sha256 = ? AND builder = ?",
            (sha256, builder),
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def record_failed_sdist(
        self, sha256: str, builder: str, project: str, commit: str, reason: str
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO failed_sdists (sha256, builder, project, commit_sha, "
                "reason, failed_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sha256, builder, project, commit, reason, now()),
            )

    def forget_failed_sdist(self, sha256: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM failed_sdists WHERE sha256 = ?", (sha256,))

    def forget_build(self, build: Build) -> None:
        """Drop a failed build's record so its commit is built again (``@wheelstock rebuild``)."""
        assert build.status == "failed"
        with self.transaction() as db:
            db.execute("DELETE FROM builds WHERE id = ?", (build.id,))

    def retired(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT project FROM retired")}

    def retire(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO retired VALUES (?, ?)", (project, now()))

    def unretire(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM retired WHERE project = ?", (project,))

    # -- what the last complete sync of each project depended on (bot.tick) -------------------

    def synced(self) -> dict[str, Synced]:
        """What every project's last complete sync left, in one query."""
        rows = self.db.execute("SELECT project, fingerprint, head, version FROM synced")
        return {
            str(p): Synced(str(f), None if h is None else str(h), None if v is None else str(v))
            for p, f, h, v in rows
        }

    def settled_versions(self, changes: Changes) -> dict[str, str]:
        """What main builds per project, as its last complete sync left it, for every project
        the forge's ``changes`` since that tick (``FORGE_CURSOR``) do not name: no git."""
        return settled_versions(self.synced(), changes)

    def record_synced(self, project: str, synced: Synced) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO synced (project, fingerprint, head, version, synced_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (project) DO UPDATE SET "
                "fingerprint = excluded.fingerprint, head = excluded.head, "
                "version = excluded.version, synced_at = excluded.synced_at",
                (project, synced.fingerprint, synced.head, synced.version, now()),
            )

    def forget_synced(self, *projects: str) -> None:
        """Before a sync starts: one that dies half-way leaves the project to sync again.

        And for a project that moved but is not synced now (skipped, retired, backing off):
        main's version is no longer known. One transaction for all of them.
        """
        with self.transaction() as db:
            db.executemany("DELETE FROM synced WHERE project = ?", [(p,) for p in projects])

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def built_commits(self) -> set[tuple[str, str]]:
        """(project, commit) of every recorded build, in one query."""
        return {
            (str(p), str(c)) for p, c in self.db.execute("SELECT project, commit_sha FROM builds")
        }
