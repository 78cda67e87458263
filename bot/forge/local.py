"""The embedded default forge: bare git repos, PR records as JSON, an index and event log in SQLite.

Over the ~500 lines a module here aims for, because the index, the event log, the push hook and
the clone-free commits only make sense together: each mutation writes git, file and row as one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path

from bot.errors import ForgeError
from bot.forge import BOT_HANDLE, Changes, Comment, PullRequest
from bot.fsutil import atomic_write_text
from bot.state import now

BOT = (BOT_HANDLE, "bot@wheelstock.invalid")
ZERO = "0" * 40  # the sha git reports for a ref that was deleted (or did not exist yet)
MAIN = "refs/heads/main"
# A pulls/ stamp younger than this may hide a later change made within the same timestamp tick
# (whole seconds on some filesystems), so it is checked by listing, as git treats a "racily
# clean" index entry; an older one is trusted on one stat.
RACY_NS = 2_000_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the cursor; never reused
    project TEXT NOT NULL,
    kind TEXT NOT NULL,                     -- create_feedstock, push_change, push, open_pr, ...
    number INTEGER                          -- the pull request's, where there is one
);
CREATE TABLE IF NOT EXISTS refs (
    project TEXT NOT NULL,
    ref TEXT NOT NULL,                      -- refs/heads/main, ...
    sha TEXT NOT NULL,
    PRIMARY KEY (project, ref)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS prs (
    number INTEGER PRIMARY KEY,             -- pulls/<number>.json, the record itself
    project TEXT,
    state TEXT,
    branch TEXT,
    record TEXT,                            -- the record as JSON; NULL: the file is unreadable
    mtime_ns INTEGER NOT NULL,              -- the file's stamp when it was indexed
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS prs_by_project ON prs (project, state);
CREATE INDEX IF NOT EXISTS prs_by_state ON prs (state);
CREATE INDEX IF NOT EXISTS prs_unreadable ON prs (number) WHERE record IS NULL;
"""

# An open PR shows what its branch holds now, like on a hosted forge, so what `pr show`
# displays is what `pr merge` merges.
PR_QUERY = """
SELECT p.number, p.record, r.sha FROM prs AS p
LEFT JOIN refs AS r ON p.state = 'open' AND r.project = p.project
    AND r.ref = 'refs/heads/' || p.branch
"""

# Plain sh, no Python: a push must not depend on the bot's interpreter. One line per ref.
HOOK = r"""#!/bin/sh
# Installed by wheelstock's local forge: tells it about pushes made with plain git.
while read -r old new ref; do
	printf '%s %s %s %s\n' {project} "$old" "$new" "$ref" >>{log}
done
"""


def _identity(name: str, email: str) -> dict[str, str]:
    return {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": email,
    }


def _reason(stderr: object, stdout: object, status: object) -> str:
    """Why git failed, in one line: the first line of stderr ("fatal: ..."), or for some
    commands the last of stdout ("nothing to commit")."""

    def lines(stream: object) -> list[str]:
        return [
            line.strip().removeprefix("stderr: ").removeprefix("stdout: ").strip(" '")
            for line in str(stream or "").splitlines()
            if line.strip().strip("'")
        ]

    said = lines(stderr)[:1] or lines(stdout)[-1:]
    return said[0] if said else f"exit {status}"


@contextmanager
def _git_errors(what: str) -> Iterator[None]:
    """Translate a failing GitPython command into one ForgeError line naming what was done."""
    # Imported where used: importing GitPython runs `git version` twice, in every process
    # (the CLI and each watch worker), and only creating a feedstock needs it.
    import git

    try:
        yield
    except git.GitCommandError as exc:
        raise ForgeError(
            f"{what}: git failed: {_reason(exc.stderr, exc.stdout, exc.status)}"
        ) from exc


