"""Build provenance as an in-toto Statement with a SLSA v1 predicate, and wheel comparison."""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePath
from typing import IO, Any
from urllib.parse import quote

from packaging.utils import canonicalize_name

from bot.errors import BuildError
from bot.typed import is_sha256

# in-toto Attestation Framework, Statement layer v1 (spec/v1/statement.md).
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
# SLSA Provenance v1 predicate (slsa.dev spec v1.0, "Build: Provenance").
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Our own identifiers: URNs, so no host name is implied that someone else could serve. The
# buildType fixes how externalParameters, internalParameters and byproducts below are read;
# a change of their meaning gets a new version.
BUILD_TYPE = "urn:wheelstock:build:v1"
BUILDER_ID = "urn:wheelstock:builder"
# A byproduct that is a result rather than a file, so it is named by this URI (a
# ResourceDescriptor needs uri, digest or content) and carries the result in annotations.
REPRODUCIBILITY_URI = "urn:wheelstock:reproducibility:v1"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Requirement:
    """One build requirement as installed into the isolated environment."""

    name: str
    version: str
    sha256: str | None = None  # of the installed wheel, when the installer reported it


@dataclass(frozen=True)
class BuilderInfo:
    """What ran the build: wheelstock and the tools it drove, by version."""

    wheelstock: str
    python: str
    platform: str
    bwrap: str | None
    auditwheel: str | None
    build: str | None  # pypa/build


def _sha256(value: str, what: str) -> str:
    if not is_sha256(value):
        raise ValueError(f"{what}: {value!r} is not a lowercase sha256 hex digest")
    return value


