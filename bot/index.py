"""The static index tree: PEP 503/691 pages, PEP 658 metadata files, atomic incremental writes."""

from __future__ import annotations

import contextlib
import email.parser
import hashlib
import html
import json
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bot.errors import PublishError
from bot.fsutil import CHUNK, atomic_target, file_digest

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
    """What the index needs of a file on upstream's page (bot.upstream.DistFile has it)."""

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
        attrs = [f'href="{html.escape(href)}"']
        if self.requires_python is not None:
            attrs.append(f'data-requires-python="{html.escape(self.requires_python)}"')
        if self.core_metadata is not None:
            value = html.escape(self.core_metadata)
            attrs.append(f'data-core-metadata="{value}"')
            attrs.append(f'data-dist-info-metadata="{value}"')
        if self.yanked is not None:
            attrs.append(f'data-yanked="{html.escape(self.yanked)}"')
        return attrs


DELETED_UPSTREAM = "deleted upstream"


def _version_of(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
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
            _write_root_pages(root)
    return result


def project_files(root: Path, project: str) -> list[IndexedFile]:
    """Our files on `project`'s page now, sorted by filename ([] when it has no page)."""
    return _read_page(root, _project_name(project))[0]


def upstream_files(root: Path, project: str) -> list[UpstreamEntry]:
    """Upstream's files as `project`'s page lists them now (refreshed by `refresh`)."""
    return _read_page(root, _project_name(project))[1]


def _read_page(root: Path, name: NormalizedName) -> tuple[list[IndexedFile], list[UpstreamEntry]]:
    page = root / "simple" / name / "index.json"
    try:
        raw = page.read_bytes()
    except FileNotFoundError:
        return [], []
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
        created = False
        for project, dists in pages.items():
            name = _project_name(project)
            ours, _ = _read_page(root, name)
            theirs = [UpstreamEntry.from_dist(d) for d in dists]
            updated = propagate_yanks(ours, theirs)
            for before, after in zip(ours, updated, strict=True):
                if before.yanked != after.yanked:
                    said.append(
                        f"unyanked {after.filename} (upstream un-yanked it)"
                        if after.yanked is None
                        else f"yanked {after.filename}: {after.yanked or 'yanked upstream'}"
                    )
            created |= not (root / "simple" / name / "index.json").exists()
            _write_project_pages(root, name, updated, theirs)
        if created:
            _write_root_pages(root)
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
        for name, (entries, metadata_files) in plans.items():
            for path, data in metadata_files:
                _write_if_changed(path, data)
            _write_project_pages(root, name, entries, upstream_files(root, name))
        _write_root_pages(root)
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
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    root: Path, name: str, entries: Sequence[IndexedFile], upstream: Sequence[UpstreamEntry] = ()
) -> None:
    ordered = sorted(entries, key=lambda entry: entry.filename)
    # A file is ours or upstream's, never both: ours stays (published files never change).
    mine = {entry.filename for entry in ordered}
    theirs = sorted((u for u in upstream if u.filename not in mine), key=lambda u: u.filename)
    merged: list[tuple[str, dict[str, Any], list[str]]] = [
        (e.filename, e.to_json(name), _our_html_attributes(name, e)) for e in ordered
    ]
    merged += [(u.filename, u.to_json(), u.html_attributes()) for u in theirs]
    merged.sort(key=lambda item: item[0])
    page_dir = root / "simple" / name
    document: dict[str, Any] = {
        "meta": {"api-version": API_VERSION},
        "name": name,
        "files": [entry for _, entry, _ in merged],
        "versions": _versions([filename for filename, _, _ in merged]),  # PEP 700
    }
    # index.json is the source of truth, so it goes first; index.html renders the same data.
    _write_if_changed(page_dir / "index.json", _json_bytes(document))
    _write_if_changed(page_dir / "index.html", _project_html(name, merged))


def _our_html_attributes(name: str, entry: IndexedFile) -> list[str]:
    href = f"{_file_url(name, entry.filename)}#sha256={entry.sha256}"
    attrs = [f'href="{html.escape(href)}"']
    if entry.requires_python is not None:
        # PEP 503: "<" and ">" in the specifier must be HTML-escaped.
        attrs.append(f'data-requires-python="{html.escape(entry.requires_python)}"')
    if entry.metadata_sha256 is not None:
        # PEP 714 name plus the PEP 658 name, which pip before 23.2 still reads in HTML.
        value = f"sha256={entry.metadata_sha256}"
        attrs.append(f'data-core-metadata="{value}"')
        attrs.append(f'data-dist-info-metadata="{value}"')
    if entry.yanked is not None:
        attrs.append(f'data-yanked="{html.escape(entry.yanked)}"')  # PEP 592
    if entry.provenance:
        url = _file_url(name, entry.filename + PROVENANCE_SUFFIX)
        attrs.append(f'data-{PROVENANCE_KEY}="{html.escape(url)}"')
    return attrs


def _project_html(name: str, entries: Sequence[tuple[str, dict[str, Any], list[str]]]) -> bytes:
    title = html.escape(name)
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
        lines.append(f"    <a {' '.join(attrs)}>{html.escape(filename)}</a><br>")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def _write_root_pages(root: Path) -> None:
    simple = root / "simple"
    # The root lists every project that has a page; publish() writes that page first.
    names: list[str] = []
    if simple.is_dir():
        names = sorted(
            child.name
            for child in simple.iterdir()
            if child.is_dir() and (child / "index.json").is_file()
        )
    document = {"meta": {"api-version": API_VERSION}, "projects": [{"name": n} for n in names]}
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
        "    <title>Simple index</title>",
        "  </head>",
        "  <body>",
    ]
    lines += [f'    <a href="{quote(n)}/">{html.escape(n)}</a><br>' for n in names]
    lines += ["  </body>", "</html>", ""]
    _write_if_changed(simple / "index.json", _json_bytes(document))
    _write_if_changed(simple / "index.html", "\n".join(lines).encode("utf-8"))


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_if_changed(path: Path, data: bytes) -> None:
    """Atomically write `data`, skipping identical content so mtimes (and ETags) stay put."""
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    with atomic_target(path) as handle:
        handle.write(data)


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


__all__ = [
    "API_VERSION",
    "IndexedFile",
    "format_upload_time",
    "project_files",
    "publish",
    "rebuild",
    "stray_files",
]
