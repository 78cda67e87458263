"""What the bot remembers of upstream's pages between ticks: validators, pages, digests.

The watch (bot.watch) sends validators back for conditional requests and gets 304s, so the
page itself is kept to work from; its digest names it in a project's sync fingerprint. Part
of ``bot.state.State``, whose database it shares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    # Imported for real inside the methods: state stays cheap to import without httpx.
    from bot.simple import DistFile, ProjectPage
    from bot.upstream import Checked, Validators

# What the watch of upstream remembers per project (bot.watch): the validators for
# conditional requests, and the page itself, so a 304 costs neither a refetch nor a parse.
WATCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS pages (
    project TEXT PRIMARY KEY,      -- canonical name
    url TEXT,                      -- the page as last fetched (relative links resolve from it)
    etag TEXT,
    last_modified TEXT,
    files TEXT,                    -- JSON list of DistFile fields; NULL: no page (yet)
    checked_at TEXT NOT NULL,
    changed_at TEXT,               -- when a 200 last brought the page
    error TEXT,                    -- the last check's one-line error; NULL when it went fine
    failures INTEGER NOT NULL DEFAULT 0,  -- consecutive checks that failed or found nothing
    digest TEXT,                   -- sha256 of url and files: the page's identity for a sync
    -- The change feed (bot.upstream.Feed): the serial the stored page is known current at,
    -- and the serial upstream's root page gave last. A page is fetched again when the
    -- second passes the first.
    serial INTEGER,
    feed_serial INTEGER
);
"""


