"""Provenance: the in-toto Statement with its SLSA v1 predicate, and comparing two wheels."""

from __future__ import annotations

import json
import re
import zipfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot.build import provenance
from bot.build.provenance import BuilderInfo, Requirement
from bot.errors import BuildError

WHEEL_A = "demo-1.0-cp312-cp312-manylinux_2_17_x86_64.whl"
WHEEL_B = "demo-1.0-py3-none-any.whl"
COMMIT = "ab" * 20
SDIST_SHA = "5" * 64
RFC3339_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
BUILDER = BuilderInfo(
    wheelstock="0.1.0",
    python="CPython 3.12.3",
    platform="Linux-6.8-x86_64",
    bwrap="0.9.0",
    auditwheel=None,
    build="1.2.2",
)


def make(**overrides: Any) -> dict[str, Any]:
    """A statement of two wheels, with ARGUMENTS overridden."""
    arguments: dict[str, Any] = {
        # Given out of order: the statement sorts, so the output directory's order never shows.
        "wheels": [(WHEEL_B, "b" * 64), (WHEEL_A, "a" * 64)],
        "project": "Demo",
        "version": "1.0",
        "sdist_filename": "demo-1.0.tar.gz",
        "sdist_url": "https://files.example.org/demo-1.0.tar.gz",
        "sdist_sha256": SDIST_SHA,
        "feedstock_repo": "https://forge.example.org/demo-feedstock",
        "feedstock_commit": COMMIT,
        "builder": BUILDER,
        "python": "3.12",
        "requirements": [
            Requirement("setuptools", "69.0.0"),
            Requirement("Flit_Core", "3.9.0+local", "c" * 64),
        ],
        # Another zone on purpose: the record is in UTC.
        "started": datetime(2024, 5, 1, 14, 0, 0, tzinfo=timezone(timedelta(hours=2))),
        "finished": datetime(2024, 5, 1, 12, 3, 30, 123456, tzinfo=UTC),
        "sandbox": {"network": False, "limits": {"seconds": 600, "memory": 2 << 30}},
    }
    arguments.update(overrides)
    return provenance.statement(**arguments)


def test_statement_shape() -> None:
    record = make(invocation_id="build-7")
    assert list(record) == ["_type", "subject", "predicateType", "predicate"]
    assert record["_type"] == "https://in-toto.io/Statement/v1"
    assert record["predicateType"] == "https://slsa.dev/provenance/v1"
    assert record["subject"] == [
        {"name": WHEEL_A, "digest": {"sha256": "a" * 64}},
        {"name": WHEEL_B, "digest": {"sha256": "b" * 64}},
    ]
    predicate = record["predicate"]
    assert list(predicate) == ["buildDefinition", "runDetails"]
    definition = predicate["buildDefinition"]
    assert definition["buildType"] == provenance.BUILD_TYPE == "urn:wheelstock:build:v1"
    assert definition["externalParameters"] == {
        "project": "demo",
        "version": "1.0",
        "python": "3.12",
        "feedstock": {"repository": "https://forge.example.org/demo-feedstock", "commit": COMMIT},
        "sdist": {
            "filename": "demo-1.0.tar.gz",
            "url": "https://files.example.org/demo-1.0.tar.gz",
            "sha256": SDIST_SHA,
        },
    }
    assert definition["internalParameters"] == {
        "sandbox": {"limits": {"memory": 2 << 30, "seconds": 600}, "network": False}
    }
    feedstock, sdist, *requirements = definition["resolvedDependencies"]
    assert feedstock == {
        "uri": f"git+https://forge.example.org/demo-feedstock@{COMMIT}",
        "digest": {"gitCommit": COMMIT},
        "name": "feedstock",
    }
    assert sdist == {
        "uri": "https://files.example.org/demo-1.0.tar.gz",
        "digest": {"sha256": SDIST_SHA},
        "name": "demo-1.0.tar.gz",
    }
    # Sorted by normalised name; a local version's "+" is escaped in the purl; no digest
    # when the installer did not say.
    assert requirements == [
        {
            "uri": "pkg:pypi/flit-core@3.9.0%2Blocal",
            "name": "flit-core",
            "digest": {"sha256": "c" * 64},
        },
        {"uri": "pkg:pypi/setuptools@69.0.0", "name": "setuptools"},
    ]
    run = predicate["runDetails"]
    assert run["builder"] == {
        "id": provenance.BUILDER_ID,
        "version": {
            "wheelstock": "0.1.0",
            "python": "CPython 3.12.3",
            "platform": "Linux-6.8-x86_64",
            "bwrap": "0.9.0",
            "build": "1.2.2",
        },  # auditwheel was not there, so it is absent rather than null
    }
    assert run["metadata"] == {
        "invocationId": "build-7",
        "startedOn": "2024-05-01T12:00:00Z",
        "finishedOn": "2024-05-01T12:03:30Z",
    }
    assert all(RFC3339_Z.fullmatch(t) for k, t in run["metadata"].items() if k != "invocationId")
    assert "byproducts" not in run  # not checked for reproducibility
    assert provenance.reproducibility(record) is None
    assert provenance.subject_digests(record) == {WHEEL_A: "a" * 64, WHEEL_B: "b" * 64}


