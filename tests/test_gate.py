"""The gate: only listed maintainers approve, and only wheels of the feedstock's own project."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot import gate
from bot.build import provenance
from bot.errors import GateError, UpstreamUnavailable
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


def staged(
    state: State,
    tmp_path: Path,
    name: str,
    version: str,
    *,
    claims: str = "1.0",
    project: str = "demo",
    commit: str | None = None,
    extra: str = "",
    as_statement: bool = False,
) -> Path:
    """Stage a real wheel of NAME VERSION as the build of PROJECT at CLAIMS, from COMMIT.

    With `as_statement` the builder's record is an in-toto provenance statement, else the
    plain dict tick.py passed before statements.
    """
    commit = commit or f"{name}{version}".ljust(40, "0")
    work = tmp_path / "work" / commit
    source = make_project(work / "src", name, version)
    if extra:  # other bytes in the wheel under the same filename
        (source / name / "__init__.py").write_text(extra)
    wheel = make_wheel(source, work / "out")
    build_dir = state.builds_dir / project / commit[:12]
    build_dir.mkdir(parents=True)
    record = (
        statement_of(project, claims, commit, [(wheel.name, sha256_file(wheel))])
        if as_statement
        else {"sdist": {"sha256": "0" * 64}}
    )
    build = gate.stage(
        state,
        project=project,
        version=claims,
        commit=commit,
        build_dir=build_dir,
        wheels=[wheel],
        provenance=record,
    )
    return Path(build.wheels[0])


def statement_of(
    project: str, version: str, commit: str, wheels: list[tuple[str, str]]
) -> dict[str, Any]:
    moment = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return provenance.statement(
        wheels=wheels,
        project=project,
        version=version,
        sdist_filename=f"{project}-{version}.tar.gz",
        sdist_url=f"https://files.example.org/{project}-{version}.tar.gz",
        sdist_sha256="0" * 64,
        feedstock_repo=f"{project}-feedstock",
        feedstock_commit=commit,
        builder=provenance.BuilderInfo("0.1", "CPython 3.12.3", "Linux", None, None, "1.2.2"),
        python="3.12",
        requirements=[provenance.Requirement("flit_core", "3.9.0")],
        started=moment,
        finished=moment,
        sandbox={"network": False},
    )


def test_listed_maintainer_approves_and_publish_promotes(state: State, tmp_path: Path) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0")
    build = gate.approve(state, ENTRY, "1.0", "ALICE")
    (after,) = state.builds()
    assert after.status == "approved" and after.decided_by == "ALICE"
    record = json.loads((build.directory / gate.PROVENANCE).read_text())
    assert record["wheels"][wheel.name] == sha256_file(wheel) and "approver" not in record
    approval = json.loads((build.directory / gate.APPROVAL).read_text())
    assert approval["predicate"]["approver"] == "ALICE"
    (outcome,) = gate.publish_approved(state)
    assert outcome.error is None and [f.filename for f in outcome.files] == [wheel.name]
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


def test_a_damaged_record_is_refused_in_one_line(state: State, tmp_path: Path) -> None:
    staged(state, tmp_path, "demo", "1.0")
    (build,) = state.builds()
    path = build.directory / gate.PROVENANCE
    path.write_text(json.dumps({**json.loads(path.read_text()), "wheels": []}))
    # Not an AttributeError from deep in the gate: a GateError naming the record and the key.
    with pytest.raises(GateError, match=r"^provenance of demo 1\.0: wheels: expected an object$"):
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


def test_a_newer_build_of_the_same_version_supersedes_the_staged_one(
    state: State, tmp_path: Path
) -> None:
    staged(state, tmp_path, "demo", "1.0", commit="a" * 40)
    staged(state, tmp_path, "demo", "1.0", commit="b" * 40)
    assert [(b.commit[0], b.status) for b in state.builds()] == [
        ("a", "superseded"),
        ("b", "staged"),
    ]
    assert gate.approve(state, ENTRY, "1.0", "alice").commit == "b" * 40


def test_a_refused_build_does_not_block_the_others(state: State, tmp_path: Path) -> None:
    staged(state, tmp_path, "demo", "1.0", commit="a" * 40)
    gate.approve(state, ENTRY, "1.0", "alice")
    assert gate.publish_approved(state)[0].error is None
    # The same filename built again from another commit has other bytes: never republished.
    staged(state, tmp_path, "demo", "1.0", commit="b" * 40, extra="CHANGED = True\n")
    other = Entry("other", ("bob",), "https://example.org/o/1", Path("registry/other.yaml"))
    staged(state, tmp_path, "other", "2.0", claims="2.0", project="other", commit="c" * 40)
    gate.approve(state, ENTRY, "1.0", "alice")
    gate.approve(state, other, "2.0", "bob")
    outcomes = {o.build.project: o for o in gate.publish_approved(state)}
    assert outcomes["demo"].error is not None and "other content" in outcomes["demo"].error
    assert outcomes["other"].error is None
    statuses = {(b.project, b.commit[0]): (b.status, b.reason) for b in state.builds()}
    assert statuses[("demo", "b")][0] == "refused" and "other content" in str(
        statuses[("demo", "b")][1]
    )
    assert statuses[("other", "c")][0] == "published"
    assert gate.publish_approved(state) == []  # nothing stuck in approved


def test_never_publishes_a_filename_upstream_serves(state: State, tmp_path: Path) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0")
    gate.approve(state, ENTRY, "1.0", "alice")
    (outcome,) = gate.publish_approved(state, lambda project: {wheel.name, "demo-1.0.tar.gz"})
    assert outcome.error == f"upstream already serves {wheel.name}"
    assert state.builds()[0].status == "refused"
    assert not (state.index_dir / "files" / "demo" / wheel.name).exists()


def test_upstream_down_leaves_the_build_approved(state: State, tmp_path: Path) -> None:
    staged(state, tmp_path, "demo", "1.0")
    gate.approve(state, ENTRY, "1.0", "alice")

    def down(project: str) -> set[str]:
        raise UpstreamUnavailable("upstream http://127.0.0.1:1/simple/ unreachable")

    (outcome,) = gate.publish_approved(state, down)
    assert outcome.error is not None and "could not be asked" in outcome.error
    assert state.builds()[0].status == "approved"
    assert gate.publish_approved(state, lambda project: set())[0].error is None


def test_approval_is_a_statement_beside_the_unchanged_provenance(
    state: State, tmp_path: Path
) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0")
    (staged_build,) = state.builds()
    path = staged_build.directory / gate.PROVENANCE
    before = path.read_bytes()
    gate.approve(state, ENTRY, "1.0", "alice")
    assert path.read_bytes() == before  # approval never rewrites the builder's record
    approval = provenance.read_statement(staged_build.directory / gate.APPROVAL, gate.APPROVAL_TYPE)
    assert approval["_type"] == "https://in-toto.io/Statement/v1"
    assert approval["subject"] == [{"name": wheel.name, "digest": {"sha256": sha256_file(wheel)}}]
    assert list(approval) == ["_type", "subject", "predicateType", "predicate"]
    predicate = approval["predicate"]
    assert predicate["approver"] == "alice"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", predicate["approvedAt"])
    assert predicate["build"] == {
        "project": "demo",
        "version": "1.0",
        "commit": staged_build.commit,
    }
    assert predicate["provenance"] == {"sha256": sha256_file(path)}


def test_a_statement_is_staged_as_given_and_approved_by_its_subject(
    state: State, tmp_path: Path
) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0", as_statement=True)
    (build,) = state.builds()
    written = (build.directory / gate.PROVENANCE).read_text()
    expected = statement_of("demo", "1.0", build.commit, [(wheel.name, sha256_file(wheel))])
    assert written == provenance.dumps(expected)  # nothing added: still the statement's shape
    gate.approve(state, ENTRY, "1.0", "alice")
    approval = json.loads((build.directory / gate.APPROVAL).read_text())
    assert approval["subject"] == expected["subject"]
    (outcome,) = gate.publish_approved(state)
    assert outcome.error is None and [f.filename for f in outcome.files] == [wheel.name]


def test_a_wheel_changed_under_a_statement_is_refused(state: State, tmp_path: Path) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0", as_statement=True)
    wheel.write_bytes(wheel.read_bytes() + b"\0")
    with pytest.raises(GateError, match="changed since it was built"):
        gate.approve(state, ENTRY, "1.0", "alice")


def test_a_statement_naming_other_wheels_is_not_staged(state: State, tmp_path: Path) -> None:
    source = make_project(tmp_path / "src", "demo", "1.0")
    wheel = make_wheel(source, tmp_path / "out")
    build_dir = state.builds_dir / "demo" / "c0ffee"
    build_dir.mkdir(parents=True)
    other = statement_of("demo", "1.0", "c" * 40, [(wheel.name, "1" * 64)])
    with pytest.raises(GateError, match="names other wheels than the build made"):
        gate.stage(
            state,
            project="demo",
            version="1.0",
            commit="c" * 40,
            build_dir=build_dir,
            wheels=[wheel],
            provenance=other,
        )
    not_statement = {**other, "predicateType": "urn:example:other"}
    with pytest.raises(GateError, match="predicateType is 'urn:example:other'"):
        gate.stage(
            state,
            project="demo",
            version="1.0",
            commit="c" * 40,
            build_dir=build_dir,
            wheels=[wheel],
            provenance=not_statement,
        )
    assert wheel.is_file() and state.builds() == []
    assert not (build_dir / gate.PROVENANCE).exists()


def test_provenance_edited_after_approval_is_not_published(state: State, tmp_path: Path) -> None:
    wheel = staged(state, tmp_path, "demo", "1.0", as_statement=True)
    gate.approve(state, ENTRY, "1.0", "alice")
    (build,) = state.builds()
    path = build.directory / gate.PROVENANCE
    record = json.loads(path.read_text())
    record["predicate"]["buildDefinition"]["externalParameters"]["python"] = "3.13"
    path.write_text(json.dumps(record, indent=2) + "\n")
    (outcome,) = gate.publish_approved(state)
    assert outcome.error == "provenance of demo 1.0 changed since it was approved"
    assert state.builds()[0].status == "refused"
    assert not (state.index_dir / "files" / "demo" / wheel.name).exists()


@pytest.mark.parametrize("damage", ["missing", "approver", "commit"])
def test_an_approval_record_that_does_not_match_is_not_published(
    state: State, tmp_path: Path, damage: str
) -> None:
    staged(state, tmp_path, "demo", "1.0")
    gate.approve(state, ENTRY, "1.0", "alice")
    (build,) = state.builds()
    path = build.directory / gate.APPROVAL
    record = json.loads(path.read_text())
    if damage == "missing":
        path.unlink()
    else:
        if damage == "approver":
            record["predicate"]["approver"] = "mallory"
        else:
            record["predicate"]["build"]["commit"] = "f" * 40
        path.write_text(json.dumps(record))
    (outcome,) = gate.publish_approved(state)
    assert outcome.error is not None and outcome.error.startswith("approval of demo 1.0")
    assert state.builds()[0].status == "refused"
