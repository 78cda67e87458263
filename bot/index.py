"""The static index tree's writers: publish, refresh and rebuild, each atomic as a whole.

Pages are rendered by ``bot.index_pages`` and checked by ``bot.index_verify``. Over the ~500
lines a module here aims for: the three writers, the root pages' splice and the journal that
finishes a write a crash interrupted share one lock and one set of rules about what may exist
before what; apart, each would reach into the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    NormalizedName,
    canonicalize_name,
)
from packaging.version import Version

from bot import dists
from bot.errors import DistributionError, PublishError
from bot.fsutil import CHUNK, atomic_target, atomic_write_bytes, file_digest, sync_filesystem
from bot.index_pages import (
    _ROOT_HTML_PREFIX,
    _ROOT_HTML_SUFFIX,
    _ROOT_JSON_PREFIX,
    _ROOT_JSON_SUFFIX,
    API_VERSION,
    DELETED_UPSTREAM,
    PROVENANCE_KEY,
    PROVENANCE_SUFFIX,
    IndexedFile,
    UpstreamEntry,
    _Dist,
    _json_bytes,
    _Lines,
    _our_html_attributes,
    _our_paths,
    _project_html,
    _project_name,
    _root_html_key,
    _root_html_line,
    _root_json_key,
    _root_json_line,
    _root_pages,
    _sha256_bytes,
    _versions,
    format_upload_time,
    propagate_yanks,
)
from bot.typed import Mismatch, as_dict, as_list, as_str

try:  # POSIX only; elsewhere publishes are not serialised between processes.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]


_LOCK_NAME = ".index.lock"


@dataclass(frozen=True)
class _Wheel:
    """A validated input wheel: where it is, its digest, and its core metadata bytes."""

    path: Path
    filename: str
    version: Version
    sha256: str
    size: int
    metadata: bytes
    requires_python: str | None


def publish(
    root: Path,
    project: str,
    files: Sequence[Path],
    *,
    now: datetime | None = None,
    provenance: Mapping[str, bytes] | None = None,
) -> list[IndexedFile]:
    """Add wheels to `project`, rewriting only its pages and the root list; returns entries.

    ``provenance`` maps a wheel's filename to its signed provenance document, written beside
    the wheel before any page links it.
    """
    name = _project_name(project)
    if not files:
        raise PublishError(f"nothing to publish for {name}")
    stamp = format_upload_time(now if now is not None else datetime.now(UTC))
    files_dir = root / "files" / name
    with _locked(root):
        mine, theirs = _read_page(root, name)
        listed = {entry.filename: entry for entry in mine}
        # Validate everything before the first write, so an error leaves the tree untouched.
        wanted: dict[str, _Wheel] = {}
        for path in files:
            wheel = _inspect_wheel(path, name)
            earlier = wanted.get(wheel.filename)
            if earlier is not None:
                if earlier.sha256 != wheel.sha256:
                    raise PublishError(f"{wheel.filename} is given twice with different content")
                continue
            dest = files_dir / wheel.filename
            known = listed.get(wheel.filename)
            current: str | None
            if dest.exists():
                current = _digest(dest)[0]
            else:
                current = known.sha256 if known is not None else None
            # Published files are immutable (DESIGN "Trust rules"): same bytes is a no-op.
            if current is not None and current != wheel.sha256:
                raise PublishError(f"{wheel.filename} is already published with other content")
            wanted[wheel.filename] = wheel

        result: list[IndexedFile] = []
        _begin(root, {name: list(wanted)})  # before the first write: see _recover
        for wheel in wanted.values():
            dest = files_dir / wheel.filename
            if not dest.exists():
                _copy_atomic(wheel.path, dest, wheel.sha256)
            # PEP 658: the metadata file sits at the file's URL plus ".metadata".
            _write_if_changed(_metadata_path(dest), wheel.metadata)
            signed = (provenance or {}).get(wheel.filename)
            if signed is not None:
                _write_if_changed(dest.with_name(dest.name + PROVENANCE_SUFFIX), signed)
            entry = listed.get(wheel.filename)
            if entry is None:
                entry = IndexedFile(
                    filename=wheel.filename,
                    sha256=wheel.sha256,
                    size=wheel.size,
                    requires_python=wheel.requires_python,
                    upload_time=stamp,
                    metadata_sha256=_sha256_bytes(wheel.metadata),
                    provenance=signed is not None,
                )
                listed[wheel.filename] = entry
            elif signed is not None and not entry.provenance:
                entry = replace(entry, provenance=True)
                listed[wheel.filename] = entry
            result.append(entry)
        # Files first, then pages: a page never links to a file that is not there yet.
        new_project = not (root / "simple" / name / "index.json").exists()
        _write_project_pages(
            root,
            name,
            propagate_yanks(list(listed.values()), theirs) if theirs else list(listed.values()),
            theirs,
        )
        if new_project:
            _write_root_pages(root, adding=name)
        _end(root)
    return result


def project_files(root: Path, project: str) -> list[IndexedFile]:
    """Our files on `project`'s page now, sorted by filename ([] when it has no page)."""
    return _read_page(root, _project_name(project))[0]