def test_reproducibility_result_is_a_byproduct() -> None:
    record = make(reproducible={"identical": False, "differences": ("demo/_ext.so",)})
    assert record["predicate"]["runDetails"]["byproducts"] == [
        {
            "uri": "urn:wheelstock:reproducibility:v1",
            "name": "reproducibility",
            "annotations": {"differences": ["demo/_ext.so"], "identical": False},
        }
    ]
    assert provenance.reproducibility(record) == {
        "differences": ["demo/_ext.so"],
        "identical": False,
    }
    assert "invocationId" not in record["predicate"]["runDetails"]["metadata"]


def test_statement_is_json_and_deterministic() -> None:
    first = provenance.dumps(make(reproducible={"identical": True, "differences": []}))
    # The same facts given in other orders produce the same bytes.
    again = provenance.dumps(
        make(
            wheels=[(WHEEL_A, "a" * 64), (WHEEL_B, "b" * 64)],
            requirements=[
                Requirement("Flit_Core", "3.9.0+local", "c" * 64),
                Requirement("setuptools", "69.0.0"),
            ],
            sandbox={"limits": {"memory": 2 << 30, "seconds": 600}, "network": False},
            reproducible={"differences": [], "identical": True},
        )
    )
    assert first == again and first.endswith("}\n")
    assert json.loads(first) == make(reproducible={"identical": True, "differences": []})
    assert list(json.loads(first)) == ["_type", "subject", "predicateType", "predicate"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"wheels": []}, "at least one wheel"),
        ({"wheels": [(WHEEL_A, "a" * 64), (WHEEL_A, "b" * 64)]}, "wheels named twice"),
        ({"wheels": [(WHEEL_A, "A" * 64)]}, "not a lowercase sha256"),
        ({"sdist_sha256": "abc"}, "sdist: 'abc' is not a lowercase sha256"),
        ({"started": datetime(2024, 5, 1)}, "started: .* has no time zone"),
        ({"finished": datetime(2024, 4, 1, tzinfo=UTC)}, "is before started"),
        ({"sandbox": {"tool": object()}}, "sandbox.tool: object is not JSON data"),
    ],
)
def test_statement_refuses_bad_facts(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make(**overrides)


def test_purl_normalises_the_name() -> None:
    assert provenance.purl("Zope.Interface", "1!2.0") == "pkg:pypi/zope-interface@1%212.0"


def test_read_statement(tmp_path: Path) -> None:
    good = tmp_path / "provenance.json"
    good.write_text(provenance.dumps(make()))
    assert provenance.read_statement(good) == make()

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"project": "demo", "wheels": {}}))
    with pytest.raises(BuildError, match=r"other.json: not an in-toto statement \(_type is None\)"):
        provenance.read_statement(other)
    other.write_text(json.dumps(["a list"]))
    with pytest.raises(BuildError, match="not an in-toto statement"):
        provenance.read_statement(other)
    other.write_text(json.dumps({**make(), "predicateType": "urn:example:x"}))
    with pytest.raises(BuildError, match="predicateType is 'urn:example:x'"):
        provenance.read_statement(other)
    other.write_text(json.dumps({**make(), "subject": [{"name": WHEEL_A, "digest": {}}]}))
    with pytest.raises(BuildError, match=r"subject\[0\] has no name and sha256 digest"):
        provenance.read_statement(other)

    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "_type": \n')
    with pytest.raises(BuildError, match=r"bad.json:3: not JSON") as caught:
        provenance.read_statement(bad)
    assert "\n" not in str(caught.value)
    with pytest.raises(BuildError, match="missing.json: cannot read"):
        provenance.read_statement(tmp_path / "missing.json")


