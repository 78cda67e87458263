"""What the bot remembers between ticks: builds and their review status, in SQLite."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bot.errors import WheelstockError

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
CREATE TABLE IF NOT EXISTS retired (
    project TEXT PRIMARY KEY,      -- a feedstock whose registry entry was removed
    retired_at TEXT NOT NULL
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


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


class State:
    """The state directory: ``state.db`` plus the folders each stage writes."""

    def __init__(self, root: Path):
        # Absolute, because git and the builder run in other working directories.
        self.root = root.resolve()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.root / "state.db")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WheelstockError(f"state directory {root}: {reason}") from exc

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

    def retired(self) -> set[str]:
        return {str(row[0]) for row in self.db.execute("SELECT project FROM retired")}

    def retire(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO retired VALUES (?, ?)", (project, now()))

    def unretire(self, project: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM retired WHERE project = ?", (project,))
