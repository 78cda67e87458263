"""The review gate: staged builds, maintainer approval, ownership checks, promotion."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from bot import dists, index, signing
from bot.build import provenance as statements
from bot.errors import BuildError, DistributionError, GateError, PublishError, UpstreamError
from bot.fsutil import atomic_write_text, sha256_file
from bot.registry import Entry
from bot.state import Build, State, now
from bot.typed import Mismatch, as_dict

PROVENANCE = "provenance.json"
# The maintainer's approval: its own in-toto Statement beside the builder's, so the
# provenance stays exactly what the builder wrote and the approval names it by sha256.
APPROVAL = "approval.json"
APPROVAL_TYPE = "urn:wheelstock:approval:v1"


def staging_dir(state: State, project: str, commit: str) -> Path:
    return state.root / "staging" / project / commit[:12]


def stage(
    state: State,
    *,
    project: str,
    version: str,
    commit: str,
    build_dir: Path,
    wheels: Sequence[Path],
    provenance: Mapping[str, Any],
) -> Build:
    """Move a successful build's wheels into staging with their provenance record.

    A statement (a record with ``_type``) is written as given, after its subject is checked
    against the wheels; any other record gets the wheels' sha256 and the staging time added.
    """
    files = {wheel.name: sha256_file(wheel) for wheel in wheels}
    if "_type" in provenance:
        try:
            subject = statements.subject_digests(statements.check_statement(dict(provenance)))
        except ValueError as exc:
            raise GateError(f"provenance of {project} {version}: {exc}") from exc
        if subject != files:
            raise GateError(
                f"provenance of {project} {version} names other wheels than the build made"
            )
        text = statements.dumps(provenance)
    else:
        text = json.dumps({**provenance, "wheels": files, "staged_at": now()}, indent=2) + "\n"
    target = staging_dir(state, project, commit)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    staged: list[str] = []
    for wheel in wheels:
        dest = target / wheel.name
        shutil.move(str(wheel), dest)
        staged.append(str(dest))
    atomic_write_text(build_dir / PROVENANCE, text)
    # One build per version awaits review, so "approve PROJECT VERSION" names exactly one.
    for older in state.builds(project=project, status="staged"):
        if Version(older.version) == Version(version):
            state.set_status(older, "superseded", reason=f"superseded by {commit[:12]}")
    return state.record_build(
        project=project,
        version=version,
        commit=commit,
        status="staged",
        directory=build_dir,
        wheels=tuple(staged),
    )


def find(state: State, project: str, version: str, status: str = "staged") -> Build:
    """The newest build of PROJECT at VERSION with the given status."""
    name = canonicalize_name(project)
    try:
        wanted = Version(version)
    except ValueError as exc:
        raise GateError(f"{version!r} is not a valid version") from exc
    matches = [b for b in state.builds(project=name, status=status) if Version(b.version) == wanted]
    if not matches:
        raise GateError(f"no {status} build of {name} {version} (see `wheelstock review list`)")
    return matches[-1]


def _wheel_identity(path: Path) -> tuple[str, Version]:
    try:
        name, _, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise GateError(f"staged file {path.name} is not a wheel") from exc
    try:
        version, _ = dists.check_wheel(path, name)
    except DistributionError as exc:
        raise GateError(str(exc)) from exc
    return name, version


def _read_provenance(build: Build) -> dict[str, Any]:
    path = build.directory / PROVENANCE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GateError(f"provenance of {build.project} {build.version} unreadable: {exc}") from exc
    if not isinstance(record, dict):
        raise GateError(f"provenance of {build.project} {build.version} is not a JSON object")
    if "_type" in record:
        try:
            return statements.read_statement(path)
        except BuildError as exc:
            raise GateError(str(exc)) from exc
    # A record staged before statements: stage() added the wheels' sha256 by name.
    try:
        as_dict(record.get("wheels", {}), "wheels")
    except Mismatch as exc:
        raise GateError(f"provenance of {build.project} {build.version}: {exc}") from exc
    return record


def _subject(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The in-toto subject of a provenance record: its own, or built from its wheels."""
    if "_type" in record:
        return list(record["subject"])
    wheels: dict[str, str] = record.get("wheels", {})
    return [{"name": n, "digest": {"sha256": d}} for n, d in sorted(wheels.items())]


def check_build(build: Build) -> None:
    """Ownership rules: every wheel is the feedstock's project at its version, bytes unchanged."""
    expected = {s["name"]: s["digest"]["sha256"] for s in _subject(_read_provenance(build))}
    if not build.wheels:
        raise GateError(f"build of {build.project} {build.version} has no wheels")
    for wheel in map(Path, build.wheels):
        if not wheel.is_file():
            raise GateError(f"staged wheel {wheel.name} is missing")
        if expected.get(wheel.name) != sha256_file(wheel):
            raise GateError(f"staged wheel {wheel.name} changed since it was built")
        name, version = _wheel_identity(wheel)
        if name != canonicalize_name(build.project) or version != Version(build.version):
            raise GateError(
                f"{wheel.name} is {name} {version}, but the feedstock builds "
                f"{build.project} {build.version}"
            )


