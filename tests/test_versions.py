"""Tests for bot.versions: grouping files into releases and choosing the wanted one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bot.simple import DistFile
from bot.versions import Choice, Release, choose_release, latest_release, releases

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def ago(**delta: float) -> datetime:
    return NOW - timedelta(**delta)


def sdist(
    version: str,
    *,
    yanked: str | None = None,
    ext: str = "tar.gz",
    uploaded: datetime | None = None,
) -> DistFile:
    name = f"demo-{version}.{ext}"
    return DistFile(
        filename=name,
        url=f"http://127.0.0.1/files/{name}",
        sha256="0" * 64,
        yanked=yanked,
        upload_time=uploaded,
    )


def wheel(version: str, *, yanked: str | None = None, uploaded: datetime | None = None) -> DistFile:
    name = f"demo-{version}-py3-none-any.whl"
    return DistFile(
        filename=name,
        url=f"http://127.0.0.1/files/{name}",
        sha256="1" * 64,
        yanked=yanked,
        upload_time=uploaded,
    )


def other(filename: str) -> DistFile:
    return DistFile(filename=filename, url=f"http://127.0.0.1/files/{filename}", sha256=None)


V = Version
LATEST_CASES = [
    # Release candidates.
    pytest.param([sdist("1.0"), sdist("1.1rc1")], {}, "1.0", id="rc-newer-than-final"),
    pytest.param([sdist("1.0"), sdist("1.1rc1")], {"prereleases": True}, "1.1rc1", id="rc-wanted"),
    pytest.param(
        [sdist("1.1rc1"), sdist("1.1")], {"prereleases": True}, "1.1", id="final-beats-its-rc"
    ),
    pytest.param([sdist("1.1"), sdist("1.1rc1")], {}, "1.1", id="rc-while-its-final-exists"),
    pytest.param(
        [sdist("1.1rc1"), sdist("1.2")], {"prereleases": True}, "1.2", id="rc-while-higher-final"
    ),
    pytest.param(
        [sdist("1.1rc1"), sdist("1.2")],
        {"prereleases": True, "newer_than": V("1.1rc1")},
        "1.2",
        id="rc-feedstock-offered-higher-final",
    ),
    pytest.param(
        [sdist("1.1"), sdist("1.1rc1"), sdist("1.1rc2")],
        {"prereleases": True, "newer_than": V("1.1")},
        None,
        id="rc-after-its-final-never-offered",
    ),
    # Dev releases (PEP 440: pre-releases too, and older than the release they lead to).
    pytest.param([sdist("1.0"), sdist("1.1.dev0")], {}, "1.0", id="dev-skipped"),
    pytest.param(
        [sdist("1.0"), sdist("1.1.dev0")], {"prereleases": True}, "1.1.dev0", id="dev-wanted"
    ),
    pytest.param(
        [sdist("1.1.dev0"), sdist("1.1a1"), sdist("1.1")],
        {"prereleases": True},
        "1.1",
        id="final-beats-its-dev-and-alpha",
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.0.post1.dev0")], {}, "1.0", id="dev-of-post-is-prerelease"
    ),
    pytest.param([sdist("2.0a1")], {}, None, id="only-prereleases"),
    # Alpha of a new major.
    pytest.param(
        [sdist("1.0"), sdist("1.5"), sdist("2.0a1")], {}, "1.5", id="alpha-of-new-major-skipped"
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.5"), sdist("2.0a1")],
        {"newer_than": V("1.5")},
        None,
        id="alpha-of-new-major-not-offered",
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.5"), sdist("2.0a1")],
        {"newer_than": V("1.5"), "prereleases": True},
        "2.0a1",
        id="alpha-of-new-major-wanted",
    ),
    # Epochs.
    pytest.param([sdist("2024.1"), sdist("1!0.1")], {}, "1!0.1", id="epoch-wins"),
    pytest.param([sdist("1!1.0"), sdist("2.0")], {}, "1!1.0", id="epoch-beats-higher-release"),
    pytest.param(
        [sdist("2.0")], {"newer_than": V("1!1.0")}, None, id="epoch-not-dropped-from-feedstock"
    ),
    pytest.param(
        [sdist("2.0"), sdist("1!1.0"), sdist("1!1.1")],
        {"newer_than": V("1!1.0")},
        "1!1.1",
        id="epoch-kept-in-proposal",
    ),
    pytest.param(
        [sdist("2023.9"), sdist("1!1.0")],
        {"newer_than": V("2023.9")},
        "1!1.0",
        id="new-epoch-offered",
    ),
    # Post releases.
    pytest.param([sdist("1.0"), sdist("1.0.post1")], {}, "1.0.post1", id="post-is-final"),
    pytest.param(
        [sdist("1.0"), sdist("1.0.post1")],
        {"newer_than": V("1.0")},
        "1.0.post1",
        id="post-after-feedstock-final",
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.0.post1")],
        {"newer_than": V("1.0.post1")},
        None,
        id="post-feedstock-not-offered-final",
    ),
    # Downgrades: order is by version, never by upload time.
    pytest.param(
        [sdist("2.0", uploaded=ago(days=30)), sdist("1.9", uploaded=ago(days=1))],
        {"newer_than": V("2.0")},
        None,
        id="downgrade-uploaded-later",
    ),
    pytest.param(
        [sdist("2.0", uploaded=ago(days=30)), sdist("1.9", uploaded=ago(days=1))],
        {},
        "2.0",
        id="backport-uploaded-later",
    ),
    # Local versions: an index must not serve them (PEP 440), so they are never proposed.
    pytest.param([sdist("1.0"), sdist("1.0+local")], {}, "1.0", id="local-skipped"),
    pytest.param([sdist("1.0"), sdist("1.1+ubuntu1")], {}, "1.0", id="local-newer-skipped"),
    pytest.param(
        [sdist("1.0"), sdist("1.0+local")],
        {"newer_than": V("1.0")},
        None,
        id="local-not-offered",
    ),
    pytest.param([sdist("1.0+local")], {"prereleases": True}, None, id="only-local"),
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
    pytest.param(
        [sdist("1.0"), sdist("1.1", yanked="broken")],
        {"newer_than": V("1.0")},
        None,
        id="yanked-newest-not-offered",
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.1"), sdist("1.2", yanked="x"), wheel("1.2", yanked="x")],
        {"newer_than": V("1.0")},
        "1.1",
        id="yanked-newest-next-offered",
    ),
    pytest.param([sdist("1.0"), wheel("1.1")], {}, "1.0", id="wheel-only-release-skipped"),
    pytest.param(
        [sdist("1.0"), wheel("1.1")],
        {"newer_than": V("1.0")},
        None,
        id="wheel-only-release-not-offered",
    ),
    pytest.param([sdist("1.0", ext="zip")], {}, "1.0", id="zip-sdist-counts"),
    # Normalization: 1.0 and 1.0.0 are one release, reported as the sdist spells it.
    pytest.param([sdist("1.0"), wheel("1.0.0")], {}, "1.0", id="1.0-and-1.0.0-one-release"),
    pytest.param([wheel("1.0"), sdist("1.0.0")], {}, "1.0.0", id="sdist-spelling-reported"),
    pytest.param(
        [sdist("1.0.0")], {"newer_than": V("1.0")}, None, id="feedstock-1.0-not-offered-1.0.0"
    ),
    pytest.param(
        [sdist("1.0.0"), sdist("1.0.1")],
        {"newer_than": V("1.0")},
        "1.0.1",
        id="feedstock-1.0-offered-1.0.1",
    ),
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


UPLOADED_CASES = [
    pytest.param([], None, id="no-files"),
    pytest.param([sdist("1.0"), wheel("1.0")], None, id="no-times"),
    pytest.param([sdist("1.0", uploaded=ago(days=3))], ago(days=3), id="one-file"),
    pytest.param(
        [sdist("1.0", uploaded=ago(days=3)), wheel("1.0", uploaded=ago(hours=1))],
        ago(days=3),
        id="later-wheel-ignored",
    ),
    pytest.param(
        [sdist("1.0", uploaded=ago(hours=1)), wheel("1.0", uploaded=ago(days=3))],
        ago(days=3),
        id="earlier-wheel-wins",
    ),
    pytest.param(
        [sdist("1.0"), wheel("1.0", uploaded=ago(days=3))], ago(days=3), id="some-times-missing"
    ),
    pytest.param(
        [sdist("1.0", uploaded=ago(days=3), yanked="x"), sdist("1.0", ext="zip")],
        ago(days=3),
        id="yanked-file-counts",
    ),
]


@pytest.mark.parametrize(("files", "expected"), UPLOADED_CASES)
def test_release_uploaded(files: list[DistFile], expected: datetime | None) -> None:
    assert Release(version=Version("1.0"), files=tuple(files)).uploaded == expected


OLD = ago(days=30)
# (files, kwargs beyond min_age=WEEK and now=NOW, expected version, expected waiting version)
AGE_CASES = [
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=1))],
        {},
        "1.0",
        "1.1",
        id="too-young-older-proposed",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=1))],
        {"newer_than": V("1.0")},
        None,
        "1.1",
        id="too-young-nothing-newer-than-feedstock",
    ),
    pytest.param(
        [
            sdist("1.0", uploaded=OLD),
            sdist("1.1", uploaded=ago(days=10)),
            sdist("1.2", uploaded=ago(days=1)),
        ],
        {"newer_than": V("1.0")},
        "1.1",
        "1.2",
        id="too-young-older-newer-than-feedstock",
    ),
    pytest.param(
        [sdist("1.1", uploaded=ago(days=2)), sdist("1.2", uploaded=ago(days=1))],
        {},
        None,
        "1.2",
        id="all-too-young",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=7))],
        {},
        "1.1",
        None,
        id="exactly-min-age-is-old-enough",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=7, microseconds=-1))],
        {},
        "1.0",
        "1.1",
        id="one-microsecond-short",
    ),
    pytest.param(
        [
            sdist("1.0", uploaded=OLD),
            sdist("1.1", uploaded=ago(days=10)),
            wheel("1.1", uploaded=ago(hours=1)),
        ],
        {},
        "1.1",
        None,
        id="later-wheel-does-not-reset-age",
    ),
    pytest.param(
        [
            sdist("1.0", uploaded=OLD),
            wheel("1.1", uploaded=ago(days=10)),
            sdist("1.1", uploaded=ago(hours=1)),
        ],
        {},
        "1.1",
        None,
        id="earliest-file-is-release-time",
    ),
    pytest.param(
        [sdist("1.0"), sdist("1.1")],
        {"newer_than": V("1.0")},
        "1.1",
        None,
        id="no-times-old-enough",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1"), wheel("1.1", uploaded=ago(days=1))],
        {},
        "1.0",
        "1.1",
        id="only-known-times-count",
    ),
    pytest.param(
        [
            sdist("1.0", uploaded=OLD),
            sdist("1.1", uploaded=ago(days=2)),
            sdist("1.2", uploaded=ago(days=1)),
        ],
        {},
        "1.0",
        "1.2",
        id="newest-held-back-reported",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=1))],
        {"ignore": [SpecifierSet("==1.1")]},
        "1.0",
        None,
        id="ignored-young-not-waiting",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1rc1", uploaded=ago(days=1))],
        {},
        "1.0",
        None,
        id="prerelease-young-not-waiting",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=1), yanked="x")],
        {},
        "1.0",
        None,
        id="yanked-young-not-waiting",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=1))],
        {"min_age": timedelta(0)},
        "1.1",
        None,
        id="zero-min-age",
    ),
    pytest.param(
        [sdist("1.0", uploaded=OLD), sdist("1.1", uploaded=ago(days=1))],
        {"min_age": None, "now": None},
        "1.1",
        None,
        id="no-min-age",
    ),
    pytest.param(
        [
            sdist("1.0", uploaded=OLD.replace(tzinfo=None)),
            sdist("1.1", uploaded=ago(days=1).replace(tzinfo=None)),
        ],
        {},
        "1.0",
        "1.1",
        id="naive-upload-times-read-as-utc",
    ),
]


@pytest.mark.parametrize(("files", "kwargs", "expected", "waiting"), AGE_CASES)
def test_min_age(
    files: list[DistFile], kwargs: dict[str, object], expected: str | None, waiting: str | None
) -> None:
    arguments: dict[str, object] = {"min_age": WEEK, "now": NOW, **kwargs}
    choice = choose_release(files, **arguments)  # type: ignore[arg-type]
    assert (None if choice.release is None else str(choice.release.version)) == expected
    assert (None if choice.waiting is None else str(choice.waiting.version)) == waiting
    assert latest_release(files, **arguments) == choice.release  # type: ignore[arg-type]
    if choice.waiting is None:
        assert choice.ready_at is None
    else:
        uploaded, min_age = choice.waiting.uploaded, arguments["min_age"]
        assert uploaded is not None
        assert isinstance(min_age, timedelta)
        assert choice.ready_at == uploaded.replace(tzinfo=UTC) + min_age
        assert choice.ready_at > NOW


def test_choose_release_ready_at() -> None:
    files = [sdist("1.0", uploaded=OLD), sdist("2.0", uploaded=ago(days=2))]
    choice = choose_release(files, newer_than=V("1.0"), min_age=WEEK, now=NOW)
    assert choice == Choice(
        release=None, waiting=releases(files)[1], ready_at=NOW + timedelta(days=5)
    )


def test_choose_release_without_min_age_waits_for_nothing() -> None:
    choice = choose_release([sdist("1.0", uploaded=NOW)])
    assert choice.release is not None
    assert (choice.waiting, choice.ready_at) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"min_age": WEEK}, "now is required", id="min-age-without-now"),
        pytest.param(
            {"min_age": WEEK, "now": NOW.replace(tzinfo=None)}, "timezone-aware", id="naive-now"
        ),
        pytest.param({"min_age": -WEEK, "now": NOW}, "must not be negative", id="negative-min-age"),
    ],
)
def test_min_age_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        latest_release([sdist("1.0")], **kwargs)  # type: ignore[arg-type]
