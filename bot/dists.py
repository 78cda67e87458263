"""Checks on distribution files the bot does not trust: one strictness wherever they are read.

A wheel's filename and its METADATA must both name the project and version it is taken for:
the builder checks what a build made, the gate what it stages and publishes, the index what
it lists, and the metadata reader what upstream serves. Each used to read METADATA its own
way, with four different limits; they all come here now. Pure: no network, no writes.
"""

from __future__ import annotations

import re
import zipfile
from email.parser import BytesHeaderParser
from pathlib import Path, PurePosixPath

from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from bot.errors import DistributionError, one_line

# PEP 508 project names, as a registry entry, a page URL or a directory may hold them.
PROJECT_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# A METADATA file is a few KiB; anything near this is a deflate bomb or not a wheel.
MAX_METADATA_BYTES = 1 << 20


def is_project_name(name: str) -> bool:
    """A valid PEP 508 name, so never a path ("../x") once it becomes a directory."""
    return PROJECT_NAME.match(name) is not None


def is_bare_filename(name: str) -> bool:
    """A name that is one file in one directory: no separators, no NUL, not hidden."""
    return bool(name) and not ("/" in name or "\\" in name or "\0" in name or name.startswith("."))


def wheel_filename(filename: str, name: str, version: Version | None = None) -> Version:
    """The version a wheel filename names; refuses one of another project (or version)."""
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(filename)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise DistributionError(f"{filename} is not a wheel filename: {one_line(exc)}") from exc
    if wheel_name != canonicalize_name(name) or (version is not None and wheel_version != version):
        wanted = name if version is None else f"{name} {version}"
        raise DistributionError(
            f"{filename} is a wheel of {wheel_name} {wheel_version}, not of {wanted}"
        )
    return wheel_version


def wheel_metadata(path: Path, name: str, filename: str | None = None) -> bytes:
    """The bytes of the wheel's single top-level ``<name>-<version>.dist-info/METADATA``.

    PEP 427: exactly one, in the project's own .dist-info directory; read to at most
    MAX_METADATA_BYTES whatever the zip's header claims.
    """
    shown = filename or path.name
    project = canonicalize_name(name)
    try:
        with zipfile.ZipFile(path) as archive:
            own = [
                info
                for info in archive.infolist()
                if _is_metadata_of(info.filename, project)
            ]
            if len(own) != 1:
                raise DistributionError(
                    f"{shown} has no single .dist-info/METADATA of {project} ({len(own)} found)"
                )
            with archive.open(own[0]) as member:
                data = member.read(MAX_METADATA_BYTES + 1)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise DistributionError(f"{shown} is not a readable zip file: {one_line(exc)}") from exc
    if len(data) > MAX_METADATA_BYTES:
        raise DistributionError(f"METADATA in {shown} is larger than {MAX_METADATA_BYTES} bytes")
    return data


def metadata_headers(data: bytes, filename: str) -> dict[str, str]:
    """METADATA's headers (RFC 822 style; UTF-8, as the core metadata spec requires)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DistributionError(f"{filename}: METADATA is not UTF-8") from exc
    message = BytesHeaderParser().parsebytes(data)
    return {key: str(value) for key, value in message.items()}


def check_wheel(path: Path, name: str, version: Version | None = None) -> tuple[Version, bytes]:
    """A wheel of `name` (at `version`, if given) by its filename and by its METADATA.

    Returns the version and the METADATA bytes. The filename alone is never trusted.
    """
    filename = path.name
    wheel_version = wheel_filename(filename, name, version)
    data = wheel_metadata(path, name)
    headers = metadata_headers(data, filename)
    said_name, said_version = headers.get("Name", ""), headers.get("Version", "")
    try:
        matches = (
            canonicalize_name(said_name) == canonicalize_name(name)
            and Version(said_version) == wheel_version
        )
    except InvalidVersion:
        matches = False
    if not matches:
        raise DistributionError(
            f"{filename}: METADATA says {said_name} {said_version}, "
            f"not {canonicalize_name(name)} {wheel_version}"
        )
    return wheel_version, data


def _is_metadata_of(member: str, project: NormalizedName) -> bool:
    parts = PurePosixPath(member).parts
    if len(parts) != 2 or parts[1] != "METADATA" or not parts[0].endswith(".dist-info"):
        return False
    # `{name}-{version}.dist-info`: the name holds no "-" (PEP 427 escapes it to "_").
    return canonicalize_name(parts[0].removesuffix(".dist-info").split("-", 1)[0]) == project