def _require_maintainer(entry: Entry, handle: str) -> None:
    if not entry.is_maintainer(handle):
        raise GateError(
            f"'{handle}' is not a maintainer of {entry.name} "
            f"(listed in {entry.path}: {', '.join(entry.maintainers)})"
        )


def approve(state: State, entry: Entry, version: str, handle: str) -> Build:
    """A listed maintainer approves the staged build of ``entry`` at ``version``."""
    _require_maintainer(entry, handle)
    build = find(state, entry.name, version)
    check_build(build)
    atomic_write_text(build.directory / APPROVAL, statements.dumps(approval(build, handle)))
    state.set_status(build, "approved", by=handle)
    return build


def approval(build: Build, handle: str) -> dict[str, Any]:
    """The approval record of BUILD by HANDLE: the provenance's subject, and its sha256."""
    path = build.directory / PROVENANCE
    return {
        "_type": statements.STATEMENT_TYPE,
        "subject": _subject(_read_provenance(build)),
        "predicateType": APPROVAL_TYPE,
        "predicate": {
            "approver": handle,
            "approvedAt": now(),
            "build": {"project": build.project, "version": build.version, "commit": build.commit},
            "provenance": {"sha256": sha256_file(path)},
        },
    }


def check_approval(build: Build) -> dict[str, Any]:
    """The approval record of an approved build, refused unless it names this very build."""
    what = f"{build.project} {build.version}"
    try:
        record = statements.read_statement(build.directory / APPROVAL, APPROVAL_TYPE)
    except BuildError as exc:
        raise GateError(f"approval of {what}: {exc}") from exc
    predicate = record["predicate"]
    covered = predicate.get("provenance")
    # The approval covers the provenance it was given, byte for byte (DESIGN, trust rules:
    # the record users check names the approver of exactly these wheels).
    if not isinstance(covered, dict) or covered.get("sha256") != sha256_file(
        build.directory / PROVENANCE
    ):
        raise GateError(f"provenance of {what} changed since it was approved")
    if record["subject"] != _subject(_read_provenance(build)):
        raise GateError(f"approval of {what} names other wheels than its provenance")
    if predicate.get("approver") != build.decided_by or predicate.get("build") != {
        "project": build.project,
        "version": build.version,
        "commit": build.commit,
    }:
        raise GateError(f"approval of {what} is not the one recorded for {build.commit[:12]}")
    return record


def reject(state: State, entry: Entry, version: str, handle: str, reason: str) -> Build:
    _require_maintainer(entry, handle)
    if not reason.strip():
        raise GateError("a rejection needs a --reason")
    build = find(state, entry.name, version)
    state.set_status(build, "rejected", by=handle, reason=reason)
    return build


# What upstream serves for a project (filenames); the index never shadows those.
UpstreamFiles = Callable[[str], Collection[str]]


@dataclass(frozen=True)
class Outcome:
    """What happened to one approved build when the gate tried to promote it."""

    build: Build
    files: tuple[index.IndexedFile, ...] = ()
    error: str | None = None

    def line(self) -> str:
        what = f"{self.build.project} {self.build.version}"
        if self.error is not None:
            return f"error: not published {what}: {self.error}"
        return f"published {what}: {', '.join(f.filename for f in self.files)}"


def signed_provenance(
    state: State, build: Build, wheels: Sequence[Path], approved: Mapping[str, Any]
) -> dict[str, bytes]:
    """Each wheel's publication statement (provenance plus approval), signed by the index key.

    The public key goes to its fixed place in the tree first, so a page never links a
    document nobody could check.
    """
    key = signing.load_or_create_key(state.root)
    signing.publish_public_key(state.index_dir, key)
    provenance = _read_provenance(build)
    documents = {}
    for wheel in wheels:
        statement = signing.publication(wheel.name, sha256_file(wheel), provenance, approved)
        envelope = signing.sign(statement, key)
        documents[wheel.name] = (json.dumps(envelope, indent=2) + "\n").encode()
    return documents


def publish_approved(state: State, upstream_files: UpstreamFiles | None = None) -> list[Outcome]:
    """Promote every approved build into the index; the gate is checked again first.

    A build the index refuses is marked refused with its reason and never blocks the others;
    when upstream cannot be asked, the build stays approved for the next try.
    """
    outcomes = []
    for build in state.builds(status="approved"):
        wheels = [Path(w) for w in build.wheels]
        try:
            check_build(build)
            approved = check_approval(build)
            if upstream_files is not None:
                # A filename upstream serves is upstream's (DESIGN, trust rules): pip would
                # see two files under one name with different bytes.
                taken = set(upstream_files(build.project)) & {w.name for w in wheels}
                if taken:
                    raise PublishError(f"upstream already serves {', '.join(sorted(taken))}")
            files = index.publish(
                state.index_dir,
                build.project,
                wheels,
                provenance=signed_provenance(state, build, wheels, approved),
            )
        except UpstreamError as exc:
            outcomes.append(Outcome(build, error=f"upstream could not be asked: {exc}"))
            continue
        except (GateError, PublishError) as exc:
            state.set_status(build, "refused", reason=str(exc))
            outcomes.append(Outcome(build, error=str(exc)))
            continue
        state.set_status(build, "published")
        outcomes.append(Outcome(build, tuple(files)))
    return outcomes
