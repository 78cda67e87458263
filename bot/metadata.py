"""A release's dependencies, build system, license and URLs read from upstream, cached on disk.

Over the ~500 lines a module here aims for: the three ways to read them (PEP 658 metadata
files, a wheel, an sdist's PKG-INFO and pyproject.toml), each under size limits, and the
cache form one pipeline whose order (cheapest first) is the point.
"""

from __future__ import annotations

import email.header
import email.message
import email.parser
import email.policy
import json
import shutil
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
from packaging.utils import (
    InvalidName,
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    canonicalize_version,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bot import dists
from bot.errors import (
    DistributionError,
    HashMismatch,
    UpstreamError,
    UpstreamUnavailable,
    first_line,
)
from bot.fsutil import atomic_write_text, sha256_file
from bot.simple import DistFile
from bot.typed import Mismatch, as_dict, as_list, as_str, as_strings
from bot.upstream import Upstream

__all__ = [
    "LEGACY_BACKEND",
    "LEGACY_REQUIRES",
    "MetadataCache",
    "ProjectMetadata",
    "fetch_metadata",
]

# PEP 517/518: what pip and build assume for a project that declares no [build-system].
LEGACY_REQUIRES: tuple[str, ...] = ("setuptools>=40.8.0", "wheel")
LEGACY_BACKEND = "setuptools.build_meta:__legacy__"

SOURCE_PEP658 = "pep658"
SOURCE_WHEEL = "wheel"
SOURCE_SDIST = "sdist"
# Appended to `source` ("; "-separated) so a reader sees why a field is weaker than usual.
NOTE_NO_SDIST = "no sdist: build requirements unknown"
NOTE_DYNAMIC = "Requires-Dist dynamic (PEP 643)"

# Bumped when the cache file's shape changes, so old files are refetched rather than misread.
# 2: license and project_urls (a format-1 file lacks them, which would read as "none declared").
CACHE_FORMAT = 2
# Metadata and pyproject.toml are a few KiB; the cap keeps a hostile archive from filling memory.
MAX_MEMBER_BYTES = 16 * 1024 * 1024
# A License field longer than this (or spread over lines) is the license text, not its name.
MAX_LICENSE_NAME = 80
# Values old setuptools wrote for "not given" (Metadata 1.x had no way to leave a field out).
_NOT_GIVEN = frozenset({"", "unknown", "none", "n/a", "null"})


@dataclass(frozen=True)
class ProjectMetadata:
    """What one release needs to run (Requires-Dist) and to build from its sdist."""

    project: str
    version: str
    requires_dist: tuple[str, ...]
    requires_python: str | None
    build_requires: tuple[str, ...]
    build_backend: str
    source: str
    # PEP 639 License-Expression, else a short License field, else the License :: classifiers.
    license: str | None = None
    # Project-URL (label, url) pairs in file order, then Home-page as ("Homepage", url).
    project_urls: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "version": self.version,
            "requires_dist": list(self.requires_dist),
            "requires_python": self.requires_python,
            "build_requires": list(self.build_requires),
            "build_backend": self.build_backend,
            "source": self.source,
            "license": self.license,
            "project_urls": [[label, url] for label, url in self.project_urls],
        }

    @classmethod
    def from_json(cls, data: Any) -> ProjectMetadata:
        """The inverse of to_json; a ValueError names the key path of the first bad field."""

        def text(key: str) -> str:
            return as_str(data.get(key), f"metadata.{key}")

        def optional_text(key: str) -> str | None:
            return None if data.get(key) is None else text(key)

        def strings(key: str) -> tuple[str, ...]:
            return tuple(as_strings(data.get(key), f"metadata.{key}"))

        def pairs(key: str) -> tuple[tuple[str, str], ...]:
            found = []
            for index, item in enumerate(as_list(data.get(key), f"metadata.{key}")):
                if not (
                    isinstance(item, list)
                    and len(item) == 2
                    and all(isinstance(part, str) for part in item)
                ):
                    raise Mismatch(f"metadata.{key}[{index}]", "a [label, url] pair")
                found.append((item[0], item[1]))
            return tuple(found)

        try:
            as_dict(data, "metadata", expected="a JSON object")
            return cls(
                project=text("project"),
                version=text("version"),
                requires_dist=strings("requires_dist"),
                requires_python=optional_text("requires_python"),
                build_requires=strings("build_requires"),
                build_backend=text("build_backend"),
                source=text("source"),
                license=optional_text("license"),
                project_urls=pairs("project_urls"),
            )
        except Mismatch as exc:
            raise ValueError(f"{exc.where}: is not {exc.expected}") from None


