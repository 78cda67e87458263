"""Tests for bot.versions: grouping files into releases and choosing the wanted one."""

from __future__ import annotations

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bot.upstream import DistFile
from bot.versions import Release, latest_release, releases


def sdist(version: str, *, yanked: str | None = None, ext: str = "tar.gz") -> DistFile:
    name = f"demo-{version}.{ext}"
    return DistFile(
        filename=name, url=f"http://127.0.0.1/files/{name}", sha256="0" * 64, yanked=yanked
    )


def wheel(version: str, *, yanked: str | None = None) -> DistFile:
    name = f"demo-{version}-py3-none-any.whl"
    return DistFile(
        filename=name, url=f"http://127.0.0.1/files/{name}", sha256="1" * 64, yanked=yanked
    )


def other(filename: str) -> DistFile:
    return DistFile(filename=filename, url=f"http://127.0.0.1/files/{filename}", sha256=None)


LATEST_CASES = [
    pytest.param([sdist("1.0"), sdist("1.1rc1")], {}, "1.0", id="rc-newer-than-final"),
    pytest.param([sdist("1.0"), sdist("1.1rc1")], {"prereleases": True}, "1.1rc1", id="rc-wanted"),
    pytest.param(
        [sdist("1.1rc1"), sdist("1.1")], {"prereleases": True}, "1.1", id="final-beats-its-rc"
    ),
    pytest.param([sdist("1.0"), sdist("1.1.dev0")], {}, "1.0", id="dev-skipped"),
    pytest.param([sdist("2.0a1")], {}, None, id="only-prereleases"),
    pytest.param([sdist("2024.1"), sdist("1!0.1")], {}, "1!0.1", id="epoch-wins"),
    pytest.param([sdist("1.0"), sdist("1.0.post1")], {}, "1.0.post1", id="post-is-final"),
    pytest.param([sdist("1.0"), sdist("1.1", yanked="broken")], {}, "1.0", id="yanked-newest"),
    pytest.param(
        [sdist("1.0"), sdist("1.1", yanked=""), wheel("1.1", yanked="")],
        {},
        "1.0",
        id="yanked-newest-empty-reason",
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.1", yanked="bad sdist"), wheel("1.1")],
        {},
        "1.0",
        id="only-sdist-yanked",
    ),
    pytest.param([sdist("1.0"), wheel("1.1")], {}, "1.0", id="wheel-only-release-skipped"),
    pytest.param([sdist("1.0", ext="zip")], {}, "1.0", id="zip-sdist-counts"),
    pytest.param([sdist("1.0"), wheel("1.0.0")], {}, "1.0", id="1.0-and-1.0.0-one-release"),
    pytest.param([sdist("1.0")], {"newer_than": Version("1.0")}, None, id="newer-than-equal"),
    pytest.param(
        [sdist("1.0")], {"newer_than": Version("1.0.0")}, None, id="newer-than-equal-spelling"
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.1")], {"newer_than": Version("1.0")}, "1.1", id="newer-than-lower"
    ),
    pytest.param([sdist("1.0")], {"newer_than": Version("2.0")}, None, id="newer-than-higher"),
    pytest.param(
        [sdist("1.0"), sdist("1.1", yanked="x")],
        {"newer_than": Version("1.0")},
        None,
        id="newer-than-only-yanked-newer",
    ),
    pytest.param([other("demo-latest.tar.gz"), other("README")], {}, None, id="unparsable"),
    pytest.param([], {}, None, id="no-files"),
]


@pytest.mark.parametrize(("files", "kwargs", "expected"), LATEST_CASES)
def test_latest_release(
    files: list[DistFile], kwargs: dict[str, object], expected: str | None
) -> None:
    release = latest_release(files, **kwargs)  # type: ignore[arg-type]
    if expected is None:
        assert release is None
    else:
        assert release is not None
        assert str(release.version) == expected
        assert release.sdist is not None
        assert release.sdist.yanked is None


def test_releases_group_sort_and_skip() -> None:
    files = [
        sdist("2.0"),
        other("demo-nightly.tar.gz"),
        wheel("1.0.0"),
        sdist("1!0.5"),
        sdist("1.0"),
        sdist("2.0rc1"),
        other("demo-1.0.tar.bz2"),
    ]
    result = releases(files)
    assert [str(r.version) for r in result] == ["1.0", "2.0rc1", "2.0", "1!0.5"]
    # 1.0 and 1.0.0 are one release (PEP 440), spelled as the sdist spells it.
    assert [f.filename for f in result[0].files] == [
        "demo-1.0.0-py3-none-any.whl",
        "demo-1.0.tar.gz",
    ]


def test_release_version_falls_back_to_first_file_without_sdist() -> None:
    (release,) = releases([wheel("1.0.0"), wheel("1.0")])
    assert str(release.version) == "1.0.0"
    assert release.sdist is None


SDIST_CASES = [
    pytest.param([sdist("1.0", ext="zip"), sdist("1.0")], "demo-1.0.tar.gz", id="tar.gz-over-zip"),
    pytest.param([wheel("1.0"), sdist("1.0", ext="zip")], "demo-1.0.zip", id="zip-when-alone"),
    pytest.param(
        [sdist("1.0", yanked="bad"), sdist("1.0", ext="zip")],
        "demo-1.0.zip",
        id="unyanked-zip-over-yanked-tar.gz",
    ),
    pytest.param([sdist("1.0", yanked="bad")], "demo-1.0.tar.gz", id="yanked-when-alone"),
    pytest.param([wheel("1.0")], None, id="wheel-only"),
]


@pytest.mark.parametrize(("files", "expected"), SDIST_CASES)
def test_release_sdist(files: list[DistFile], expected: str | None) -> None:
    release = Release(version=Version("1.0"), files=tuple(files))
    chosen = release.sdist
    assert (chosen.filename if chosen else None) == expected


YANKED_CASES = [
    pytest.param([sdist("1.0", yanked="x"), wheel("1.0", yanked="")], True, id="all-yanked"),
    pytest.param([sdist("1.0", yanked="x"), wheel("1.0")], False, id="one-file-left"),
    pytest.param([sdist("1.0")], False, id="none-yanked"),
    pytest.param([], False, id="no-files"),
]


@pytest.mark.parametrize(("files", "expected"), YANKED_CASES)
def test_release_yanked(files: list[DistFile], expected: bool) -> None:
    assert Release(version=Version("1.0"), files=tuple(files)).yanked is expected


@pytest.mark.parametrize(
    ("ignore", "expected"),
    [
        ((), "3.0"),
        (("==3.0",), "2.1"),
        ((">=3a0,<4",), "2.1"),
        (("==3.0", "==2.1"), "2.0"),
        ((">=2",), None),
    ],
)
def test_ignore_specifiers(ignore: tuple[str, ...], expected: str | None) -> None:
    names = ["demo-2.0.tar.gz", "demo-2.1.tar.gz", "demo-3.0.tar.gz"]
    files = [DistFile(n, f"http://127.0.0.1:1/{n}", "0" * 64) for n in names]
    found = latest_release(files, ignore=[SpecifierSet(s) for s in ignore])
    assert (None if found is None else str(found.version)) == expected
