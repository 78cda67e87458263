"""The static index tree: PEP 503/691 pages, PEP 658 metadata files, atomic incremental writes."""

from __future__ import annotations

import contextlib
import email.parser
import functools
import hashlib
import html
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bot.errors import PublishError
from bot.fsutil import CHUNK, atomic_target, atomic_write_bytes, file_digest, sync_filesystem

try:  # POSIX only; elsewhere publishes are not serialised between processes.
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

# PEP 700 is API version 1.1 (versions, size, upload-time); PEP 629 puts it in every page.
API_VERSION = "1.1"

# PEP 508 project names; checked before a name becomes a directory, so "../x" cannot escape root.
_VALID_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# A METADATA file is a few KiB; refuse to inflate anything absurd out of an untrusted zip.
_MAX_METADATA_BYTES = 16 * 1024 * 1024
_LOCK_NAME = ".index.lock"
# The JSON key and HTML attribute that link a file's signed provenance (documented, ours).
PROVENANCE_KEY = "wheelstock-provenance"
PROVENANCE_SUFFIX = ".provenance.json"


@dataclass(frozen=True)
class IndexedFile:
    """One file as the index lists it (PEP 691 file entry, PEP 700 fields)."""

    filename: str
    sha256: str
    size: int
    requires_python: str | None
    upload_time: str
    metadata_sha256: str | None
    yanked: str | None = None
    # A signed provenance document sits beside the file (<file>.provenance.json).
    provenance: bool = False

    def to_json(self, project: str) -> dict[str, Any]:
        """The PEP 691 JSON file entry, keys in a fixed order so pages are byte-stable."""
        entry: dict[str, Any] = {
            "filename": self.filename,
            "url": _file_url(project, self.filename),
            "hashes": {"sha256": self.sha256},
        }
        if self.requires_python is not None:
            entry["requires-python"] = self.requires_python
        entry["size"] = self.size
        entry["upload-time"] = self.upload_time
        # PEP 714: only the new key in JSON; pip 22.3-23.1 crashes on "dist-info-metadata" there.
        if self.metadata_sha256 is not None:
            entry["core-metadata"] = {"sha256": self.metadata_sha256}
        if self.yanked is not None:
            # PEP 592/691: a reason must be non-empty, so an empty reason is plain `true`.
            entry["yanked"] = self.yanked or True
        if self.provenance:
            # Our own key, not PEP 740's "provenance": that one must point to a PEP 740
            # attestation bundle, and ours is a DSSE envelope signed with the index's key.
            entry[PROVENANCE_KEY] = _file_url(project, self.filename + PROVENANCE_SUFFIX)
        return entry

    @classmethod
    def from_json(cls, data: object, where: str) -> IndexedFile:
        """Read a PEP 691 file entry back; `where` names the entry in error messages."""
        obj = _as_dict(data, where)
        filename = _as_str(obj.get("filename"), f"{where}.filename")
        hashes = _as_dict(obj.get("hashes"), f"{where}.hashes")
        sha256 = _as_sha256(hashes.get("sha256"), f"{where}.hashes.sha256")
        size = obj.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise PublishError(f"{where}.size: expected a non-negative integer")
        requires_python = obj.get("requires-python")
        if requires_python is not None:
            requires_python = _as_str(requires_python, f"{where}.requires-python")
        upload_time = _as_str(obj.get("upload-time"), f"{where}.upload-time")
        metadata_sha256: str | None = None
        core = obj.get("core-metadata")
        if isinstance(core, dict):
            metadata_sha256 = _as_sha256(core.get("sha256"), f"{where}.core-metadata.sha256")
        yanked_raw = obj.get("yanked", False)
        if yanked_raw is True:
            yanked: str | None = ""
        elif yanked_raw is False:
            yanked = None
        else:
            yanked = _as_str(yanked_raw, f"{where}.yanked")
        provenance = isinstance(obj.get(PROVENANCE_KEY), str)
        return cls(
            filename,
            sha256,
            size,
            requires_python,
            upload_time,
            metadata_sha256,
            yanked,
            provenance,
        )