def upstream_files(root: Path, project: str) -> list[UpstreamEntry]:
    """Upstream's files as `project`'s page lists them now (refreshed by `refresh`)."""
    return _read_page(root, _project_name(project))[1]


def _read_page(root: Path, name: NormalizedName) -> tuple[list[IndexedFile], list[UpstreamEntry]]:
    return _read_page_if_any(root, name) or ([], [])


def _read_page_if_any(
    root: Path, name: NormalizedName
) -> tuple[list[IndexedFile], list[UpstreamEntry]] | None:
    """Our files and upstream's on the project's page, or None when it has no page yet."""
    page = root / "simple" / name / "index.json"
    try:
        raw = page.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise PublishError(f"cannot read {page}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise PublishError(f"{page} is not valid JSON: {exc}") from exc
    where = f"simple/{name}/index.json"
    ours: list[IndexedFile] = []
    theirs: list[UpstreamEntry] = []
    try:
        for i, item in enumerate(as_list(as_dict(data, where).get("files"), f"{where}: files")):
            at = f"{where}: files[{i}]"
            # Our files are linked relative to the page; upstream's by upstream's absolute URL.
            url = as_dict(item, at).get("url")
            if isinstance(url, str) and "://" in url:
                theirs.append(UpstreamEntry.from_json(item, at))
            else:
                ours.append(IndexedFile.from_json(item, at))
    except Mismatch as exc:
        raise PublishError(str(exc)) from exc
    return sorted(ours, key=lambda e: e.filename), sorted(theirs, key=lambda e: e.filename)


def refresh(
    root: Path, pages: Mapping[str, Sequence[_Dist]], gone: Iterable[str] = ()
) -> list[str]:
    """Bring upstream's files (and their yanks) onto the pages of these projects.

    Called with the pages the watch fetched anew, so a tick where upstream did not change
    rewrites nothing; and with the projects whose page upstream no longer has (``gone``: a
    404 where there was a page), whose wheels of ours are then yanked as for a deleted
    release, on the pages we already have. Writes the root pages once, whatever the number
    of projects. Returns a line for each of our files whose yank state changed.
    """
    said: list[str] = []
    missing = {_project_name(project) for project in gone} - set(map(_project_name, pages))
    missing = {name for name in missing if _gone_news(root, name)}
    if not pages and not missing:
        return said
    wanted: dict[str, Sequence[_Dist]] = {**pages, **{name: () for name in missing}}
    with _locked(root):
        _begin(root, {_project_name(project): [] for project in wanted})
        created = False
        for project, dists in wanted.items():
            name = _project_name(project)
            page = _read_page_if_any(root, name)
            ours = page[0] if page is not None else []
            theirs = [UpstreamEntry.from_dist(d) for d in dists]
            updated = propagate_yanks(ours, theirs)
            for before, after in zip(ours, updated, strict=True):
                if before.yanked != after.yanked:
                    said.append(
                        f"unyanked {after.filename} (upstream un-yanked it)"
                        if after.yanked is None
                        else f"yanked {after.filename}: {after.yanked or 'yanked upstream'}"
                    )
            created |= page is None
            _write_project_pages(root, name, updated, theirs, durable=False, new=page is None)
        if created:
            _write_root_pages(root, durable=False)
        _end(root, synced=True)
    return said


def _gone_news(root: Path, name: NormalizedName) -> bool:
    """Whether our page of a project deleted upstream still shows it as there."""
    page = _read_page_if_any(root, name)
    if page is None:
        return False
    ours, theirs = page
    return bool(theirs) or propagate_yanks(ours, []) != ours


def rebuild(root: Path) -> int:
    """Rewrite every page from the per-project JSON; returns the number of projects.

    simple/<name>/index.json, written only by `publish`, is the source of truth: a file in
    files/ that no index.json records is never listed (nothing reaches the index unless it was
    published, DESIGN "Trust rules"). Such files are left alone; `stray_files` reports them.
    """
    with _locked(root):
        names = _recorded_projects(root)
        # Plan every project before writing any, so a bad file leaves the tree as it was.
        plans = {name: _plan_rebuild(root, name) for name in names}
        _begin(root, {name: [] for name in plans})
        for name, (entries, metadata_files) in plans.items():
            for path, data in metadata_files:
                _write_if_changed(path, data, durable=False)
            _write_project_pages(root, name, entries, upstream_files(root, name), durable=False)
        _write_root_pages(root, durable=False)
        _end(root, synced=True)
    return len(plans)


def stray_files(root: Path) -> list[Path]:
    """Files under files/ that no project's index.json records (nor their .metadata), sorted.

    They are never listed by `rebuild` or served as part of the index pages; this only reports
    them. Dot-files (temporary files of an interrupted write) are not counted.
    """
    files = root / "files"
    if not files.is_dir():
        return []
    with _locked(root):
        recorded: set[Path] = set()
        for name in _recorded_projects(root):
            for entry in project_files(root, name):
                path = files / name / entry.filename
                recorded.update((path, _metadata_path(path)))
        found = [
            path
            for path in files.rglob("*")
            if not any(part.startswith(".") for part in path.relative_to(files).parts)
            and (path.is_file() or path.is_symlink())
            and path not in recorded
        ]
    return sorted(found)


def _recorded_projects(root: Path) -> list[NormalizedName]:
    """Projects with a simple/<name>/index.json, sorted; a non-normalized name is an error."""
    simple = root / "simple"
    names: list[NormalizedName] = []
    if not simple.is_dir():
        return names
    for child in simple.iterdir():
        if not child.is_dir() or child.name.startswith("."):
            continue
        if not dists.is_project_name(child.name) or canonicalize_name(child.name) != child.name:
            raise PublishError(f"simple/{child.name} is not a normalized project name")
        if (child / "index.json").is_file():
            names.append(canonicalize_name(child.name))
    return sorted(names)


def _plan_rebuild(
    root: Path, name: NormalizedName
) -> tuple[list[IndexedFile], list[tuple[Path, bytes]]]:
    """Check one project's recorded files and work out its entries without writing anything."""
    files_dir = root / "files" / name
    entries: list[IndexedFile] = []
    metadata_files: list[tuple[Path, bytes]] = []
    for known in project_files(root, name):
        filename = known.filename
        if not dists.is_bare_filename(filename):
            raise PublishError(f"simple/{name}/index.json lists {filename!r}: not a bare file name")
        path = files_dir / filename
        if not path.is_file():
            raise PublishError(f"files/{name}/{filename} is listed but missing")
        wheel = _inspect_wheel(path, name)
        if known.sha256 != wheel.sha256:
            raise PublishError(f"files/{name}/{filename} differs from its listed sha256")
        metadata_sha256 = _sha256_bytes(wheel.metadata)
        if known.metadata_sha256 != metadata_sha256:
            known = replace(known, metadata_sha256=metadata_sha256)
        entries.append(known)
        metadata_files.append((_metadata_path(path), wheel.metadata))
    return entries, metadata_files


def _inspect_wheel(path: Path, project: NormalizedName) -> _Wheel:
    """Check that `path` is a wheel of `project` and pull out its core metadata."""
    filename = path.name
    try:
        dists.wheel_filename(filename, project)
        if not path.is_file():
            raise PublishError(f"{path} is not a file")
        version, metadata = dists.check_wheel(path, project)
        headers = dists.metadata_headers(metadata, filename)
    except DistributionError as exc:
        raise PublishError(str(exc)) from exc
    sha256, size = _digest(path)
    requires_python = headers.get("Requires-Python")
    if requires_python is not None:
        requires_python = requires_python.strip()
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier as exc:
            raise PublishError(f"{filename}: invalid Requires-Python {requires_python!r}") from exc
    return _Wheel(path, filename, version, sha256, size, metadata, requires_python or None)


def _read_metadata(path: Path) -> bytes:
    """The wheel's METADATA, as publish took it (files/<project>/<wheel>)."""
    try:
        return dists.wheel_metadata(path, path.parent.name)
    except DistributionError as exc:
        raise PublishError(str(exc)) from exc


def _metadata_path(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + ".metadata")


def _write_project_pages(
    root: Path,
    name: str,
    entries: Sequence[IndexedFile],
    upstream: Sequence[UpstreamEntry] = (),
    *,
    durable: bool = True,
    new: bool = False,
) -> None:
    """Write a project's JSON and HTML pages. ``new``: it has none yet, so nothing to compare."""
    # A file is ours or upstream's, never both: ours stays (published files never change).
    mine = {entry.filename for entry in entries}
    merged: list[tuple[str, dict[str, Any], list[str]]] = [
        (e.filename, e.to_json(name), _our_html_attributes(name, e)) for e in entries
    ]
    merged += [
        (u.filename, u.to_json(), u.html_attributes()) for u in upstream if u.filename not in mine
    ]
    merged.sort(key=lambda item: item[0])
    page_dir = root / "simple" / name
    document: dict[str, Any] = {
        "meta": {"api-version": API_VERSION},
        "name": name,
        "files": [entry for _, entry, _ in merged],
        "versions": _versions([filename for filename, _, _ in merged]),  # PEP 700
    }
    # index.json is the source of truth, so it goes first; index.html renders the same data.
    write = _write if new else _write_if_changed
    write(page_dir / "index.json", _json_bytes(document), durable=durable)
    write(page_dir / "index.html", _project_html(name, merged), durable=durable)


def _write_root_pages(root: Path, adding: str | None = None, *, durable: bool = True) -> None:
    simple = root / "simple"
    if adding is not None:
        spliced = _root_pages_adding(simple, adding)
        if spliced is not None:
            if spliced:  # changed, surely: no need to read them again to compare
                document, page = spliced
                _write(simple / "index.json", document, durable=durable)
                _write(simple / "index.html", page, durable=durable)
            return
    # The root lists every project that has a page; publish() writes that page first.
    names: list[str] = []
    if simple.is_dir():
        names = sorted(
            child.name
            for child in simple.iterdir()
            if child.is_dir() and (child / "index.json").is_file()
        )
    document, page = _root_pages(names)
    _write_if_changed(simple / "index.json", document, durable=durable)
    _write_if_changed(simple / "index.html", page, durable=durable)


def _root_pages_adding(simple: Path, name: str) -> tuple[bytes, bytes] | tuple[()] | None:
    """The root pages with `name` spliced in; () when listed already; None when not ours.

    None (the root pages are missing, or not as `_root_pages` writes them, e.g. from an
    older wheelstock, or the two disagree where the name goes) makes the caller list the
    project directories instead. Reads only the lines a binary search visits.
    """
    try:
        document = (simple / "index.json").read_bytes()
        page = (simple / "index.html").read_bytes()
    except OSError:
        return None
    if not (
        document.startswith(_ROOT_JSON_PREFIX)
        and document.endswith(_ROOT_JSON_SUFFIX)
        and page.startswith(_ROOT_HTML_PREFIX)
        and page.endswith(_ROOT_HTML_SUFFIX)
    ):
        return None
    json_lines = _Lines(document, len(_ROOT_JSON_PREFIX), len(document) - len(_ROOT_JSON_SUFFIX))
    html_lines = _Lines(page, len(_ROOT_HTML_PREFIX), len(page) - len(_ROOT_HTML_SUFFIX))
    try:
        json_at = json_lines.bisect(name, _root_json_key)
        html_at = html_lines.bisect(name, _root_html_key)
        around = json_lines.around(json_at, _root_json_key)
        if around != html_lines.around(html_at, _root_html_key):
            return None
    except (ValueError, KeyError, TypeError):
        return None
    if json_lines.count() != html_lines.count():
        return None
    if around[1] == name:
        return ()
    # One join each, so the megabytes before and after are copied once (memoryview: no slices).
    entry, json_view, html_view = _root_json_line(name), memoryview(document), memoryview(page)
    parts: list[bytes | memoryview]
    if json_at < json_lines.end:
        parts = [json_view[:json_at], entry, b",\n", json_view[json_at:]]
    elif json_at > json_lines.start:  # after the last entry, which now needs its comma
        parts = [json_view[: json_at - 1], b",\n", entry, b"\n", json_view[json_at:]]
    else:
        parts = [json_view[:json_at], entry, b"\n", json_view[json_at:]]
    link: list[bytes | memoryview] = [
        html_view[:html_at],
        _root_html_line(name),
        b"\n",
        html_view[html_at:],
    ]
    return b"".join(parts), b"".join(link)


def _write_if_changed(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Atomically write `data`, skipping identical content so mtimes (and ETags) stay put."""
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    _write(path, data, durable=durable)


def _write(path: Path, data: bytes, *, durable: bool = True) -> None:
    try:
        atomic_write_bytes(path, data, durable=durable)
    except OSError as exc:
        raise PublishError(f"cannot write {path}: {exc.strerror or exc}") from exc


def _copy_atomic(source: Path, dest: Path, expected_sha256: str) -> None:
    """Copy a wheel into the tree atomically, re-checking its digest on the way."""
    digest = hashlib.sha256()
    with source.open("rb") as src, atomic_target(dest) as handle:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            handle.write(chunk)
        if digest.hexdigest() != expected_sha256:
            raise PublishError(f"{source.name} changed while it was being published")


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise writers (cron tick vs. a manual publish) on a lock file in root."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / _LOCK_NAME).open("a+b") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            # The holder before us may have died mid-write (flock ends with the process).
            _recover(root)
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _digest(path: Path) -> tuple[str, int]:
    try:
        return file_digest(path)
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc.strerror}") from exc


# --- crash recovery: a journal of the write in progress ------------------------------------

# One publish writes several files (wheel, .metadata, provenance, two project pages, two root
# pages): each is atomic (temp file and rename), the set is not. So a write first records what
# it changes in a journal and removes the journal when it is done. A writer killed in between
# (SIGKILL, OOM, power loss) leaves the journal behind, and whoever holds the lock next
# finishes the write, as SQLite does with a hot journal: index.json, the source of truth, was
# replaced whole or not at all, so what it lists stays and its twin and the root pages are
# rendered again from it, while the files the write added that it does not list go.
_JOURNAL_NAME = ".index.journal"


def _begin(root: Path, projects: Mapping[NormalizedName, Sequence[str]]) -> None:
    """Record, before the first write, the projects a write changes and the files it adds."""
    if not projects:
        return
    document = {"projects": {name: sorted(files) for name, files in sorted(projects.items())}}
    with atomic_target(root / _JOURNAL_NAME) as handle:
        handle.write(_json_bytes(document))


def _end(root: Path, *, synced: bool = False) -> None:
    """Close a write. ``synced``: its files were written without fsync, so sync them first.

    A bulk write (refresh, rebuild, recovery: a page per project) writes each file atomically
    but not durably, and makes them all durable at once here, before the journal goes: a
    power cut before that point leaves the journal, and the next writer renders every page it
    names again. The journal's removal itself is not made durable on purpose: finishing a
    write that was complete changes nothing.
    """
    if synced:
        sync_filesystem(root)
    (root / _JOURNAL_NAME).unlink(missing_ok=True)


def _recover(root: Path) -> None:
    """Finish the write a journal records (called with the lock held); no journal, no-op."""
    journal = root / _JOURNAL_NAME
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PublishError(f"cannot read {journal}: {exc.strerror}") from exc
    for name, added in _read_journal(raw, journal).items():
        try:
            ours, theirs = _read_page(root, name)
        except PublishError as exc:
            raise PublishError(f"cannot finish the write {journal} records: {exc}") from exc
        kept = {path for entry in ours for path in _our_paths(entry)}
        files_dir = root / "files" / name
        page_dir = root / "simple" / name
        for filename in added:
            for path in (filename, filename + ".metadata", filename + PROVENANCE_SUFFIX):
                if path not in kept:
                    (files_dir / path).unlink(missing_ok=True)
        _remove_temp_files(files_dir)
        _remove_temp_files(page_dir)
        if (page_dir / "index.json").is_file():
            _write_project_pages(root, name, ours, theirs, durable=False)
        else:
            for directory in (files_dir, page_dir):
                with contextlib.suppress(OSError):
                    directory.rmdir()  # only if empty: the project the write was creating
    if (root / "simple").is_dir():
        _remove_temp_files(root / "simple")
        _write_root_pages(root, durable=False)
    _remove_temp_files(root)
    _end(root, synced=True)


def _read_journal(raw: bytes, journal: Path) -> dict[NormalizedName, list[str]]:
    # atomic_target writes it whole, so one that does not parse is not one we wrote.
    plan: dict[NormalizedName, list[str]] = {}
    try:
        projects = as_dict(as_dict(json.loads(raw), "journal").get("projects"), "projects")
        for key, files in projects.items():
            name = _project_name(key)
            added = [as_str(f, f"projects.{key}") for f in as_list(files, f"projects.{key}")]
            if name != key or not all(map(dists.is_bare_filename, added)):
                raise PublishError(f"projects.{key}: not a project name and bare file names")
            plan[name] = added
    except (ValueError, PublishError) as exc:  # not JSON, or a typed.Mismatch
        raise PublishError(f"{journal} is not a journal wheelstock wrote: {exc}") from exc
    return plan


def _remove_temp_files(directory: Path) -> None:
    """Remove what fsutil.atomic_target leaves when its process is killed (no writer is live)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for child in directory.iterdir():
            if child.name.startswith(".") and child.name.endswith(".tmp") and child.is_file():
                child.unlink(missing_ok=True)


# --- verify: the tree is what its pages say --------------------------------------------------


# The page model is bot.index_pages'; these names are the index's public face too.
__all__ = [
    "API_VERSION",
    "DELETED_UPSTREAM",
    "PROVENANCE_KEY",
    "PROVENANCE_SUFFIX",
    "IndexedFile",
    "UpstreamEntry",
    "format_upload_time",
    "project_files",
    "propagate_yanks",
    "publish",
    "rebuild",
    "refresh",
    "stray_files",
    "upstream_files",
]