def _git(
    repo: Path,
    *args: str,
    what: str,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    ok: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run one git command in ``repo``; an exit status outside ``ok`` is one ForgeError line."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            input=stdin,
            capture_output=True,
            env={**os.environ, **env} if env else None,
            check=False,
        )
    except OSError as exc:
        raise ForgeError(f"{what}: cannot run git: {exc.strerror or exc}") from exc
    if done.returncode not in ok:
        err, out = (s.decode(errors="replace") for s in (done.stderr, done.stdout))
        raise ForgeError(f"{what}: git failed: {_reason(err, out, done.returncode)}")
    return done


def _write_tree(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _blob_id(data: bytes) -> str:
    """The id git gives ``data`` as a blob, so "does this change anything" needs no git."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _cleanup(message: str) -> str:
    """The message as ``git commit -m`` stores it (fast-import and commit-tree store it as is)."""
    text = "\n".join(line.rstrip() for line in message.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def _quoted(path: str) -> str:
    """A path as fast-import reads it: C-style quoted, so spaces, quotes and newlines survive."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _commit_stream(
    ref: str, parent: str, files: Mapping[str, bytes], message: str, modes: Mapping[str, str]
) -> bytes:
    """A fast-import stream: one commit of ``files`` (blobs inline) on ``parent``, then its sha."""
    name, email = BOT
    ident = f"{name} <{email}> {int(time.time())} +0000"
    text = _cleanup(message).encode()
    parts = [f"commit {ref}\nmark :1\nauthor {ident}\ncommitter {ident}\n".encode()]
    parts += [b"data %d\n" % len(text), text, f"from {parent}\n".encode()]
    for path, data in files.items():
        mode = modes.get(path, "100644")
        parts += [f"M {mode} inline {_quoted(path)}\ndata {len(data)}\n".encode(), data, b"\n"]
    parts.append(b"\nget-mark :1\ndone\n")
    return b"".join(parts)


def _record_number(name: str) -> int | None:
    """The PR number of a record file name (``000012.json``); None for anything else."""
    stem, dot, ext = name.partition(".")
    return int(stem) if dot and ext == "json" and stem.isdigit() else None


