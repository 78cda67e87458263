"""The gate: only listed maintainers approve, and only wheels of the feedstock's own project."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot import gate
from bot.errors import GateError
from bot.fsutil import sha256_file
from bot.registry import Entry
from bot.state import State

from projects import make_project, make_wheel

ENTRY = Entry("demo", ("alice",), "https://example.org/demo/1", Path("registry/demo.yaml"))


@pytest.fixture
def state(tmp_path: Path) -> Iterator[State]:
    state = State(tmp_path / "state")
    yield state
    state.close()


def staged(state: State, tmp_path: Path, name: str, version: str, *, claims: str = "1.0") -> Path:
    """Stage a real wheel of NAME VERSION as the build of demo at CLAIMS."""
    wheel = make_wheel(
        make_project(tmp_path / "src", name, version), tmp_path / "out" / name / version
    )
    build_dir = state.builds_dir / "demo" / f"{version}{name}"
    build_dir.mkdir(parents=True)
    build = gate.stage(
        state,
        project="demo",
        version=claims,
        commit=f"{name}{version}".ljust(40, "0"),
        build_dir=build_dir,
        wheels=[wheel],
        provenance={"sdist": {"sha256": "0" * 64}},
    )
    return Path(build.wheels[0])


def test_listed_maintainer_approves_and_publish_promotes(state: State, tmp_path: Path) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0")
    build = gate.approve(state, ENTRY, "1.0", "ALICE")
    (after,) = state.builds()
    assert after.status == "approved" and after.decided_by == "ALICE"
    record = json.loads((build.directory / gate.PROVENANCE).read_text())
    assert record["approver"] == "ALICE" and record["wheels"][wheel.name] == sha256_file(wheel)
    ((_, files),) = gate.publish_approved(state)
    assert [f.filename for f in files] == [wheel.name]
    assert (state.index_dir / "files" / "demo" / wheel.name).read_bytes() == wheel.read_bytes()
    assert state.builds()[0].status == "published"
    assert gate.publish_approved(state) == []


def test_unlisted_handle_is_refused(state: State, tmp_path: Path) -> None:
    staged(state, tmp_path, "demo", "1.0")
    with pytest.raises(GateError, match="'bob' is not a maintainer of demo"):
        gate.approve(state, ENTRY, "1.0", "bob")
    with pytest.raises(GateError, match="not a maintainer"):
        gate.reject(state, ENTRY, "1.0", "bob", "because")
    assert state.builds()[0].status == "staged"


def test_wheel_of_another_project_is_refused(state: State, tmp_path: Path) -> None:
    staged(state, tmp_path, "intruder", "1.0")
    with pytest.raises(
        GateError,
        match="intruder-1.0-py3-none-any.whl is intruder 1.0, but the feedstock builds demo 1.0",
    ):
        gate.approve(state, ENTRY, "1.0", "alice")
    assert state.builds()[0].status == "staged"


def test_wheel_of_another_version_is_refused(state: State, tmp_path: Path) -> None:
    staged(state, tmp_path, "demo", "2.0", claims="1.0")
    with pytest.raises(GateError, match="is demo 2.0, but the feedstock builds demo 1.0"):
        gate.approve(state, ENTRY, "1.0", "alice")


def test_wheel_changed_in_staging_is_refused(state: State, tmp_path: Path) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0")
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    with pytest.raises(GateError, match="changed since it was built"):
        gate.approve(state, ENTRY, "1.0", "alice")


def test_reject_needs_reason_and_unknown_build(state: State, tmp_path: Path) -> None:
    with pytest.raises(GateError, match="no staged build of demo 1.0"):
        gate.approve(state, ENTRY, "1.0", "alice")
    staged(state, tmp_path, "demo", "1.0")
    with pytest.raises(GateError, match="needs a --reason"):
        gate.reject(state, ENTRY, "1.0", "alice", "  ")
    with pytest.raises(GateError, match="not a valid version"):
        gate.approve(state, ENTRY, "one", "alice")
    gate.reject(state, ENTRY, "1.0", "alice", "broken on 3.13")
    (build,) = state.builds()
    assert (build.status, build.reason) == ("rejected", "broken on 3.13")
