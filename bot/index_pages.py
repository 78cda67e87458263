"""The index's page model and rendering, pure: file entries (ours and upstream's), yanks,
PEP 691 JSON and PEP 503 HTML bytes for project and root pages, the checks on what a page
holds. Nothing here writes; ``bot.index`` does, atomically, and ``bot.index_verify`` reads.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote

from packaging.utils import (
    NormalizedName,
    canonicalize_name,
)
from packaging.version import InvalidVersion, Version

from bot import dists
from bot.errors import PublishError
from bot.typed import Mismatch, as_dict, as_int, as_sha256, as_str, is_sha256

# PEP 700 is API version 1.1 (versions, size, upload-time); PEP 629 puts it in every page.
API_VERSION = "1.1"


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
        try:
            obj = as_dict(data, where)
            filename = as_str(obj.get("filename"), f"{where}.filename")
            hashes = as_dict(obj.get("hashes"), f"{where}.hashes")
            sha256 = as_sha256(hashes.get("sha256"), f"{where}.hashes.sha256")
            size = as_int(obj.get("size"), f"{where}.size", nonnegative=True)
            requires_python = obj.get("requires-python")
            if requires_python is not None:
                requires_python = as_str(requires_python, f"{where}.requires-python")
            upload_time = as_str(obj.get("upload-time"), f"{where}.upload-time")
            metadata_sha256: str | None = None
            core = obj.get("core-metadata")
            if isinstance(core, dict):
                metadata_sha256 = as_sha256(core.get("sha256"), f"{where}.core-metadata.sha256")
            yanked_raw = obj.get("yanked", False)
            if yanked_raw is True:
                yanked: str | None = ""
            elif yanked_raw is False:
                yanked = None
            else:
                yanked = as_str(yanked_raw, f"{where}.yanked")
        except Mismatch as exc:
            raise PublishError(str(exc)) from exc
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
            entry["core-metadata"] = {"sha256": digest} if is_sha256(digest) else True
        if self.yanked is not None:
            entry["yanked"] = self.yanked or True
        return entry

    @classmethod
    def from_json(cls, data: object, where: str) -> UpstreamEntry:
        try:
            obj = as_dict(data, where)
            hashes = as_dict(obj.get("hashes", {}), f"{where}.hashes")
            filename = as_str(obj.get("filename"), f"{where}.filename")
            url = as_str(obj.get("url"), f"{where}.url")
        except Mismatch as exc:
            raise PublishError(str(exc)) from exc
        # The rest is upstream's to get right: a field of another type is shown as absent.
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
            filename=filename,
            url=url,
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


def format_upload_time(moment: datetime) -> str:
    """PEP 700 upload-time: UTC, yyyy-mm-ddThh:mm:ss.ffffffZ (a naive time is taken as UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat, not strftime: a third of the time, for each of 250,000 files in a full write.
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _project_name(project: str) -> NormalizedName:
    if not dists.is_project_name(project):
        raise PublishError(f"{project!r} is not a valid project name")
    return canonicalize_name(project)


def _file_url(project: str, filename: str) -> str:
    # Relative to /simple/<name>/, so the tree can be served from any host or sub-path.
    return f"../../files/{project}/{quote(filename)}"


def _versions(filenames: Sequence[str]) -> list[str]:
    found = {v for v in map(_version_of, filenames) if v is not None}
    return [str(version) for version in sorted(found)]


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


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _our_paths(entry: IndexedFile) -> tuple[str, ...]:
    """The names in files/<name>/ one of our entries accounts for: itself, PEP 658, provenance."""
    paths = (entry.filename, entry.filename + ".metadata")
    return (*paths, entry.filename + PROVENANCE_SUFFIX) if entry.provenance else paths