def _read_record(path: Path) -> PullRequest | None:
    try:
        return PullRequest(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


class LocalForge:
    """Feedstocks as bare repos under ``root/repos``, pull requests as JSON under ``root/pulls``.

    ``root/forge.db`` indexes both (refs, PR rows, an event log for `changes`), so reads cost
    what changed: pushes made with plain git reach it through a post-receive hook that appends
    to ``root/pushes.log``, record files edited by hand through the stamp of ``pulls/``.
    """

    def __init__(self, root: Path):
        # Absolute: git runs with -C in the repos, where a relative path means something else.
        self.root = root.resolve()
        self.repos = self.root / "repos"
        self.pulls = self.root / "pulls"
        self.pushes = self.root / "pushes.log"
        self._log_seen = -1  # the push log's size when this process last found it all taken in
        self._pulls_seen: tuple[int, int] | None = None  # pulls/ as last verified: mtime, entries
        self._pulls_trusted = False  # whether that mtime alone now shows any later change
        # Who committed main..branch, per (project, main's sha, the branch's sha): commits never
        # change, so one answer holds as long as both refs stay where they are.
        self._authors: dict[tuple[str, str, str], frozenset[str]] = {}

    # -- the database ---------------------------------------------------------------------
    @cached_property
    def _db(self) -> sqlite3.Connection:
        """forge.db, opened on first use; a new one first takes in what the root already holds."""
        path = self.root / "forge.db"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ForgeError(f"{path}: not a usable forge database: {exc}") from exc
        if _meta(db, "id") is None:
            self._migrate(db)
        return db

    @contextmanager
    def _write(self, db: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """A short transaction holding the write lock from its start (BEGIN IMMEDIATE), so the
        read-modify-writes of a tick and a `pr merge` running at once take turns."""
        db = db or self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise ForgeError(f"{self.root / 'forge.db'}: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.rollback()
            raise
        db.commit()

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Take in a root made before forge.db: hooks and refs of every repo, the comment ids.

        Gathered outside the transaction (a ``git for-each-ref`` per repo takes a while on a
        big forge) and stored in one; a process that migrated meanwhile wins. The log offset is
        read before any hook is installed, so a push during the migration is seen twice, never
        not at all. PR records are indexed by the first check of pulls/, which finds no stamp.
        """
        offset = self.pushes.stat().st_size if self.pushes.exists() else 0
        refs = {}
        for project in self.feedstocks():
            # A repo git cannot read is left to fail when it is used, not on every command.
            with suppress(ForgeError):
                refs[project] = self._hook_up(project)
        ids = [c.id for path in self.root.glob("comments/*.json") for c in _thread(path, False)]
        with self._write(db):
            if _meta(db, "id") is not None:
                return
            rows = [(p, ref, sha) for p, found in refs.items() for ref, sha in found.items()]
            db.executemany("INSERT OR REPLACE INTO refs VALUES (?, ?, ?)", rows)
            _set_meta(db, "id", secrets.token_hex(8))
            _set_meta(db, "pushes_offset", str(offset))
            _set_meta(db, "comment_id", str(max(ids, default=0)))

    @cached_property
    def _db_id(self) -> str:
        return str(_meta(self._db, "id"))

    def _sync(self) -> None:
        """Bring the index up to date with what changed outside the forge's API."""
        self._sync_pushes()
        self._sync_pulls()

    # -- pushes made with plain git -------------------------------------------------------
    def _install_hook(self, repo: Path, project: str) -> None:
        hook = repo / "hooks" / "post-receive"
        if hook.exists():
            return
        hook.parent.mkdir(exist_ok=True)
        script = HOOK.format(project=shlex.quote(project), log=shlex.quote(str(self.pushes)))
        # Executable before it appears: git skips (and a push goes unseen by) a hook that is not.
        fd, tmp = tempfile.mkstemp(prefix=".post-receive.", dir=hook.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(script)
        os.chmod(tmp, 0o755)
        os.replace(tmp, hook)

    def _hook_up(self, project: str) -> dict[str, str]:
        """Install the push hook where it is missing, then read the refs (one for-each-ref)."""
        repo = self.repo_path(project)
        self._install_hook(repo, project)
        what = f"reading the refs of {project}-feedstock"
        out = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)", what=what)
        pairs = (line.split(" ", 1) for line in out.stdout.decode().splitlines())
        return {ref: sha for sha, ref in pairs}

    def _sync_pushes(self) -> None:
        """Take in the complete lines hooks appended to pushes.log: one stat when there are none."""
        try:
            size = self.pushes.stat().st_size
        except FileNotFoundError:
            size = 0
        if size == self._log_seen:
            return
        with self._write() as db:
            offset = int(_meta(db, "pushes_offset") or 0)
            if size < offset:  # the log was truncated or replaced: all of it is new
                offset = 0
            if size > offset:
                with self.pushes.open("rb") as log:
                    log.seek(offset)
                    chunk = log.read(size - offset)
                complete = chunk[: chunk.rfind(b"\n") + 1]
                for line in complete.decode(errors="replace").splitlines():
                    _take_push(db, line)
                offset += len(complete)
                _set_meta(db, "pushes_offset", str(offset))
        self._log_seen = offset

    def _refs(self, project: str) -> dict[str, str]:
        """The project's refs from the index; a repo it has none of yet is taken in."""
        self._require(project)
        self._sync_pushes()
        rows = self._db.execute("SELECT ref, sha FROM refs WHERE project = ?", (project,))
        return dict(rows.fetchall()) or self._resync(project)

    def _resync(self, project: str) -> dict[str, str]:
        """Read a repo's refs from git again: one put under repos/ by hand after the migration,
        or one where git refused a write, maybe for a ref the index had wrong."""
        refs = self._hook_up(project)
        with self._write() as db:
            db.execute("DELETE FROM refs WHERE project = ?", (project,))
            rows = [(project, ref, sha) for ref, sha in refs.items()]
            db.executemany("INSERT INTO refs VALUES (?, ?, ?)", rows)
            _event(db, project, "push")
        return refs

    @contextmanager
    def _repairing(self, project: str) -> Iterator[None]:
        """A failed write leaves the index as git has it, so the next attempt starts from there
        (a ref moved behind the forge's back, or one git moved before the index could)."""
        try:
            yield
        except ForgeError:
            with suppress(ForgeError):  # the first error is the one to report
                self._resync(project)
            raise

    # -- record files edited by hand ------------------------------------------------------
    def _pulls_stamp(self) -> tuple[int, int]:
        """pulls/ as (mtime_ns, number of entries); (0, 0) while it does not exist."""
        try:
            return self.pulls.stat().st_mtime_ns, len(os.listdir(self.pulls))
        except FileNotFoundError:
            return 0, 0

    def _sync_pulls(self) -> None:
        """Rescan pulls/ when its stamp is not the stored one; one stat when it is trusted."""
        seen = self._pulls_seen
        if seen is not None and self._pulls_trusted:
            with suppress(FileNotFoundError):
                if self.pulls.stat().st_mtime_ns == seen[0]:
                    return
        stamp = self._pulls_stamp()
        if stamp != _stamp(_meta(self._db, "pulls_stamp")):
            self._rescan(stamp)
        self._pulls_seen = stamp
        self._pulls_trusted = stamp[0] > 0 and time.time_ns() - stamp[0] > RACY_NS

    def _rescan(self, stamp: tuple[int, int]) -> None:
        """Reload the records whose file stamp changed; drop the rows whose file is gone."""
        with self._write() as db:
            rows = db.execute("SELECT number, mtime_ns, size, project FROM prs").fetchall()
            known = {number: (mtime, size, project) for number, mtime, size, project in rows}
            present = set()
            with suppress(FileNotFoundError), os.scandir(self.pulls) as entries:
                for entry in entries:
                    number = _record_number(entry.name)
                    if number is None:
                        continue
                    try:
                        info = entry.stat()  # before reading: a later write shows as a change
                    except FileNotFoundError:
                        continue
                    present.add(number)
                    old = known.get(number)
                    if old is not None and old[:2] == (info.st_mtime_ns, info.st_size):
                        continue
                    pr = _read_record(Path(entry.path))
                    _index(db, number, pr, info)
                    projects = {old[2] if old else None, pr.project if pr else None}
                    for project in sorted(p for p in projects if p):
                        _event(db, project, "edit_pr", number)
            for number in known.keys() - present:
                db.execute("DELETE FROM prs WHERE number = ?", (number,))
                if known[number][2]:
                    _event(db, str(known[number][2]), "edit_pr", number)
            _set_meta(db, "pulls_stamp", f"{stamp[0]} {stamp[1]}")

    def _save(self, db: sqlite3.Connection, pr: PullRequest, kind: str, added: bool) -> None:
        """Write the record file, then its row, its event and the stamp pulls/ has now."""
        path = self._pr_path(pr.number)
        atomic_write_text(path, json.dumps(asdict(pr), indent=2) + "\n")
        _index(db, pr.number, pr, path.stat())
        _event(db, pr.project, kind, pr.number)
        # The forge's own write costs no rescan, provided the stored stamp was current before
        # it (else the next check rescans, as it should).
        seen = self._pulls_seen
        if seen is not None and _stamp(_meta(db, "pulls_stamp")) == seen:
            stamp = (self.pulls.stat().st_mtime_ns, seen[1] + added)
            _set_meta(db, "pulls_stamp", f"{stamp[0]} {stamp[1]}")
            self._pulls_seen, self._pulls_trusted = stamp, False

    # -- repositories ---------------------------------------------------------------------
    def repo_path(self, project: str) -> Path:
        return self.repos / f"{project}-feedstock.git"

    def _require(self, project: str) -> Path:
        path = self.repo_path(project)
        if not path.is_dir():
            raise ForgeError(f"no feedstock for project '{project}'")
        return path

    def has_feedstock(self, project: str) -> bool:
        return self.repo_path(project).is_dir()

    def feedstocks(self) -> list[str]:
        if not self.repos.is_dir():
            return []
        suffix = "-feedstock.git"
        return sorted(p.name[: -len(suffix)] for p in self.repos.glob(f"*{suffix}"))

    def create_feedstock(self, project: str, files: Mapping[str, str], message: str) -> str:
        target = self.repo_path(project)
        if target.exists():
            raise ForgeError(f"feedstock for '{project}' already exists")
        with self._write() as db:  # forge.db (and a migration) before the new repo, not after
            db.execute("DELETE FROM refs WHERE project = ?", (project,))  # of an earlier repo
        self.repos.mkdir(parents=True, exist_ok=True)
        # Build the repository under a temporary name and rename it into place, so a failure
        # never leaves a half-made feedstock that later ticks would take for a real one.
        staging = Path(tempfile.mkdtemp(prefix=f".{project}-", dir=self.repos))
        import git

        try:
            with (
                _git_errors(f"creating {project}-feedstock"),
                tempfile.TemporaryDirectory(prefix="wheelstock-init-") as tmp,
            ):
                git.Repo.init(staging, bare=True, initial_branch="main")
                work = git.Repo.init(tmp, initial_branch="main")
                work.git.update_environment(**_identity(*BOT))
                _write_tree(Path(tmp), files)
                work.git.add("--all")
                work.git.commit("-m", message)
                work.git.push(str(staging), "main:refs/heads/main")
                sha = str(work.head.commit.hexsha)
            self._install_hook(staging, project)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        with self._write() as db:
            _move_ref(db, project, MAIN, sha, None)
            _event(db, project, "create_feedstock")
        return sha

    def head(self, project: str, ref: str = "main") -> str:
        sha = self._refs(project).get(f"refs/heads/{ref}")
        return sha if sha is not None else self._rev_parse(project, ref)

    def _rev_parse(self, project: str, ref: str) -> str:
        """Any other expression (a sha, a tag, ``main~1``) is git's to resolve."""
        try:
            out = _git(
                self._require(project), "rev-parse", "--verify", f"{ref}^{{commit}}", what=""
            )
        except ForgeError as exc:
            raise ForgeError(f"{project}-feedstock has no ref '{ref}'") from exc
        return out.stdout.decode().strip()

    def read_file(self, project: str, path: str, ref: str = "main") -> str:
        try:
            out = _git(self._require(project), "show", f"{ref}:{path}", what="")
        except ForgeError as exc:
            raise ForgeError(f"{project}-feedstock has no {path} at {ref}") from exc
        return out.stdout.decode("utf-8")

    def branches(self, project: str) -> list[str]:
        heads = (ref for ref in self._refs(project) if ref.startswith("refs/heads/"))
        return sorted(ref.removeprefix("refs/heads/") for ref in heads)

    def push_change(self, project: str, branch: str, files: Mapping[str, str], message: str) -> str:
        refs = self._refs(project)
        ref = f"refs/heads/{branch}"
        if ref in refs:
            raise ForgeError(f"branch '{branch}' already exists on {project}-feedstock")
        what = f"pushing {branch} to {project}-feedstock"
        if not files:
            raise ForgeError(f"{what}: nothing to commit")
        parent = refs.get(MAIN) or self._rev_parse(project, "main")
        with self._repairing(project):
            sha = self._commit(project, ref, parent, files, message, {}, what)
            with self._write() as db:
                _move_ref(db, project, ref, sha, None)
                _event(db, project, "push_change")
        return sha

    def update_branch(
        self, project: str, branch: str, files: Mapping[str, str], message: str
    ) -> str | None:
        ref = f"refs/heads/{branch}"
        tip = self._refs(project).get(ref)
        if tip is None:
            raise ForgeError(f"{project}-feedstock has no branch '{branch}'")
        what = f"pushing to {branch} of {project}-feedstock"
        listing = _git(self.repo_path(project), "ls-tree", "-r", "-z", tip, what=what).stdout
        entries = (item.decode().split("\t", 1) for item in listing.split(b"\0") if item)
        tree = {path: meta.split() for meta, path in entries}  # path: [mode, type, blob]
        if all(path in tree and tree[path][2] == _blob_id(t.encode()) for path, t in files.items()):
            return None
        # An executable file stays executable, as a checkout that rewrote it kept it.
        modes = {path: "100755" for path in files if tree.get(path, [""])[0] == "100755"}
        # fast-import refuses to move a branch that is not an ancestor of the new commit (no
        # --force): if someone pushed meanwhile, the caller hears of it.
        with self._repairing(project):
            sha = self._commit(project, ref, tip, files, message, modes, what)
            with self._write() as db:
                _move_ref(db, project, ref, sha, tip)
                _event(db, project, "update_branch")
        return sha

    def _commit(
        self,
        project: str,
        ref: str,
        parent: str,
        files: Mapping[str, str],
        message: str,
        modes: Mapping[str, str],
        what: str,
    ) -> str:
        """One commit on ``parent`` written straight into the bare repo: one git, no clone.

        fast-import runs no hooks, so the caller records the ref and the event itself.
        """
        data = {path: text.encode("utf-8") for path, text in files.items()}
        stream = _commit_stream(ref, parent, data, message, modes)
        out = _git(
            self.repo_path(project), "fast-import", "--quiet", "--done", stdin=stream, what=what
        )
        return out.stdout.decode().strip()

    def branch_authors(self, project: str, branch: str) -> set[str]:
        refs = self._refs(project)
        main, head = refs.get("refs/heads/main"), refs.get(f"refs/heads/{branch}")
        key = (project, main, head) if main and head else None
        if key is not None and key in self._authors:
            return set(self._authors[key])
        what = f"reading {branch} of {project}-feedstock"
        log = _git(
            self._require(project), "log", "--format=%an%x00%cn", f"main..{branch}", what=what
        )
        names = {
            name for line in log.stdout.decode().splitlines() for name in line.split("\0") if name
        }
        if key is not None:
            self._authors[key] = frozenset(names)
        return names

    # -- pull requests --------------------------------------------------------------------
    def _pr_path(self, number: int) -> Path:
        return self.pulls / f"{number:06d}.json"

    def _pr(self, row: tuple[int, str | None, str | None]) -> PullRequest:
        number, record, sha = row
        if record is None:
            raise ForgeError(f"{self._pr_path(number)}: not a readable pull request record")
        pr = PullRequest(**json.loads(record))
        return replace(pr, head_commit=sha) if sha else pr

    def pull_requests(
        self, project: str | None = None, state: str | None = None
    ) -> list[PullRequest]:
        self._sync()
        db = self._db
        # Any unreadable record fails the listing, as loading every file did.
        unreadable = db.execute("SELECT MIN(number) FROM prs WHERE record IS NULL").fetchone()[0]
        if unreadable is not None:
            raise ForgeError(f"{self._pr_path(unreadable)}: not a readable pull request record")
        given = {
            column: value
            for column, value in (("p.project", project), ("p.state", state))
            if value is not None
        }
        where = " AND ".join(f"{column} = ?" for column in given)
        sql = PR_QUERY + (f" WHERE {where}" if where else "") + " ORDER BY p.number"
        rows = db.execute(sql, list(given.values()))
        return [self._pr(row) for row in rows.fetchall()]

    def _lookup(self, db: sqlite3.Connection, number: int) -> PullRequest:
        row = db.execute(PR_QUERY + " WHERE p.number = ?", (number,)).fetchone()
        if row is None:
            raise ForgeError(f"no pull request #{number}")
        return self._pr(row)

    def get_pr(self, number: int) -> PullRequest:
        self._sync()
        return self._lookup(self._db, number)

    def open_pr(self, project: str, branch: str, title: str, body: str) -> PullRequest:
        base, head = self.head(project, "main"), self.head(project, branch)
        self._sync_pulls()
        with self._write() as db:
            (last,) = db.execute("SELECT MAX(number) FROM prs").fetchone()
            pr = PullRequest(
                number=(last or 0) + 1,
                project=project,
                branch=branch,
                title=title,
                body=body,
                state="open",
                base_commit=base,
                head_commit=head,
                created_at=now(),
            )
            self._save(db, pr, "open_pr", added=True)
        return pr

    def diff(self, number: int) -> str:
        pr = self.get_pr(number)
        what = f"reading pull request #{number}"
        out = _git(self._require(pr.project), "diff", pr.base_commit, pr.head_commit, what=what)
        return out.stdout.decode("utf-8")

    def _open(self, db: sqlite3.Connection, number: int) -> PullRequest:
        pr = self._lookup(db, number)
        if pr.state != "open":
            raise ForgeError(f"pull request #{number} is {pr.state}, not open")
        return pr

    def merge_pr(self, number: int, by: str) -> PullRequest:
        project = self.get_pr(number).project
        with self._repairing(project), self._write() as db:
            pr = self._open(db, number)  # again, under the lock
            main = _ref(db, project, MAIN) or self._rev_parse(project, "main")
            merged = self._merge(pr, main, by)
            _move_ref(db, project, MAIN, merged, main)
            pr = replace(pr, state="merged", merged_commit=merged, closed_by=by)
            self._save(db, pr, "merge_pr", added=False)
        return pr

    def _merge(self, pr: PullRequest, main: str, by: str) -> str:
        """A merge commit of the PR into ``main`` without a work tree; main moves only from
        ``main`` (update-ref checks it), so a merge never overwrites a push it did not see."""
        repo, what = self.repo_path(pr.project), f"merging pull request #{pr.number}"
        # The commit the PR record shows, not whatever the branch holds by now.
        tree = _git(repo, "merge-tree", "--write-tree", main, pr.head_commit, what=what, ok=(0, 1))
        if tree.returncode == 1:
            raise ForgeError(
                f"pull request #{pr.number} does not merge cleanly into main; rebase it first"
            )
        message = _cleanup(f"Merge pull request #{pr.number} from {pr.branch}\n\n{pr.title}")
        env = _identity(by, f"{by}@wheelstock.invalid")
        args = ("commit-tree", tree.stdout.split()[0].decode(), "-p", main, "-p", pr.head_commit)
        commit = _git(repo, *args, stdin=message.encode(), env=env, what=what)
        merged = commit.stdout.decode().strip()
        _git(repo, "update-ref", MAIN, merged, main, what=what)
        return merged

    def close_pr(self, number: int, by: str) -> PullRequest:
        self._sync()
        with self._write() as db:
            pr = replace(self._open(db, number), state="closed", closed_by=by)
            self._save(db, pr, "close_pr", added=False)
        return pr

    # -- comments -------------------------------------------------------------------------
    def _comments_path(self, number: int) -> Path:
        return self.root / "comments" / f"{number:06d}.json"

    def comments(self, number: int, *, after: int = 0) -> list[Comment]:
        self.get_pr(number)  # a missing PR is an error, not an empty thread
        return [c for c in _thread(self._comments_path(number), True) if c.id > after]

    def comment(self, number: int, author: str, body: str) -> Comment:
        pr = self.get_pr(number)
        with self._write() as db:
            # Ids grow across all PRs, as on hosted forges, so "seen up to id N" is one number.
            last = int(_meta(db, "comment_id") or 0)
            path = self._comments_path(number)
            thread = _thread(path, True)
            new = Comment(id=last + 1, number=number, author=author, body=body, created_at=now())
            records = [asdict(c) for c in [*thread, new]]
            atomic_write_text(path, json.dumps(records, indent=2) + "\n")
            _set_meta(db, "comment_id", str(new.id))
            _event(db, pr.project, "comment", number)
        return new

    # -- what changed ---------------------------------------------------------------------
    def changes(self, since: str | None) -> Changes:
        self._sync()
        db = self._db
        known, _, seq = (since or "").partition(":")
        if known != self._db_id or not seq.isdigit():
            # No cursor, or one of another forge database: everything counts as changed.
            (last,) = db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            return Changes(cursor=f"{self._db_id}:{last}", complete=False)
        rows = db.execute(
            "SELECT seq, project, kind, number FROM events WHERE seq > ? ORDER BY seq", (int(seq),)
        ).fetchall()
        return Changes(
            cursor=f"{self._db_id}:{rows[-1][0] if rows else int(seq)}",
            projects=frozenset(project for _, project, _, _ in rows),
            commented=frozenset(number for _, _, kind, number in rows if kind == "comment"),
        )


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _ref(db: sqlite3.Connection, project: str, ref: str) -> str | None:
    row = db.execute("SELECT sha FROM refs WHERE project = ? AND ref = ?", (project, ref))
    found = row.fetchone()
    return None if found is None else str(found[0])


def _move_ref(db: sqlite3.Connection, project: str, ref: str, new: str, old: str | None) -> None:
    """Record a ref the forge moved from ``old`` (None: made it), unless the push log has
    already brought a later value: the hook saw that push, the forge's own write it did not."""
    db.execute(
        "INSERT INTO refs VALUES (?, ?, ?) ON CONFLICT (project, ref)"
        " DO UPDATE SET sha = excluded.sha WHERE refs.sha = ?",
        (project, ref, new, old),
    )


def _stamp(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    mtime, count = value.split()
    return int(mtime), int(count)


def _event(db: sqlite3.Connection, project: str, kind: str, number: int | None = None) -> None:
    db.execute(
        "INSERT INTO events (project, kind, number) VALUES (?, ?, ?)", (project, kind, number)
    )


def _take_push(db: sqlite3.Connection, line: str) -> None:
    """One hook line, ``<project> <old> <new> <ref>``: the ref's new value and an event."""
    parts = line.split(" ", 3)
    if len(parts) != 4:
        return  # not a line the hook wrote
    project, _, new, ref = parts
    if new == ZERO:
        db.execute("DELETE FROM refs WHERE project = ? AND ref = ?", (project, ref))
    else:
        db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?)", (project, ref, new))
    _event(db, project, "push")


def _index(
    db: sqlite3.Connection, number: int, pr: PullRequest | None, info: os.stat_result
) -> None:
    """The row of record file ``number`` as read (``pr`` None: it is not a readable record)."""
    fields = (pr.project, pr.state, pr.branch, json.dumps(asdict(pr))) if pr else (None,) * 4
    db.execute(
        "INSERT OR REPLACE INTO prs VALUES (?, ?, ?, ?, ?, ?, ?)",
        (number, *fields, info.st_mtime_ns, info.st_size),
    )


def _thread(path: Path, strict: bool) -> list[Comment]:
    """The comments of one thread file; an unreadable one is an error when ``strict``."""
    if not path.is_file():
        return []
    try:
        return [Comment(**record) for record in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError) as exc:
        if strict:
            raise ForgeError(f"{path}: not a readable comment thread") from exc
        return []