def _cache_key(project: str, version: str) -> tuple[str, Version]:
    try:
        name = canonicalize_name(project, validate=True)
    except InvalidName as exc:
        raise ValueError(f"invalid project name {project!r}") from exc
    try:
        parsed = Version(version)
    except InvalidVersion as exc:
        raise ValueError(f"invalid version {version!r} of {name}") from exc
    return name, parsed


class MetadataCache:
    """One JSON file per release under a directory: <directory>/<project>/<version>.json."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def path(self, project: str, version: str) -> Path:
        name, parsed = _cache_key(project, version)
        # canonicalize_version makes 1.0 and 1.0.0 (equal per PEP 440) one file.
        return self.directory / name / f"{canonicalize_version(parsed)}.json"

    def get(self, project: str, version: str) -> ProjectMetadata | None:
        """The cached metadata, or None when there is none or the file can't be trusted."""
        path = self.path(project, version)
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            # Missing, unreadable or not JSON (a crash mid-write can't cause this, since writes
            # are atomic, but a disk or a hand edit can): refetching is always safe.
            return None
        if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT:
            return None
        try:
            meta = ProjectMetadata.from_json(document.get("metadata"))
            name, parsed = _cache_key(meta.project, meta.version)
        except ValueError:
            return None
        if (name, parsed) != _cache_key(project, version):
            return None
        return meta

    def put(self, meta: ProjectMetadata) -> None:
        document = {"format": CACHE_FORMAT, "metadata": meta.to_json()}
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        atomic_write_text(self.path(meta.project, meta.version), text)


# --- choosing files ---------------------------------------------------------------------------


def _is_release_wheel(dist: DistFile, name: str, version: Version) -> bool:
    if not dist.is_wheel:
        return False
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(dist.filename)
    except (InvalidWheelFilename, InvalidVersion):
        return False
    return canonicalize_name(wheel_name) == name and wheel_version == version


def _is_release_sdist(dist: DistFile, name: str, version: Version) -> bool:
    if not dist.is_sdist:
        return False
    try:
        sdist_name, sdist_version = parse_sdist_filename(dist.filename)
    except (InvalidSdistFilename, InvalidVersion):
        return False
    return canonicalize_name(sdist_name) == name and sdist_version == version


def _wheel_rank(dist: DistFile) -> tuple[bool, bool, bool, bool, str]:
    # Lower sorts first: PEP 658 metadata (no wheel download), a hash to verify, not yanked,
    # a pure-Python wheel (the smallest, usually), then the name so the choice is stable.
    pure = dist.filename.endswith("-none-any.whl")
    return (
        dist.core_metadata is None,
        dist.sha256 is None,
        dist.yanked is not None,
        not pure,
        dist.filename,
    )


def _sdist_rank(dist: DistFile) -> tuple[bool, bool, bool, str]:
    # PEP 625 makes .tar.gz the sdist format; .zip is the legacy one.
    return (
        dist.sha256 is None,
        dist.yanked is not None,
        not dist.filename.endswith(".tar.gz"),
        dist.filename,
    )


# --- reading files ----------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    # Errors are one line (the CLI prints them so); tarfile, for one, explains over several.
    return first_line(exc).strip().rstrip(":")


def _header_text(value: Any) -> str:
    # compat32 hands back undecodable (non-UTF-8-clean) values as Header objects; decode those
    # as UTF-8 the way core metadata is written (PEP 566) instead of failing on them.
    if isinstance(value, email.header.Header):
        parts = []
        for chunk, charset in email.header.decode_header(value):
            if isinstance(chunk, bytes):
                encoding = charset if charset and charset != "unknown-8bit" else "utf-8"
                parts.append(chunk.decode(encoding, errors="replace"))
            else:
                parts.append(chunk)
        return "".join(parts).strip()
    return str(value).strip()


@dataclass(frozen=True)
class _CoreMetadata:
    requires_dist: tuple[str, ...]
    requires_python: str | None
    dynamic: tuple[str, ...]
    license: str | None
    project_urls: tuple[tuple[str, str], ...]