def _rfc3339(moment: datetime, what: str) -> str:
    # SLSA v1 timestamps are RFC 3339; always UTC with "Z", so records compare as strings.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what}: {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _plain(value: Any, what: str) -> Any:
    """VALUE as JSON data; mapping keys sorted, so equal inputs give equal bytes."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{what}: {value} is not JSON data")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray):
        raise ValueError(f"{what}: bytes are not JSON data")
    if isinstance(value, Mapping):
        return {str(k): _plain(value[k], f"{what}.{k}") for k in sorted(value, key=str)}
    if isinstance(value, Sequence | frozenset | set):
        items = sorted(value, key=str) if isinstance(value, frozenset | set) else value
        return [_plain(v, f"{what}[{i}]") for i, v in enumerate(items)]
    raise ValueError(f"{what}: {type(value).__name__} is not JSON data")


def purl(name: str, version: str) -> str:
    """The package URL of a Python distribution (purl spec, type "pypi": normalised name)."""
    # "+" (local versions) and "!" (epochs) are not allowed raw in a purl version.
    return f"pkg:pypi/{canonicalize_name(name)}@{quote(version, safe='.')}"


def _requirement(req: Requirement) -> dict[str, Any]:
    descriptor: dict[str, Any] = {
        "uri": purl(req.name, req.version),
        "name": str(canonicalize_name(req.name)),
    }
    if req.sha256 is not None:
        descriptor["digest"] = {"sha256": _sha256(req.sha256, f"requirement {req.name}")}
    return descriptor


def _builder(info: BuilderInfo) -> dict[str, Any]:
    # Builder.version is map<string, string>: a tool that is absent is left out, not null.
    versions = {
        "wheelstock": info.wheelstock,
        "python": info.python,
        "platform": info.platform,
        "bwrap": info.bwrap,
        "auditwheel": info.auditwheel,
        "build": info.build,
    }
    return {"id": BUILDER_ID, "version": {k: v for k, v in versions.items() if v is not None}}


def statement(
    *,
    wheels: Sequence[tuple[str, str]],
    project: str,
    version: str,
    sdist_filename: str,
    sdist_url: str,
    sdist_sha256: str,
    feedstock_repo: str,
    feedstock_commit: str,
    builder: BuilderInfo,
    python: str,
    requirements: Sequence[Requirement],
    started: datetime,
    finished: datetime,
    sandbox: Mapping[str, Any],
    reproducible: Mapping[str, Any] | None = None,
    invocation_id: str | None = None,
) -> dict[str, Any]:
    """The provenance statement of one build: its wheels as subject, how they were made."""
    if not wheels:
        raise ValueError("a provenance statement needs at least one wheel")
    names = [name for name, _ in wheels]
    if len(set(names)) != len(names):
        raise ValueError(f"wheels named twice: {', '.join(sorted(names))}")
    started_on = _rfc3339(started, "started")
    finished_on = _rfc3339(finished, "finished")
    if finished < started:
        raise ValueError(f"finished {finished_on} is before started {started_on}")
    sdist_sha256 = _sha256(sdist_sha256, "sdist")
    # Subject: one ResourceDescriptor per wheel, sorted by filename so the order of the
    # output directory's listing never shows in the record.
    subject = [
        {"name": name, "digest": {"sha256": _sha256(digest, name)}}
        for name, digest in sorted(wheels)
    ]
    # externalParameters: what the feedstock and registry asked for (SLSA: the inputs a
    # consumer checks against expectations).
    external = {
        "project": str(canonicalize_name(project)),
        "version": version,
        "python": python,
        "feedstock": {"repository": feedstock_repo, "commit": feedstock_commit},
        "sdist": {"filename": sdist_filename, "url": sdist_url, "sha256": sdist_sha256},
    }
    # internalParameters: what the builder chose on its own, the sandbox and its limits.
    internal = {"sandbox": _plain(sandbox, "sandbox")}
    # resolvedDependencies: the feedstock commit (in-toto digest "gitCommit"), the sdist, then
    # every build requirement installed, by purl, sorted so install order does not show.
    dependencies: list[dict[str, Any]] = [
        {
            "uri": f"git+{feedstock_repo}@{feedstock_commit}",
            "digest": {"gitCommit": feedstock_commit},
            "name": "feedstock",
        },
        {"uri": sdist_url, "digest": {"sha256": sdist_sha256}, "name": sdist_filename},
    ]
    dependencies += [
        _requirement(req)
        for req in sorted(
            requirements, key=lambda r: (canonicalize_name(r.name), r.version, r.sha256 or "")
        )
    ]
    metadata: dict[str, Any] = {}
    if invocation_id is not None:
        metadata["invocationId"] = invocation_id
    metadata["startedOn"] = started_on
    metadata["finishedOn"] = finished_on
    run_details: dict[str, Any] = {"builder": _builder(builder), "metadata": metadata}
    # byproducts: the --verify-reproducible result (identical, differences), when checked;
    # absent means the build was not checked.
    if reproducible is not None:
        run_details["byproducts"] = [
            {
                "uri": REPRODUCIBILITY_URI,
                "name": "reproducibility",
                "annotations": _plain(reproducible, "reproducible"),
            }
        ]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subject,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": run_details,
        },
    }


def dumps(record: Mapping[str, Any]) -> str:
    """The on-disk text of a statement: key order as built, two-space indent, one newline."""
    return json.dumps(record, indent=2, ensure_ascii=False) + "\n"


def subject_digests(record: Mapping[str, Any]) -> dict[str, str]:
    """Each subject's name and sha256, from a statement already checked by read_statement."""
    return {s["name"]: s["digest"]["sha256"] for s in record["subject"]}


def reproducibility(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The reproducibility result a statement carries, or None when it was not checked."""
    byproducts = record.get("predicate", {}).get("runDetails", {}).get("byproducts", [])
    for item in byproducts:
        if isinstance(item, dict) and item.get("uri") == REPRODUCIBILITY_URI:
            annotations = item.get("annotations")
            return dict(annotations) if isinstance(annotations, dict) else None
    return None


def check_statement(data: object, predicate_type: str = PREDICATE_TYPE) -> dict[str, Any]:
    """DATA as a statement of PREDICATE_TYPE with named sha256 subjects, or ValueError why not."""
    if not isinstance(data, dict):
        raise ValueError(f"not an in-toto statement (a JSON {type(data).__name__})")
    if data.get("_type") != STATEMENT_TYPE:
        raise ValueError(f"not an in-toto statement (_type is {data.get('_type')!r})")
    if data.get("predicateType") != predicate_type:
        raise ValueError(
            f"predicateType is {data.get('predicateType')!r}, expected {predicate_type!r}"
        )
    subject = data.get("subject")
    if not isinstance(subject, list) or not subject:
        raise ValueError("subject is not a non-empty list")
    for i, item in enumerate(subject):
        # in-toto: every subject MUST have a digest; ours are files, named and sha256'd.
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("digest"), dict)
            and is_sha256(item["digest"].get("sha256"))
        ):
            raise ValueError(f"subject[{i}] has no name and sha256 digest")
    if not isinstance(data.get("predicate"), dict):
        raise ValueError("predicate is not an object")
    return data


def read_statement(path: Path, predicate_type: str = PREDICATE_TYPE) -> dict[str, Any]:
    """Load the statement at PATH, checked to be an in-toto Statement of PREDICATE_TYPE."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read: {exc}", path=path) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuildError(f"not JSON: {exc.msg}", path=path, line=exc.lineno) from exc
    try:
        return check_statement(data, predicate_type)
    except ValueError as exc:
        raise BuildError(str(exc), path=path) from exc


