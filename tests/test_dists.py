"""bot.dists: the one set of checks on wheels and names the builder, gate, index and
metadata reader share."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from bot import dists
from bot.errors import DistributionError


def wheel(
    tmp_path: Path,
    filename: str = "demo-1.0-py3-none-any.whl",
    members: dict[str, bytes] | None = None,
) -> Path:
    path = tmp_path / filename
    if members is None:
        members = {
            "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n"
        }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("demo/__init__.py", "")
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_wheel_of_the_project_is_taken(tmp_path: Path) -> None:
    version, data = dists.check_wheel(wheel(tmp_path), "Demo", Version("1.0"))
    assert version == Version("1.0") and b"Name: demo" in data


META = "demo-1.0.dist-info/METADATA"


@pytest.mark.parametrize(
    ("filename", "members", "message"),
    [
        pytest.param(
            "other-1.0-py3-none-any.whl",
            None,
            "is a wheel of other 1.0, not of demo 1.0",
            id="other-project",
        ),
        pytest.param(
            "demo-2.0-py3-none-any.whl",
            None,
            "is a wheel of demo 2.0, not of demo 1.0",
            id="other-version",
        ),
        pytest.param("demo-1.0.tar.gz", None, "is not a wheel filename", id="not-a-wheel-name"),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {META: b"Name: evil\nVersion: 1.0\n"},
            "METADATA says evil 1.0, not demo 1.0",
            id="metadata-of-another-project",
        ),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {META: b"Name: demo\nVersion: 9.9\n"},
            "METADATA says demo 9.9",
            id="metadata-of-another-version",
        ),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {"other-1.0.dist-info/METADATA": b"Name: demo\nVersion: 1.0\n"},
            "has no single .dist-info/METADATA of demo (0 found)",
            id="only-another-projects-dist-info",
        ),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {META: b"Name: demo\nVersion: 1.0\n", "demo-1.1.dist-info/METADATA": b"x"},
            "(2 found)",
            id="two-of-its-own",
        ),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {"demo/demo-1.0.dist-info/METADATA": b"Name: demo\nVersion: 1.0\n"},
            "(0 found)",
            id="not-at-the-top",
        ),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {META: b"Name: demo\nVersion: 1.0\n" + b"X: " + b"a" * (2 << 20) + b"\n"},
            "is larger than 1048576 bytes",
            id="a-bomb-is-read-only-so-far",
        ),
        pytest.param(
            "demo-1.0-py3-none-any.whl",
            {META: b"Name: d\xe9mo\nVersion: 1.0\n"},
            "METADATA is not UTF-8",
            id="not-utf-8",
        ),
    ],
)
def test_wheels_that_are_not_what_they_claim_are_refused(
    tmp_path: Path, filename: str, members: dict[str, bytes] | None, message: str
) -> None:
    with pytest.raises(DistributionError) as refused:
        dists.check_wheel(wheel(tmp_path, filename, members), "demo", Version("1.0"))
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_a_file_that_is_no_zip_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "demo-1.0-py3-none-any.whl"
    path.write_bytes(b"not a zip")
    with pytest.raises(
        DistributionError, match=r"^demo-1.0-py3-none-any.whl is not a readable zip"
    ):
        dists.check_wheel(path, "demo")


@pytest.mark.parametrize(
    ("name", "bare"),
    [
        ("demo-1.0.tar.gz", True),
        ("", False),
        (".hidden", False),
        ("a/b", False),
        ("a\\b", False),
        ("a\0b", False),
        ("..", False),
    ],
)
def test_bare_filenames(name: str, bare: bool) -> None:
    assert dists.is_bare_filename(name) is bare


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("demo", True),
        ("Demo.Pkg_2", True),
        ("a", True),
        ("../x", False),
        ("-x", False),
        ("x-", False),
        ("", False),
    ],
)
def test_project_names(name: str, valid: bool) -> None:
    assert dists.is_project_name(name) is valid