def _license(message: email.message.Message) -> str | None:
    """The license's name: what a reviewer compares between two releases."""
    # PEP 639: License-Expression is the one authoritative field when present.
    expression = message.get("License-Expression")
    if expression is not None and _header_text(expression):
        return " ".join(_header_text(expression).split())
    field = message.get("License")
    if field is not None:
        # Many projects paste the whole license text here; only a short one-liner names it.
        lines = [line.strip() for line in _header_text(field).splitlines()]
        first = lines[0] if lines else ""
        if (
            first.casefold() not in _NOT_GIVEN
            and len(first) <= MAX_LICENSE_NAME
            and not first.casefold().startswith("copyright")
        ):
            return first
    names: list[str] = []
    for classifier in message.get_all("Classifier") or ():
        parts = [part.strip() for part in _header_text(classifier).split("::")]
        # "License :: OSI Approved" alone says nothing about which license.
        wanted = parts[0] == "License" and len(parts) > 1 and parts[1:] != ["OSI Approved"]
        if wanted and parts[-1] not in names:
            names.append(parts[-1])
    return ", ".join(names) or None


def _project_urls(message: email.message.Message) -> tuple[tuple[str, str], ...]:
    urls: list[tuple[str, str]] = []
    for value in message.get_all("Project-URL") or ():
        # Core metadata: "label, URL"; the label may not contain a comma, the URL may.
        label, comma, url = _header_text(value).partition(",")
        if comma and url.strip():
            urls.append((label.strip(), url.strip()))
    home = message.get("Home-page")
    if home is not None:
        url = _header_text(home)
        if url.casefold() not in _NOT_GIVEN and url not in {u for _, u in urls}:
            urls.append(("Homepage", url))
    return tuple(urls)


def _parse_core_metadata(data: bytes, what: str, name: str, version: Version) -> _CoreMetadata:
    # compat32, as packaging.metadata does: it keeps values as written, never reformatted.
    message = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(data)
    found_name = message.get("Name")
    found_version = message.get("Version")
    if found_name is None or found_version is None:
        raise UpstreamError(f"{what} has no Name or Version in its core metadata")
    # A file whose metadata names another release must not feed the graph (trust rules).
    try:
        same = canonicalize_name(_header_text(found_name)) == name and (
            Version(_header_text(found_version)) == version
        )
    except InvalidVersion:
        same = False
    if not same:
        raise UpstreamError(
            f"{what} describes {_header_text(found_name)} {_header_text(found_version)}, "
            f"not {name} {version}"
        )
    requires_python = message.get("Requires-Python")
    return _CoreMetadata(
        requires_dist=tuple(_header_text(v) for v in message.get_all("Requires-Dist") or ()),
        requires_python=_header_text(requires_python) if requires_python is not None else None,
        dynamic=tuple(_header_text(v).lower() for v in message.get_all("Dynamic") or ()),
        license=_license(message),
        project_urls=_project_urls(message),
    )


def _read_limited(handle: Any, what: str) -> bytes:
    data: bytes = handle.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise UpstreamError(f"{what} is larger than {MAX_MEMBER_BYTES} bytes")
    return data


def _wheel_metadata(path: Path, filename: str, name: str) -> bytes:
    """The bytes of the wheel's `<name>-<version>.dist-info/METADATA` (PEP 427)."""
    try:
        return dists.wheel_metadata(path, name, filename)
    except DistributionError as exc:
        raise UpstreamError(str(exc)) from exc


@dataclass(frozen=True)
class _SdistFiles:
    pkg_info: bytes | None
    pyproject: bytes | None


def _sdist_files(path: Path, filename: str) -> _SdistFiles:
    """PKG-INFO and pyproject.toml from the sdist's one top-level directory, read not extracted."""
    try:
        if filename.endswith(".zip"):
            found = _zip_sdist_files(path, filename)
        else:
            found = _tar_sdist_files(path, filename)
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UpstreamError(f"sdist {filename} is not a readable archive: {_reason(exc)}") from exc
    return _SdistFiles(pkg_info=found.get("PKG-INFO"), pyproject=found.get("pyproject.toml"))


_SDIST_WANTED = ("PKG-INFO", "pyproject.toml")