class _Dist(Protocol):
    """What the index needs of a file on upstream's page (bot.simple.DistFile has it)."""

    @property
    def filename(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def requires_python(self) -> str | None: ...
    @property
    def yanked(self) -> str | None: ...
    @property
    def upload_time(self) -> datetime | None: ...
    @property
    def size(self) -> int | None: ...
    @property
    def core_metadata(self) -> str | None: ...


@dataclass(frozen=True)
class UpstreamEntry:
    """A file upstream lists for an enrolled project, shown on our page with upstream's URL.

    Our page is a superset of upstream's (DESIGN, index rules): uv's first-index strategy then
    never hides a release, an sdist or a Python we built nothing for.
    """

    filename: str
    url: str  # absolute, upstream's own
    sha256: str | None
    requires_python: str | None
    size: int | None
    upload_time: str | None
    core_metadata: str | None  # "sha256=<hex>" or "true", as upstream gave it
    yanked: str | None

    @classmethod
    def from_dist(cls, dist: _Dist) -> UpstreamEntry:
        return cls(
            filename=dist.filename,
            url=dist.url,
            sha256=dist.sha256,
            requires_python=dist.requires_python,
            size=dist.size,
            upload_time=None if dist.upload_time is None else format_upload_time(dist.upload_time),
            core_metadata=dist.core_metadata,
            yanked=dist.yanked,
        )

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "filename": self.filename,
            "url": self.url,
            "hashes": {} if self.sha256 is None else {"sha256": self.sha256},
        }
        if self.requires_python is not None:
            entry["requires-python"] = self.requires_python
        if self.size is not None:
            entry["size"] = self.size
        if self.upload_time is not None:
            entry["upload-time"] = self.upload_time
        if self.core_metadata is not None:
            digest = self.core_metadata.removeprefix("sha256=")
            entry["core-metadata"] = {"sha256": digest} if _SHA256_HEX.match(digest) else True
        if self.yanked is not None:
            entry["yanked"] = self.yanked or True
        return entry

    @classmethod
    def from_json(cls, data: object, where: str) -> UpstreamEntry:
        obj = _as_dict(data, where)
        hashes = _as_dict(obj.get("hashes", {}), f"{where}.hashes")
        sha256 = hashes.get("sha256")
        size = obj.get("size")
        core = obj.get("core-metadata")
        core_metadata = None
        if isinstance(core, dict) and isinstance(core.get("sha256"), str):
            core_metadata = f"sha256={core['sha256']}"
        elif core is True:
            core_metadata = "true"
        yanked_raw = obj.get("yanked", False)
        yanked = "" if yanked_raw is True else None if yanked_raw is False else str(yanked_raw)
        upload_time = obj.get("upload-time")
        requires_python = obj.get("requires-python")
        return cls(
            filename=_as_str(obj.get("filename"), f"{where}.filename"),
            url=_as_str(obj.get("url"), f"{where}.url"),
            sha256=sha256 if isinstance(sha256, str) else None,
            requires_python=requires_python if isinstance(requires_python, str) else None,
            size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            upload_time=upload_time if isinstance(upload_time, str) else None,
            core_metadata=core_metadata,
            yanked=yanked,
        )

    def html_attributes(self) -> list[str]:
        href = self.url if self.sha256 is None else f"{self.url}#sha256={self.sha256}"
        attrs = [f'href="{_escape(href)}"']
        if self.requires_python is not None:
            attrs.append(f'data-requires-python="{_escape(self.requires_python)}"')
        if self.core_metadata is not None:
            value = _escape(self.core_metadata)
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')
        if self.yanked is not None:
            attrs.append(f'data-yanked="{_escape(self.yanked)}"')
        return attrs


_HTML_SPECIAL = re.compile(r"[&<>\"']")


def _escape(text: str) -> str:
    """html.escape, quote=True; most values need none, and a search is a fifth of the cost."""
    return html.escape(text) if _HTML_SPECIAL.search(text) else text


DELETED_UPSTREAM = "deleted upstream"


def _version_of(filename: str) -> Version | None:
    """The version a wheel or sdist filename names, None for a name that is neither."""
    if filename.endswith(".whl"):
        # name-version(-build)?-python-abi-platform.whl: the name never holds "-" (PEP 427).
        parts = filename[:-4].split("-")
        text = parts[1] if len(parts) in (5, 6) and parts[0] else None
    else:
        # name-version.tar.gz or .zip, the name possibly with "-" in older sdists (PEP 625).
        stem = next((filename[: -len(s)] for s in _SDIST_SUFFIXES if filename.endswith(s)), "")
        name, dash, text = stem.rpartition("-")
        text = text if dash and name else None
    return None if text is None else _parse_version(text)


_SDIST_SUFFIXES = (".tar.gz", ".zip")


@functools.lru_cache(maxsize=4096)
def _parse_version(text: str) -> Version | None:
    # A page names each version twice or more (sdist, wheels): parse each string once.
    try:
        return Version(text)
    except InvalidVersion:
        return None


def propagate_yanks(
    ours: Sequence[IndexedFile], upstream: Sequence[UpstreamEntry]
) -> list[IndexedFile]:
    """Our files with upstream's yank state of their release (PEP 592), never deleted.

    A wheel of ours is built from its release's sdist, so it is yanked when upstream yanks
    that sdist (or the whole release), with upstream's reason; un-yanked when upstream
    un-yanks; and yanked "deleted upstream" when the release is gone, so that a user's hash
    pin still resolves, to a file that says why.
    """
    if not ours:
        return []
    by_version: dict[Version, list[UpstreamEntry]] = {}
    for entry in upstream:
        version = _version_of(entry.filename)
        if version is not None:
            by_version.setdefault(version, []).append(entry)
    result = []
    for mine in ours:
        version = _version_of(mine.filename)
        if version is None:
            result.append(mine)
            continue
        files = by_version.get(version, [])
        sdists = [f for f in files if not f.filename.endswith(".whl")]
        yanked: str | None
        if any(f.yanked is None for f in sdists):
            yanked = None
        elif sdists:
            yanked = next(f.yanked for f in sdists if f.yanked is not None)
        elif files and all(f.yanked is not None for f in files):
            yanked = next(f.yanked for f in files if f.yanked is not None)
        else:
            yanked = DELETED_UPSTREAM
        result.append(replace(mine, yanked=yanked))
    return result


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
    entries = _as_list(_as_dict(data, where).get("files"), f"{where}: files")
    ours: list[IndexedFile] = []
    theirs: list[UpstreamEntry] = []
    for i, item in enumerate(entries):
        at = f"{where}: files[{i}]"
        # Our files are linked relative to the page; upstream's by upstream's absolute URL.
        url = _as_dict(item, at).get("url")
        if isinstance(url, str) and "://" in url:
            theirs.append(UpstreamEntry.from_json(item, at))
        else:
            ours.append(IndexedFile.from_json(item, at))
    return sorted(ours, key=lambda e: e.filename), sorted(theirs, key=lambda e: e.filename)