def _same_bytes(a: IO[bytes], b: IO[bytes]) -> bool:
    while True:
        left, right = a.read(_CHUNK), b.read(_CHUNK)
        if left != right:
            return False
        if not left:
            return True


def _same_file(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with a.open("rb") as left, b.open("rb") as right:
        return _same_bytes(left, right)


# ZipInfo fields that are written into the archive, and what a reader calls them.
_INFO_FIELDS = (
    ("date_time", "timestamp"),
    ("external_attr", "permissions"),
    ("compress_type", "compression"),
    ("compress_size", "compressed size"),
    ("create_system", "create_system"),
    ("create_version", "create_version"),
    ("extract_version", "extract_version"),
    ("flag_bits", "flag_bits"),
    ("internal_attr", "internal_attr"),
    ("extra", "extra"),
    ("comment", "comment"),
)


def _members(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    return {info.filename: info for info in archive.infolist()}


def _same_member(
    a: zipfile.ZipFile, b: zipfile.ZipFile, ia: zipfile.ZipInfo, ib: zipfile.ZipInfo
) -> bool:
    if (ia.file_size, ia.CRC) != (ib.file_size, ib.CRC):
        return False
    with a.open(ia) as left, b.open(ib) as right:
        return _same_bytes(left, right)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BuildError(f"not a zip archive: {exc}", path=path) from exc


def _differences(a: zipfile.ZipFile, b: zipfile.ZipFile) -> Iterator[str]:
    ma, mb = _members(a), _members(b)
    names = sorted(ma.keys() | mb.keys())
    # Contents first: a member only in one wheel, or with other bytes.
    changed = {
        name
        for name in names
        if name not in ma or name not in mb or not _same_member(a, b, ma[name], mb[name])
    }
    yield from sorted(changed)
    # Then what only the archive records: per-member headers, order, the archive comment.
    for name in names:
        if name not in ma or name not in mb:
            continue
        fields = [
            label
            for attr, label in _INFO_FIELDS
            # Other bytes compress to another size; that says nothing more.
            if getattr(ma[name], attr) != getattr(mb[name], attr)
            and not (name in changed and attr == "compress_size")
        ]
        if fields:
            yield f"<zip metadata: {name} ({', '.join(fields)})>"
    if a.namelist() != b.namelist() and sorted(ma) == sorted(mb):
        yield "<zip metadata: member order>"
    if a.comment != b.comment:
        yield "<zip metadata: archive comment>"


def differing_members(a: Path, b: Path) -> list[str]:
    """Members of wheels A and B whose bytes or presence differ, then zip-level differences.

    [] exactly when the two files are byte-identical; zip-level differences are pseudo-names
    "<zip metadata: ...>", and a difference nothing above names is "<zip metadata: archive bytes>".
    """
    # The common case of --verify-reproducible is identical files: no zip parsing for that.
    if _same_file(a, b):
        return []
    with _open_zip(a) as left, _open_zip(b) as right:
        try:
            found = list(_differences(left, right))
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise BuildError(f"cannot compare {a.name} with {b.name}: {exc}") from exc
    # The files differ, so the answer is never empty (local headers, data descriptors,
    # padding between members are not in ZipInfo).
    return found or ["<zip metadata: archive bytes>"]
