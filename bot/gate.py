"""The review gate: staged builds, maintainer approval, ownership checks, promotion."""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import Version

from bot import index
from bot.errors import GateError, PublishError, UpstreamError
from bot.fsutil import atomic_write_text, sha256_file
from bot.registry import Entry
from bot.state import Build, State, now

PROVENANCE = "provenance.json"


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
    """Move a successful build's wheels into staging with their provenance record."""
    target = staging_dir(state, project, commit)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    staged: list[str] = []
    files: dict[str, str] = {}
    for wheel in wheels:
        dest = target / wheel.name
        shutil.move(str(wheel), dest)
        staged.append(str(dest))
        files[wheel.name] = sha256_file(dest)
    record = {**provenance, "wheels": files, "staged_at": now(), "approver": None}
    atomic_write_text(build_dir / PROVENANCE, json.dumps(record, indent=2) + "\n")
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
        name, version, _, _ = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise GateError(f"staged file {path.name} is not a wheel") from exc
    with zipfile.ZipFile(path) as archive:
        meta_name = next(
            (
                n
                for n in archive.namelist()
                if n.endswith(".dist-info/METADATA") and n.count("/") == 1
            ),
            None,
        )
        if meta_name is None:
            raise GateError(f"{path.name} has no .dist-info/METADATA")
        headers = HeaderParser().parsestr(archive.read(meta_name).decode("utf-8", "replace"))
    if (
        canonicalize_name(headers.get("Name", "")) != name
        or Version(headers.get("Version", "0")) != version
    ):
        raise GateError(
            f"{path.name}: metadata names {headers.get('Name')} {headers.get('Version')}"
        )
    return name, version


def check_build(build: Build) -> None:
    """Ownership rules: every wheel is the feedstock's project at its version, bytes unchanged."""
    record = json.loads((build.directory / PROVENANCE).read_text(encoding="utf-8"))
    expected: dict[str, str] = record.get("wheels", {})
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
    path = build.directory / PROVENANCE
    record = json.loads(path.read_text(encoding="utf-8"))
    record["approver"] = handle
    record["approved_at"] = now()
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    state.set_status(build, "approved", by=handle)
    return build


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
            if upstream_files is not None:
                # A filename upstream serves is upstream's (DESIGN, trust rules): pip would
                # see two files under one name with different bytes.
                taken = set(upstream_files(build.project)) & {w.name for w in wheels}
                if taken:
                    raise PublishError(f"upstream already serves {', '.join(sorted(taken))}")
            files = index.publish(state.index_dir, build.project, wheels)
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