def refresh(root: Path, pages: Mapping[str, Sequence[_Dist]]) -> list[str]:
    """Bring upstream's files (and their yanks) onto the pages of these projects.

    Called with the pages the watch fetched anew, so a tick where upstream did not change
    rewrites nothing. Writes the root pages once, whatever the number of projects. Returns a
    line for each of our files whose yank state changed.
    """
    said: list[str] = []
    with _locked(root):
        _begin(root, {_project_name(project): [] for project in pages})
        created = False
        for project, dists in pages.items():
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
        if not _VALID_NAME.match(child.name) or canonicalize_name(child.name) != child.name:
            raise PublishError(f"simple/{child.name} is not a normalized project name")
        if (child / "index.json").is_file():
            names.append(canonicalize_name(child.name))
    return sorted(names)


def format_upload_time(moment: datetime) -> str:
    """PEP 700 upload-time: UTC, yyyy-mm-ddThh:mm:ss.ffffffZ (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat, not strftime: a third of the time, for each of 250,000 files in a full write.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _plan_rebuild(
    root: Path, name: NormalizedName
) -> tuple[list[IndexedFile], list[tuple[Path, bytes]]]:
    """Check one project's recorded files and work out its entries without writing anything."""
    files_dir = root / "files" / name
    entries: list[IndexedFile] = []
    metadata_files: list[tuple[Path, bytes]] = []
    for known in project_files(root, name):
        filename = known.filename
        if "/" in filename or "\\" in filename or filename.startswith("."):
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
        wheel_name, version, _build, _tags = parse_wheel_filename(filename)
    except InvalidWheelFilename as exc:
        raise PublishError(f"{filename} is not a wheel filename: {exc}") from exc
    if wheel_name != project:
        raise PublishError(f"{filename} is a wheel of {wheel_name}, not of {project}")
    if not path.is_file():
        raise PublishError(f"{path} is not a file")
    sha256, size = _digest(path)
    metadata = _read_metadata(path)
    headers = _parse_metadata(metadata, filename)
    meta_name = headers.get("Name")
    meta_version = headers.get("Version")
    if meta_name is None or canonicalize_name(meta_name) != project:
        raise PublishError(f"{filename}: METADATA names {meta_name!r}, not {project}")
    try:
        if meta_version is None or Version(meta_version) != version:
            raise PublishError(f"{filename}: METADATA has version {meta_version!r}, not {version}")
    except InvalidVersion as exc:
        raise PublishError(f"{filename}: METADATA has an invalid version {meta_version!r}") from exc
    requires_python = headers.get("Requires-Python")
    if requires_python is not None:
        requires_python = requires_python.strip()
        try:
            SpecifierSet(requires_python)
        except InvalidSpecifier as exc:
            raise PublishError(f"{filename}: invalid Requires-Python {requires_python!r}") from exc
    return _Wheel(path, filename, version, sha256, size, metadata, requires_python or None)