# Members as (name, bytes, date_time, mode); a wheel is a zip, which is all differing_members reads.
Member = tuple[str, bytes, tuple[int, int, int, int, int, int], int]
WHEN = (2024, 5, 1, 12, 0, 0)
MEMBERS: list[Member] = [
    ("demo/__init__.py", b"VALUE = 1\n", WHEN, 0o644),
    ("demo/_ext.so", b"\x7fELF" + bytes(64), WHEN, 0o755),
    ("demo-1.0.dist-info/RECORD", b"demo/__init__.py,,\n", WHEN, 0o644),
]


def write_zip(path: Path, members: list[Member], comment: bytes = b"") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data, when, mode in members:
            info = zipfile.ZipInfo(name, when)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
        archive.comment = comment
    return path


def pair(tmp_path: Path, b: list[Member], comment: bytes = b"") -> tuple[Path, Path]:
    return (
        write_zip(tmp_path / "a.whl", MEMBERS),
        write_zip(tmp_path / "b.whl", b, comment),
    )


def test_identical_wheels_have_no_differences(tmp_path: Path) -> None:
    a, b = pair(tmp_path, list(MEMBERS))
    assert a.read_bytes() == b.read_bytes()
    assert provenance.differing_members(a, b) == []


def test_identical_bytes_are_not_parsed(tmp_path: Path) -> None:
    # Byte-identical files compare equal before any zip parsing, even when not zips at all.
    (tmp_path / "a").write_bytes(b"not a zip")
    (tmp_path / "b").write_bytes(b"not a zip")
    assert provenance.differing_members(tmp_path / "a", tmp_path / "b") == []
    (tmp_path / "b").write_bytes(b"not a zip either")
    with pytest.raises(BuildError, match="not a zip archive"):
        provenance.differing_members(tmp_path / "a", tmp_path / "b")


def test_a_member_with_other_bytes(tmp_path: Path) -> None:
    changed = [
        MEMBERS[0],
        ("demo/_ext.so", b"\x7fELF" + bytes(63) + b"\1", WHEN, 0o755),
        MEMBERS[2],
    ]
    a, b = pair(tmp_path, changed)
    assert provenance.differing_members(a, b) == ["demo/_ext.so"]
    # Other bytes and another timestamp: both are said.
    changed[1] = (*changed[1][:2], (2024, 5, 1, 12, 0, 2), 0o755)
    a, b = pair(tmp_path, changed)
    assert provenance.differing_members(a, b) == [
        "demo/_ext.so",
        "<zip metadata: demo/_ext.so (timestamp)>",
    ]


def test_a_member_missing(tmp_path: Path) -> None:
    a, b = pair(tmp_path, MEMBERS[:2])
    assert provenance.differing_members(a, b) == ["demo-1.0.dist-info/RECORD"]
    assert provenance.differing_members(b, a) == ["demo-1.0.dist-info/RECORD"]


def test_only_a_timestamp_differs(tmp_path: Path) -> None:
    later = (2024, 5, 1, 12, 0, 2)
    a, b = pair(tmp_path, [MEMBERS[0], (*MEMBERS[1][:2], later, 0o755), MEMBERS[2]])
    assert provenance.differing_members(a, b) == ["<zip metadata: demo/_ext.so (timestamp)>"]


def test_permissions_order_and_comment(tmp_path: Path) -> None:
    reordered = [MEMBERS[2], MEMBERS[1], (*MEMBERS[0][:3], 0o600)]
    a, b = pair(tmp_path, reordered, comment=b"built twice")
    assert provenance.differing_members(a, b) == [
        "<zip metadata: demo/__init__.py (permissions)>",
        "<zip metadata: member order>",
        "<zip metadata: archive comment>",
    ]


def test_compression_is_zip_metadata(tmp_path: Path) -> None:
    a = write_zip(tmp_path / "a.whl", [("data.txt", b"x" * 10_000, WHEN, 0o644)])
    b = tmp_path / "b.whl"
    with zipfile.ZipFile(b, "w", zipfile.ZIP_STORED) as archive:
        info = zipfile.ZipInfo("data.txt", WHEN)
        info.external_attr = 0o100644 << 16
        archive.writestr(info, b"x" * 10_000)
    assert provenance.differing_members(a, b) == [
        "<zip metadata: data.txt (compression, compressed size)>"
    ]


def test_files_that_differ_are_never_reported_equal(tmp_path: Path) -> None:
    # Bytes before the first member: every member and header reads the same, the files do not.
    a = write_zip(tmp_path / "a.whl", MEMBERS)
    b = tmp_path / "b.whl"
    b.write_bytes(b"padding" + a.read_bytes())
    assert provenance.differing_members(a, b) == ["<zip metadata: archive bytes>"]