def now() -> str:
    """UTC now as the state database writes times (bot.state re-exports it)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class UpstreamPages:
    """The ``pages`` table's queries, a part of State (which opens ``db``)."""

    db: sqlite3.Connection

    def validators(self, index_url: str = "") -> dict[str, Validators]:
        """What to send back per project: only where a page is kept for a 304 to reuse.

        With ``index_url``, only pages fetched from under it: another index's validators could
        earn a 304 that would pass off the old index's page as this one's.
        """
        from bot.upstream import Validators

        rows = self.db.execute(
            "SELECT project, etag, last_modified FROM pages WHERE files IS NOT NULL "
            "AND (etag IS NOT NULL OR last_modified IS NOT NULL) "
            "AND substr(url, 1, length(?)) = ?",
            (index_url, index_url),
        )
        return {str(p): Validators(etag=e, last_modified=m) for p, e, m in rows}

    def record_checks(
        self, checks: Iterable[Checked], feed: Mapping[str, int] | None = None
    ) -> None:
        """Store a watch's outcomes in one transaction.

        changed: the new page and validators; unchanged: the time, and validators a 304 may
        have updated; failed: the error, one more failure, the old page kept; missing: the
        error, one more failure, and no page (upstream no longer has one).

        ``feed`` is the change feed read before the checks (project -> serial): a page checked
        after it is current at least at its serial. Where the page gave its own serial, the
        lower of the two is kept, so a page older than the feed is fetched again next time.
        A check without a feed keeps the feed's last serial: a tick run with the feed off
        leaves the next one with it nothing to relearn.
        """
        stamp = now()
        feed = feed or {}
        changed: list[tuple[object, ...]] = []
        unchanged: list[tuple[object, ...]] = []
        failed: list[tuple[object, ...]] = []
        missing: list[tuple[object, ...]] = []
        for check in checks:
            etag, modified = check.validators.etag, check.validators.last_modified
            fed = feed.get(check.name)
            known = [n for n in (fed, check.serial) if n is not None]
            serial = min(known) if known else None
            if check.status == "changed":
                assert check.page is not None
                files = json.dumps([_file_row(f) for f in check.page.files])
                digest = hashlib.sha256(f"{check.page.url}\n{files}".encode()).hexdigest()
                row = (check.name, check.page.url, etag, modified, files, stamp, stamp, digest)
                changed.append((*row, serial, fed))
            elif check.status == "unchanged":
                unchanged.append((etag, modified, stamp, serial, fed, check.name))
            elif check.status == "missing":
                missing.append((check.name, stamp, check.error))
            else:
                failed.append((check.name, stamp, check.error or "failed"))
        with self.db as db:
            db.executemany(
                "INSERT INTO pages (project, url, etag, last_modified, files, checked_at, "
                "changed_at, digest, serial, feed_serial, error, failures) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0) "
                "ON CONFLICT (project) DO UPDATE SET url = excluded.url, etag = excluded.etag, "
                "last_modified = excluded.last_modified, files = excluded.files, "
                "checked_at = excluded.checked_at, changed_at = excluded.changed_at, "
                "digest = excluded.digest, serial = excluded.serial, "
                "feed_serial = COALESCE(excluded.feed_serial, feed_serial), error = NULL, "
                "failures = 0",
                changed,
            )
            db.executemany(
                "UPDATE pages SET etag = ?, last_modified = ?, checked_at = ?, serial = ?, "
                "feed_serial = COALESCE(?, feed_serial), error = NULL, failures = 0 "
                "WHERE project = ?",
                unchanged,
            )
            db.executemany(
                "INSERT INTO pages (project, checked_at, error, failures) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (project) DO UPDATE SET checked_at = excluded.checked_at, "
                "error = excluded.error, failures = failures + 1",
                failed,
            )
            db.executemany(
                "INSERT INTO pages (project, checked_at, error, failures) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (project) DO UPDATE SET url = NULL, etag = NULL, "
                "last_modified = NULL, files = NULL, digest = NULL, serial = NULL, "
                "checked_at = excluded.checked_at, "
                "error = excluded.error, failures = failures + 1",
                missing,
            )

    def record_feed(self, serials: Mapping[str, int | None]) -> None:
        """Store the serials a change feed gave, on every stored page (one the feed does not
        list gets none), whether or not its project is watched now: a project left out of
        this tick (backing off, skipped) must not keep an older serial for the next.

        Only rows whose serial moved are written: at 25,000 projects and 1% moving, 250.
        """
        known = dict(self.db.execute("SELECT project, feed_serial FROM pages"))
        moved = [
            (serials.get(name), name) for name, old in known.items() if serials.get(name) != old
        ]
        with self.db as db:
            db.executemany("UPDATE pages SET feed_serial = ? WHERE project = ?", moved)

    def feed_serials(self, index_url: str = "") -> dict[str, int]:
        """The serial the change feed gave last, per page fetched from under ``index_url``."""
        rows = self.db.execute(
            "SELECT project, feed_serial FROM pages WHERE feed_serial IS NOT NULL "
            "AND substr(url, 1, length(?)) = ?",
            (index_url, index_url),
        )
        return {str(p): int(n) for p, n in rows}

    def unmoved(self, index_url: str = "") -> set[str]:
        """Projects whose stored page is current at the serial the feed gave last.

        Only pages fetched from under ``index_url`` whose last check went fine: a failed or
        missing one is checked again whatever the feed says.
        """
        rows = self.db.execute(
            "SELECT project FROM pages WHERE files IS NOT NULL AND error IS NULL "
            "AND serial IS NOT NULL AND feed_serial IS NOT NULL AND feed_serial <= serial "
            "AND substr(url, 1, length(?)) = ?",
            (index_url, index_url),
        )
        return {str(p) for (p,) in rows}

    def cached_page(self, name: str, index_url: str = "") -> ProjectPage | None:
        """The page as last fetched (kept through 304s and failures), if there is one.

        With ``index_url``, only a page fetched from under it.
        """
        from bot.simple import ProjectPage

        row = self.db.execute(
            "SELECT project, url, files FROM pages WHERE project = ? AND files IS NOT NULL "
            "AND substr(url, 1, length(?)) = ?",
            (_canonical(name), index_url, index_url),
        ).fetchone()
        if row is None:
            return None
        project, url, files = row
        return ProjectPage(
            name=str(project),
            url=str(url),
            files=tuple(_file_from_row(item) for item in json.loads(str(files))),
        )

    def page_marks(self) -> dict[str, str]:
        """Each stored page's digest (of its URL and files): the page a sync worked from."""
        rows = self.db.execute("SELECT project, digest FROM pages WHERE files IS NOT NULL")
        return {str(p): str(d) for p, d in rows if d is not None}

    def page_errors(self) -> dict[str, tuple[str, int]]:
        """Projects whose last check went wrong: (one-line error, consecutive failures)."""
        rows = self.db.execute(
            "SELECT project, error, failures FROM pages WHERE error IS NOT NULL ORDER BY project"
        )
        return {str(p): (str(e), int(f)) for p, e, f in rows}


def _canonical(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def _file_row(dist: DistFile) -> dict[str, object]:
    row = dataclasses.asdict(dist)
    if dist.upload_time is not None:
        row["upload_time"] = dist.upload_time.isoformat()
    return row


def _file_from_row(row: dict[str, Any]) -> DistFile:
    from bot.simple import DistFile

    upload_time = row.get("upload_time")
    return DistFile(
        filename=row["filename"],
        url=row["url"],
        sha256=row["sha256"],
        requires_python=row.get("requires_python"),
        yanked=row.get("yanked"),
        upload_time=datetime.fromisoformat(upload_time) if upload_time else None,
        size=row.get("size"),
        core_metadata=row.get("core_metadata"),
    )