def _read_metadata(path: Path) -> bytes:
    """The bytes of the wheel's single top-level `*.dist-info/METADATA` (PEP 427)."""
    try:
        with zipfile.ZipFile(path) as archive:
            candidates = [
                info
                for info in archive.infolist()
                if info.filename.count("/") == 1 and info.filename.endswith(".dist-info/METADATA")
            ]
            if len(candidates) != 1:
                raise PublishError(
                    f"{path.name} has {len(candidates)} .dist-info/METADATA files, expected one"
                )
            info = candidates[0]
            if info.file_size > _MAX_METADATA_BYTES:
                raise PublishError(f"{path.name}: METADATA is implausibly large")
            return archive.read(info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise PublishError(f"{path.name} is not a valid zip archive: {exc}") from exc
    except OSError as exc:
        raise PublishError(f"cannot read {path}: {exc}") from exc


def _parse_metadata(metadata: bytes, filename: str) -> Mapping[str, str]:
    """Parse METADATA headers (RFC 822 style, UTF-8 per the core metadata spec)."""
    try:
        text = metadata.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PublishError(f"{filename}: METADATA is not UTF-8") from exc
    message = email.parser.HeaderParser().parsestr(text)
    return {key: str(value) for key, value in message.items()}


def _project_name(project: str) -> NormalizedName:
    if not _VALID_NAME.match(project):
        raise PublishError(f"{project!r} is not a valid project name")
    return canonicalize_name(project)


def _file_url(project: str, filename: str) -> str:
    # Relative to /simple/<name>/, so the tree can be served from any host or sub-path.
    return f"../../files/{project}/{quote(filename)}"


def _metadata_path(wheel: Path) -> Path:
    return wheel.with_name(wheel.name + ".metadata")


def _versions(filenames: Sequence[str]) -> list[str]:
    found = {v for v in map(_version_of, filenames) if v is not None}
    return [str(version) for version in sorted(found)]


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


def _our_html_attributes(name: str, entry: IndexedFile) -> list[str]:
    href = f"{_file_url(name, entry.filename)}#sha256={entry.sha256}"
    attrs = [f'href="{_escape(href)}"']
    if entry.requires_python is not None:
        # PEP 503: "<" and ">" in the specifier must be HTML-escaped.
        attrs.append(f'data-requires-python="{_escape(entry.requires_python)}"')
    if entry.metadata_sha256 is not None:
        # PEP 714 name plus the PEP 658 name, which pip before 23.2 still reads in HTML.
        value = f"sha256={entry.metadata_sha256}"
        attrs.append(f'data-core-metadata="{value}"')
        attrs.append(f'data-dist-info-metadata="{value}"')
    if entry.yanked is not None:
        attrs.append(f'data-yanked="{_escape(entry.yanked)}"')  # PEP 592
    if entry.provenance:
        url = _file_url(name, entry.filename + PROVENANCE_SUFFIX)
        attrs.append(f'data-{PROVENANCE_KEY}="{_escape(url)}"')
    return attrs


def _project_html(name: str, entries: Sequence[tuple[str, dict[str, Any], list[str]]]) -> bytes:
    title = _escape(name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        f"    <title>Links for {title}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {title}</h1>",
    ]
    for filename, _, attrs in entries:
        lines.append(f"    <a {' '.join(attrs)}>{_escape(filename)}</a><br>")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


# The root pages hold one project per line, so adding a project is a splice into the bytes
# already written, found by a binary search over their lines: 25,000 names took 31 ms to encode
# as JSON and 68 ms to render as HTML for each new project's first wheel (benchmarks/index.py).
_ROOT_JSON_PREFIX = f'{{"meta":{{"api-version":"{API_VERSION}"}},"projects":[\n'.encode()
_ROOT_JSON_SUFFIX = b"]}\n"
_ROOT_HTML_PREFIX = "\n".join(
    [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        "    <title>Simple index</title>",
        "  </head>",
        "  <body>",
        "",
    ]
).encode()
_ROOT_HTML_SUFFIX = b"  </body>\n</html>\n"
_ROOT_HTML_LINE = re.compile(rb'    <a href="[^"]*/">([^<]*)</a><br>')


def _root_json_line(name: str) -> bytes:
    return b'{"name":' + json.dumps(name, ensure_ascii=False).encode() + b"}"


def _root_html_line(name: str) -> bytes:
    return f'    <a href="{quote(name)}/">{_escape(name)}</a><br>'.encode()


def _root_pages(names: Sequence[str]) -> tuple[bytes, bytes]:
    """The root JSON and HTML pages (PEP 691, PEP 503) listing `names`, in this order."""
    entries = b",\n".join(map(_root_json_line, names)) + (b"\n" if names else b"")
    links = b"".join(_root_html_line(name) + b"\n" for name in names)
    return (
        _ROOT_JSON_PREFIX + entries + _ROOT_JSON_SUFFIX,
        _ROOT_HTML_PREFIX + links + _ROOT_HTML_SUFFIX,
    )


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


def _root_json_key(line: bytes) -> str:
    entry = line.removesuffix(b",")
    name = json.loads(entry)["name"]
    if not isinstance(name, str) or entry != _root_json_line(name):
        raise ValueError(line)
    return name


def _root_html_key(line: bytes) -> str:
    match = _ROOT_HTML_LINE.fullmatch(line)
    name = html.unescape(match[1].decode()) if match else ""
    if line != _root_html_line(name):
        raise ValueError(line)
    return name


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


@dataclass(frozen=True)
class _Lines:
    """The whole lines of ``data[start:end]``, each ending in a newline, searched in place."""

    data: bytes
    start: int
    end: int

    def count(self) -> int:
        return self.data.count(b"\n", self.start, self.end)

    def _line(self, at: int) -> bytes:
        return self.data[at : self.data.index(b"\n", at, self.end)]

    def bisect(self, name: str, key: Callable[[bytes], str]) -> int:
        """The offset of the first line whose key is not below `name` (``end`` if none)."""
        lo, hi = self.start, self.end
        while lo < hi:
            newline = self.data.rfind(b"\n", lo, (lo + hi) // 2)
            line_start = lo if newline < 0 else newline + 1
            line = self._line(line_start)
            if key(line) < name:
                lo = line_start + len(line) + 1
            else:
                hi = line_start
        return lo

    def around(self, at: int, key: Callable[[bytes], str]) -> tuple[str | None, str | None]:
        """The keys of the line before offset `at` and of the line at it (None past an end)."""
        before = None
        if at > self.start:
            newline = self.data.rfind(b"\n", self.start, at - 1)
            before = key(self._line(self.start if newline < 0 else newline + 1))
        return before, key(self._line(at)) if at < self.end else None


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    # Compact: json's C encoder does not indent (indent=2 takes the pure-Python one, 4x slower
    # and twice the bytes on every page).
    return (json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


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


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _as_dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PublishError(f"{where}: expected an object")
    return value


def _as_list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise PublishError(f"{where}: expected a list")
    return value


def _as_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise PublishError(f"{where}: expected a string")
    return value


def _as_sha256(value: object, where: str) -> str:
    text = _as_str(value, where)
    if not _SHA256_HEX.match(text):
        raise PublishError(f"{where}: expected 64 lowercase hex digits")
    return text


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
        projects = _as_dict(_as_dict(json.loads(raw), "journal").get("projects"), "projects")
        for key, files in projects.items():
            name = _project_name(key)
            added = [_as_str(f, f"projects.{key}") for f in _as_list(files, f"projects.{key}")]
            if name != key or not all(map(_bare, added)):
                raise PublishError(f"projects.{key}: not a project name and bare file names")
            plan[name] = added
    except (ValueError, PublishError) as exc:
        raise PublishError(f"{journal} is not a journal wheelstock wrote: {exc}") from exc
    return plan


def _our_paths(entry: IndexedFile) -> tuple[str, ...]:
    """The names in files/<name>/ one of our entries accounts for: itself, PEP 658, provenance."""
    paths = (entry.filename, entry.filename + ".metadata")
    return (*paths, entry.filename + PROVENANCE_SUFFIX) if entry.provenance else paths


def _bare(filename: str) -> bool:
    return bool(filename) and "/" not in filename and "\\" not in filename and filename[0] != "."


def _remove_temp_files(directory: Path) -> None:
    """Remove what fsutil.atomic_target leaves when its process is killed (no writer is live)."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for child in directory.iterdir():
            if child.name.startswith(".") and child.name.endswith(".tmp") and child.is_file():
                child.unlink(missing_ok=True)


# --- verify: the tree is what its pages say --------------------------------------------------


@dataclass(frozen=True)
class TreeReport:
    """What `verify_tree` checked (project pages, files of ours) and one line per problem."""

    projects: int
    files: int
    problems: tuple[str, ...]


def verify(root: Path) -> list[str]:
    """One line per problem in the index tree at `root`; [] when it is consistent."""
    return list(verify_tree(root).problems)


def verify_tree(root: Path) -> TreeReport:
    """Check the tree (`wheelstock index verify`, DESIGN "Index rules").

    Every file of ours a page lists exists with its size and sha256, its .metadata is the
    wheel's METADATA (PEP 658) and its provenance is signed for it; every page parses and
    agrees with its twin (HTML vs JSON); the root pages list exactly the projects with a
    page; and nothing that no page lists sits in the tree (hidden names aside). Upstream's
    files (absolute URLs) are only checked for agreement between the pages.
    """
    if not root.is_dir():
        return TreeReport(0, 0, ())  # nothing published yet: an empty index is consistent
    # A reader takes the writers' lock too, but briefly. Without it, a publish seen mid-way
    # shows files it has not listed yet and twins that disagree; taking it also finishes a
    # write that died (_recover), so what is reported is what stays. Under the lock we only
    # list the tree and read the pages; hashing every file, the slow part, happens after, as
    # a listed file is immutable and never deleted (DESIGN "Trust rules"): a publish meanwhile
    # only adds files and pages this snapshot does not know. A tree we cannot write (a
    # read-only copy on a web host) has no writer to wait for.
    guard = _locked(root) if os.access(root, os.W_OK) else contextlib.nullcontext()
    with guard:
        tree = _tree_files(root)
        pages = {rel: _read_or_error(root / rel) for rel in tree if _is_page(rel)}
    return _Verifier(root, tree, pages).run()


def _tree_files(root: Path) -> set[str]:
    """Every file (or symlink) under root by relative POSIX path, hidden names left out.

    Hidden: the lock, the journal and the temp files of a write (fsutil.atomic_target), which
    neither serve nor nginx ever serves.
    """
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        base = here.relative_to(root)
        links = [d for d in dirnames if (here / d).is_symlink()]
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in links]
        found.update((base / n).as_posix() for n in [*filenames, *links] if n[0] != ".")
    return found


def _is_page(rel: str) -> bool:
    parts = rel.split("/")
    return parts[0] == "simple" and len(parts) in (2, 3) and parts[-1] in _PAGE_NAMES


_PAGE_NAMES = ("index.json", "index.html")


def _read_or_error(path: Path) -> bytes | OSError:
    try:
        return path.read_bytes()
    except OSError as exc:
        return exc


class _Anchors(HTMLParser):
    """The <a> elements (attributes, text) and <meta> names of a simple-API page (PEP 503)."""

    def __init__(self) -> None:
        super().__init__()  # convert_charrefs: attribute values and text arrive unescaped
        self.anchors: list[tuple[dict[str, str | None], str]] = []
        self.meta: dict[str, str | None] = {}
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._finish()
            self._open = dict(attrs)
        elif tag == "meta":
            found = dict(attrs)
            if found.get("name"):
                self.meta[str(found["name"])] = found.get("content")

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a":
            self._finish()

    def close(self) -> None:
        super().close()
        self._finish()

    def _finish(self) -> None:
        if self._open is not None:
            self.anchors.append((self._open, "".join(self._text).strip()))
        self._open, self._text = None, []


def _html_twin(entry: Mapping[str, Any]) -> dict[str, str | None]:
    """The PEP 503/592/658/714 anchor attributes a PEP 691 file entry renders to."""
    hashes = entry.get("hashes")
    sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
    href = f"{entry['url']}#sha256={sha256}" if isinstance(sha256, str) else str(entry["url"])
    core = entry.get("core-metadata")
    yanked = entry.get("yanked")
    provenance = entry.get(PROVENANCE_KEY)
    requires_python = entry.get("requires-python")
    return {
        "href": href,
        "data-requires-python": requires_python if isinstance(requires_python, str) else None,
        "data-core-metadata": (
            f"sha256={core['sha256']}"
            if isinstance(core, dict) and isinstance(core.get("sha256"), str)
            else "true"
            if core is True
            else None
        ),
        "data-yanked": "" if yanked is True else yanked if isinstance(yanked, str) else None,
        f"data-{PROVENANCE_KEY}": provenance if isinstance(provenance, str) else None,
    }


def _same_attribute(key: str, html_value: str | None, json_value: str | None) -> bool:
    if key == "data-core-metadata" and json_value == "true":
        # JSON `true` is metadata without a usable sha256: upstream's own value is kept in
        # HTML then (UpstreamEntry.html_attributes), anything but a sha256 we could check.
        return html_value is not None and not (
            html_value.startswith("sha256=") and _SHA256_HEX.match(html_value[7:])
        )
    return html_value == json_value


def _shown(value: str | None) -> str:
    return "absent" if value is None else repr(value)


class _Verifier:
    """One pass of `verify_tree` over a snapshot: the tree's paths and its pages' bytes."""

    def __init__(self, root: Path, tree: set[str], pages: Mapping[str, bytes | OSError]) -> None:
        self.root = root
        self.tree = tree
        self.pages = pages
        self.problems: list[str] = []
        self.listed: set[str] = set()  # paths a page accounts for
        self.unchecked: list[str] = []  # folders whose page cannot say what they should hold
        self.files = 0
        self._key: Any = None  # the index's public key, once loaded
        self._key_loaded = False

    def say(self, line: str) -> None:
        self.problems.append(line)

    def run(self) -> TreeReport:
        names = self._project_names()
        self._root_pages(names)
        for name in names:
            self._project(name)
        self._strays()
        return TreeReport(len(names), self.files, tuple(self.problems))

    def _project_names(self) -> list[str]:
        names = []
        for rel in sorted(self.tree):
            parts = rel.split("/")
            if len(parts) != 3 or parts[0] != "simple" or parts[2] != "index.json":
                continue
            if _VALID_NAME.match(parts[1]) and canonicalize_name(parts[1]) == parts[1]:
                names.append(parts[1])
            else:
                self.say(f"simple/{parts[1]}: not a normalized project name")
                self.unchecked.append(f"simple/{parts[1]}/")
        return names

    def _load(self, rel: str) -> bytes | None:
        if rel not in self.tree:
            self.say(f"{rel}: missing")
            return None
        data = self.pages[rel]
        if isinstance(data, OSError):
            self.say(f"{rel}: cannot read: {data.strerror}")
            return None
        return data

    def _json(self, rel: str) -> dict[str, Any] | None:
        raw = self._load(rel)
        if raw is None:
            return None
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            self.say(f"{rel}: not valid JSON: {exc}")
            return None
        if not isinstance(document, dict):
            self.say(f"{rel}: expected a JSON object")
            return None
        meta = document.get("meta")
        if not isinstance(meta, dict) or not isinstance(meta.get("api-version"), str):
            self.say(f"{rel}: meta.api-version: expected a string (PEP 629)")
        return document

    def _html(self, rel: str) -> _Anchors | None:
        raw = self._load(rel)
        if raw is None:
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.say(f"{rel}: not UTF-8")
            return None
        parser = _Anchors()
        parser.feed(text)
        parser.close()
        if "pypi:repository-version" not in parser.meta:
            self.say(f"{rel}: no pypi:repository-version meta tag (PEP 629)")
        return parser

    def _root_pages(self, names: list[str]) -> None:
        json_rel, html_rel = "simple/index.json", "simple/index.html"
        self.listed.update((json_rel, html_rel))
        if json_rel not in self.tree and html_rel not in self.tree and not names:
            return  # nothing published yet
        in_json: list[str] | None = None
        document = self._json(json_rel)
        if document is not None:
            try:
                projects = _as_list(document.get("projects"), f"{json_rel}: projects")
                in_json = [
                    _as_str(
                        _as_dict(item, f"{json_rel}: projects[{i}]").get("name"),
                        f"{json_rel}: projects[{i}].name",
                    )
                    for i, item in enumerate(projects)
                ]
            except PublishError as exc:
                self.say(str(exc))
        if in_json is not None:
            self._twice(json_rel, in_json)
            for name in sorted(set(names) - set(in_json)):
                self.say(f"{json_rel}: does not list {name}, which has simple/{name}/index.json")
            for name in sorted(set(in_json) - set(names)):
                self.say(f"{json_rel}: lists {name}, which has no simple/{name}/index.json")
        parsed = self._html(html_rel)
        if parsed is None:
            return
        in_html = []
        for attrs, text in parsed.anchors:
            href, want = attrs.get("href"), f"{quote(text)}/"
            if href != want:
                self.say(f"{html_rel}: the link to {text} is {_shown(href)}, not {want!r}")
            in_html.append(text)
        self._twice(html_rel, in_html)
        if in_json is not None:
            twin = f"{html_rel} disagrees with index.json"
            for name in sorted(set(in_json) - set(in_html)):
                self.say(f"{twin}: {name} is not in index.html")
            for name in sorted(set(in_html) - set(in_json)):
                self.say(f"{twin}: {name} is not in index.json")
        else:  # nothing to agree with: hold it to the project pages instead
            for name in sorted(set(names) - set(in_html)):
                self.say(f"{html_rel}: does not list {name}, which has simple/{name}/index.json")
            for name in sorted(set(in_html) - set(names)):
                self.say(f"{html_rel}: lists {name}, which has no simple/{name}/index.json")

    def _twice(self, rel: str, names: list[str]) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                self.say(f"{rel}: lists {name} twice")
            seen.add(name)

    def _project(self, name: str) -> None:
        json_rel, html_rel = f"simple/{name}/index.json", f"simple/{name}/index.html"
        self.listed.update((json_rel, html_rel))
        document = self._json(json_rel)
        items: list[Any] | None = None
        if document is not None:
            if document.get("name") != name:
                self.say(f"{json_rel}: name is {document.get('name')!r}, not {name!r}")
            try:
                items = _as_list(document.get("files"), f"{json_rel}: files")
            except PublishError as exc:
                self.say(str(exc))
        if document is None or items is None:
            # What belongs in files/<name>/ is unknown: one line for the page, not one a file.
            self.unchecked.append(f"files/{name}/")
            return
        entries: list[dict[str, Any]] = []
        for i, item in enumerate(items):
            at = f"{json_rel}: files[{i}]"
            try:
                entry = _as_dict(item, at)
                filename = _as_str(entry.get("filename"), f"{at}.filename")
                url = _as_str(entry.get("url"), f"{at}.url")
            except PublishError as exc:
                self.say(str(exc))
                continue
            if any(filename == e["filename"] for e in entries):
                self.say(f"{json_rel}: lists {filename} twice")
                continue
            entries.append(entry)
            if "://" in url:  # upstream's: only the pages' agreement is ours to check
                try:
                    UpstreamEntry.from_json(entry, at)
                except PublishError as exc:
                    self.say(str(exc))
            else:
                self._ours(name, json_rel, at, entry)
        versions = _versions([e["filename"] for e in entries])
        if document.get("versions") != versions:
            self.say(f"{json_rel}: versions is {document.get('versions')!r}, its files {versions}")
        self._twin(html_rel, entries)

    def _ours(self, name: str, json_rel: str, at: str, raw: Mapping[str, Any]) -> None:
        filename = str(raw["filename"])
        if not _bare(filename):
            self.say(f"{json_rel}: lists {filename!r}: not a bare file name")
            return
        for key, want in (
            ("url", _file_url(name, filename)),
            (PROVENANCE_KEY, _file_url(name, filename + PROVENANCE_SUFFIX)),
        ):
            if key in raw and raw[key] != want:
                self.say(f"{at}.{key}: {raw[key]!r}, not {want!r}")
        self.listed.update(f"files/{name}/{filename}{s}" for s in ("", ".metadata"))
        try:
            entry = IndexedFile.from_json(raw, at)
        except PublishError as exc:
            self.say(str(exc))
            return
        self.files += 1
        self.listed.update(f"files/{name}/{path}" for path in _our_paths(entry))
        self._check_file(name, json_rel, entry)

    def _check_file(self, name: str, json_rel: str, entry: IndexedFile) -> None:
        rel = f"files/{name}/{entry.filename}"
        path = self.root / rel
        if rel not in self.tree or not path.is_file():
            self.say(f"{json_rel}: lists {entry.filename}, which is missing")
            return
        try:
            size = path.stat().st_size
            sha256 = file_digest(path)[0] if size == entry.size else None
        except OSError as exc:
            self.say(f"{rel}: cannot read: {exc.strerror}")
            return
        if size != entry.size:
            self.say(f"{rel}: size {size}, listed {entry.size}")
        elif sha256 != entry.sha256:
            self.say(f"{rel}: sha256 {sha256}, listed {entry.sha256}")
        intact = sha256 == entry.sha256
        self._check_metadata(json_rel, rel, entry, intact)
        if entry.provenance:
            self._check_provenance(json_rel, rel, entry, intact)

    def _check_metadata(self, json_rel: str, rel: str, entry: IndexedFile, intact: bool) -> None:
        real: str | None = None  # sha256 of the wheel's own METADATA, when it can be trusted
        if intact and entry.filename.endswith(".whl"):
            try:
                real = _sha256_bytes(_read_metadata(self.root / rel))
            except PublishError as exc:
                self.say(f"{rel}: {exc}")
        if real is not None and entry.metadata_sha256 not in (None, real):
            self.say(
                f"{json_rel}: core-metadata of {entry.filename} is sha256 "
                f"{entry.metadata_sha256}, its METADATA has {real}"
            )
        meta_rel = f"{rel}.metadata"
        if meta_rel not in self.tree:
            if entry.metadata_sha256 is not None:
                self.say(f"{json_rel}: lists core-metadata of {entry.filename}, which is missing")
            return
        try:
            found = file_digest(self.root / meta_rel)[0]
        except OSError as exc:
            self.say(f"{meta_rel}: cannot read: {exc.strerror}")
            return
        if real is not None:
            if found != real:
                self.say(f"{meta_rel}: differs from the wheel's METADATA")
        elif entry.metadata_sha256 is not None and found != entry.metadata_sha256:
            self.say(f"{meta_rel}: sha256 {found}, listed {entry.metadata_sha256}")

    def _check_provenance(self, json_rel: str, rel: str, entry: IndexedFile, intact: bool) -> None:
        # Imported here: bot.signing builds on this module (PROVENANCE_KEY, PROVENANCE_SUFFIX).
        from bot import signing

        doc_rel = rel + PROVENANCE_SUFFIX
        if doc_rel not in self.tree:
            self.say(f"{json_rel}: links the provenance of {entry.filename}, which is missing")
            return
        key = self._public_key()
        if key is None or not intact:
            return
        try:
            envelope = json.loads((self.root / doc_rel).read_bytes())
            signing.check_wheel(entry.filename, entry.sha256, envelope, key)
        except (OSError, ValueError, signing.SignatureError) as exc:
            self.say(f"{doc_rel}: {exc}")

    def _public_key(self) -> Any:
        from bot import signing

        if not self._key_loaded:
            self._key_loaded = True
            path = self.root / signing.PUBLIC_KEY_PATH
            where = signing.PUBLIC_KEY_PATH
            if where not in self.tree:
                self.say(f"{where}: missing, and pages link provenance signed with it")
                return None
            try:
                self._key = signing.load_public_key(path.read_bytes(), where)
            except (OSError, signing.SignatureError) as exc:
                self.say(f"{where}: {exc}")
        return self._key

    def _twin(self, html_rel: str, entries: list[dict[str, Any]]) -> None:
        parsed = self._html(html_rel)
        if parsed is None:
            return
        twin = f"{html_rel} disagrees with index.json"
        anchors: dict[str, dict[str, str | None]] = {}
        for attrs, text in parsed.anchors:
            if text in anchors:
                self.say(f"{twin}: {text} is linked twice")
                continue
            anchors[text] = attrs
        for entry in entries:
            filename = entry["filename"]
            if filename not in anchors:
                self.say(f"{twin}: {filename} is not in index.html")
                continue
            attrs = anchors.pop(filename)
            for key, want in _html_twin(entry).items():
                # A valueless attribute (<a data-yanked>) is present and empty (PEP 592).
                got = (attrs[key] or "") if key in attrs else None
                if not _same_attribute(key, got, want):
                    self.say(f"{twin}: {filename} {key} is {_shown(got)}, JSON {_shown(want)}")
            if attrs.get("data-dist-info-metadata") != attrs.get("data-core-metadata"):
                # PEP 714: both names carry one value (pip before 23.2 reads the old one).
                self.say(
                    f"{html_rel}: {filename} data-dist-info-metadata is "
                    f"{_shown(attrs.get('data-dist-info-metadata'))}, data-core-metadata "
                    f"{_shown(attrs.get('data-core-metadata'))}"
                )
        for text in anchors:
            self.say(f"{twin}: {text} is not in index.json")

    def _strays(self) -> None:
        from bot import signing

        for rel in sorted(self.tree - self.listed):
            # The key sits at its fixed place in the tree; no page links it (bot.signing).
            if rel == signing.PUBLIC_KEY_PATH or rel.startswith(tuple(self.unchecked)):
                continue
            self.say(f"{rel}: not listed")


__all__ = [
    "API_VERSION",
    "IndexedFile",
    "format_upload_time",
    "project_files",
    "publish",
    "rebuild",
    "stray_files",
    "verify",
    "verify_tree",
]