def _zip_sdist_files(path: Path, filename: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with zipfile.ZipFile(path) as archive:
        tops: set[str] = set()
        members: dict[tuple[str, str], zipfile.ZipInfo] = {}
        for info in archive.infolist():
            parts = PurePosixPath(info.filename).parts
            if parts:
                tops.add(parts[0])
            if len(parts) == 2 and parts[1] in _SDIST_WANTED and not info.is_dir():
                members[(parts[0], parts[1])] = info
        top = _single_top(tops, filename)
        for leaf in _SDIST_WANTED:
            if (chosen := members.get((top, leaf))) is not None:
                with archive.open(chosen) as handle:
                    found[leaf] = _read_limited(handle, f"{leaf} in {filename}")
    return found


def _tar_sdist_files(path: Path, filename: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    with tarfile.open(path, mode="r:*") as archive:
        tops: set[str] = set()
        members: dict[tuple[str, str], tarfile.TarInfo] = {}
        for member in archive.getmembers():
            parts = PurePosixPath(member.name).parts
            if parts:
                tops.add(parts[0])
            if len(parts) == 2 and parts[1] in _SDIST_WANTED:
                members[(parts[0], parts[1])] = member
        top = _single_top(tops, filename)
        for leaf in _SDIST_WANTED:
            if (entry := members.get((top, leaf))) is None:
                continue
            # Only regular files are read: a link could point anywhere in the archive (or out of
            # it), which is what tarfile's "data" filter refuses too.
            if not entry.isfile():
                raise UpstreamError(f"{leaf} in sdist {filename} is not a regular file")
            handle = archive.extractfile(entry)
            if handle is not None:
                with handle:
                    found[leaf] = _read_limited(handle, f"{leaf} in {filename}")
    return found


def _single_top(tops: set[str], filename: str) -> str:
    # The sdist format puts everything under one `{name}-{version}/` directory.
    if len(tops) != 1:
        raise UpstreamError(f"sdist {filename} does not have exactly one top-level directory")
    (top,) = tops
    if top in (".", ".."):
        raise UpstreamError(f"sdist {filename} has an unsafe top-level directory {top!r}")
    return top


def _build_system(pyproject: bytes | None, filename: str) -> tuple[tuple[str, ...], str]:
    """[build-system] requires and build-backend, with the PEP 517/518 defaults where absent."""
    if pyproject is None:
        return LEGACY_REQUIRES, LEGACY_BACKEND
    try:
        document = tomllib.loads(pyproject.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UpstreamError(
            f"pyproject.toml in sdist {filename} is invalid: {_reason(exc)}"
        ) from exc
    table = document.get("build-system")
    if table is None:
        return LEGACY_REQUIRES, LEGACY_BACKEND
    if not isinstance(table, dict):
        raise UpstreamError(f"pyproject.toml in sdist {filename}: build-system is not a table")
    # PEP 518 makes `requires` mandatory once the table exists; pip refuses to build without it.
    requires = table.get("requires")
    if not isinstance(requires, list) or not all(isinstance(r, str) for r in requires):
        raise UpstreamError(
            f"pyproject.toml in sdist {filename}: build-system.requires is not a list of strings"
        )
    backend = table.get("build-backend")
    if backend is None:
        # PEP 517: no build-backend means the legacy setuptools path, with the declared requires.
        return tuple(requires), LEGACY_BACKEND
    if not isinstance(backend, str) or not backend.strip():
        raise UpstreamError(
            f"pyproject.toml in sdist {filename}: build-system.build-backend is not a string"
        )
    return tuple(requires), backend.strip()


# --- fetching ---------------------------------------------------------------------------------


def _download(upstream: Upstream, dist: DistFile, dest: Path) -> Path:
    if dist.sha256 is None:
        # Every byte we read feeds the build graph; an unverifiable file is refused, not trusted.
        raise UpstreamError(f"{dist.filename} has no sha256 on the index; refusing it unverified")
    try:
        return upstream.download(dist.url, dest, dist.sha256)
    except HashMismatch as exc:
        raise UpstreamError(exc.message) from exc


def _kept_copy(folder: Path | None, dist: DistFile) -> Path | None:
    """``dist`` in ``folder`` if it is there with the sha256 upstream lists for it."""
    if folder is None or dist.sha256 is None:
        return None
    path = folder / dist.filename
    try:
        return path if path.is_file() and sha256_file(path) == dist.sha256 else None
    except OSError:
        return None


def _pep658_metadata(upstream: Upstream, wheel: DistFile, scratch: Path) -> bytes:
    """The wheel's METADATA served beside it (PEP 658), verified when upstream gave a hash."""
    assert wheel.core_metadata is not None
    url = wheel.url + ".metadata"
    what = f"{wheel.filename}.metadata"
    algorithm, _, digest = wheel.core_metadata.partition("=")
    if algorithm == "sha256" and digest:
        # Upstream.download retries, streams and checks the sha256 before anything is kept.
        try:
            path = upstream.download(url, scratch / "METADATA", digest)
        except HashMismatch as exc:
            raise UpstreamError(f"PEP 658 metadata rejected: {exc.message}") from exc
        return path.read_bytes()
    # PEP 714 allows "true" without a hash: nothing to verify, so it is only size-capped.
    try:
        with upstream.client.stream("GET", url) as response:
            if response.status_code != 200:
                status = f"HTTP {response.status_code} {response.reason_phrase}".rstrip()
                raise UpstreamError(f"upstream {url} answered {status}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_MEMBER_BYTES:
                    raise UpstreamError(f"{what} is larger than {MAX_MEMBER_BYTES} bytes")
    except httpx.TransportError as exc:
        raise UpstreamUnavailable(f"upstream {url} unreachable: {_reason(exc)}") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"upstream {url} failed: {_reason(exc)}") from exc
    return bytes(body)


def fetch_metadata(
    upstream: Upstream,
    files: Sequence[DistFile],
    project: str,
    version: str,
    cache: MetadataCache,
    *,
    workdir: Path,
    downloaded: Path | None = None,
) -> ProjectMetadata:
    """A release's run and build requirements: from the cache, else from its files upstream.

    ``downloaded``: a folder of files already fetched (the bot keeps each sdist it verified
    for a PR there); a file of that name whose sha256 is the one upstream lists is read from
    there rather than downloaded again.
    """
    try:
        name, parsed = _cache_key(project, version)
    except ValueError as exc:
        raise UpstreamError(str(exc)) from exc
    wheels = sorted((f for f in files if _is_release_wheel(f, name, parsed)), key=_wheel_rank)
    sdists = sorted((f for f in files if _is_release_sdist(f, name, parsed)), key=_sdist_rank)

    cached = cache.get(name, str(parsed))
    # Releases are immutable except that files may be added later; a cached "no sdist" result
    # is only stale once an sdist has appeared, which `files` shows without any request.
    if cached is not None and (cached.build_backend or not sdists):
        return cached

    if not wheels and not sdists:
        raise UpstreamError(f"{name} {parsed} has no wheel or sdist upstream")

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # A private directory per call, so concurrent fetches never share a path and one rmtree
    # removes every download whatever happened.
    scratch = Path(tempfile.mkdtemp(prefix=f".metadata-{name}-", dir=workdir))
    try:
        notes: list[str] = []
        core: _CoreMetadata | None = None
        source = ""
        if wheels:
            wheel = wheels[0]
            if wheel.core_metadata is not None:
                data = _pep658_metadata(upstream, wheel, scratch)
                core = _parse_core_metadata(data, f"{wheel.filename}.metadata", name, parsed)
                source = SOURCE_PEP658
            else:
                path = _download(upstream, wheel, scratch / "dist.whl")
                data = _wheel_metadata(path, wheel.filename, name)
                path.unlink()
                core = _parse_core_metadata(data, f"wheel {wheel.filename}", name, parsed)
                source = SOURCE_WHEEL

        build_requires: tuple[str, ...] = ()
        build_backend = ""
        if sdists:
            sdist = sdists[0]
            kept = _kept_copy(downloaded, sdist)
            if kept is not None:
                contents = _sdist_files(kept, sdist.filename)
            else:
                suffix = ".zip" if sdist.filename.endswith(".zip") else ".tar.gz"
                path = _download(upstream, sdist, scratch / f"sdist{suffix}")
                contents = _sdist_files(path, sdist.filename)
                path.unlink()
            build_requires, build_backend = _build_system(contents.pyproject, sdist.filename)
            if core is None:
                if contents.pkg_info is None:
                    raise UpstreamError(f"sdist {sdist.filename} has no PKG-INFO")
                core = _parse_core_metadata(
                    contents.pkg_info, f"PKG-INFO of {sdist.filename}", name, parsed
                )
                source = SOURCE_SDIST
                # PEP 643: a field named in Dynamic is only settled when the wheel is built.
                if "requires-dist" in core.dynamic:
                    notes.append(NOTE_DYNAMIC)
        else:
            notes.append(NOTE_NO_SDIST)
        assert core is not None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    meta = ProjectMetadata(
        project=name,
        version=str(parsed),
        requires_dist=core.requires_dist,
        requires_python=core.requires_python,
        build_requires=build_requires,
        build_backend=build_backend,
        source="; ".join([source, *notes]),
        license=core.license,
        project_urls=core.project_urls,
    )
    cache.put(meta)
    return meta
