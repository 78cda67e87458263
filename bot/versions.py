"""Which upstream release is wanted: finals vs pre/dev, epochs, yanks, sdists, age (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bot.simple import DistFile

__all__ = ["Choice", "Release", "choose_release", "latest_release", "releases"]


@dataclass(frozen=True)
class Release:
    """All files upstream publishes for one version."""

    version: Version
    files: tuple[DistFile, ...]

    @property
    def sdist(self) -> DistFile | None:
        """The sdist to build from: unyanked first, then .tar.gz (PEP 625) over legacy .zip."""
        candidates = [f for f in self.files if f.is_sdist]
        if not candidates:
            return None
        # min() is stable, so among equals the first file upstream listed wins.
        return min(
            candidates,
            key=lambda f: (f.yanked is not None, not f.filename.endswith(".tar.gz")),
        )

    @property
    def yanked(self) -> bool:
        """PEP 592: a release is yanked when all of its files are."""
        return bool(self.files) and all(f.yanked is not None for f in self.files)

    @property
    def uploaded(self) -> datetime | None:
        """When the release appeared: the earliest upload time among its files (yanked ones too).

        A wheel uploaded days later doesn't make the release younger. None when upstream gave
        no time for any file (PEP 700 times come only in JSON pages, not in HTML ones).
        """
        times = [f.upload_time for f in self.files if f.upload_time is not None]
        return min(times, key=_as_utc) if times else None


def _as_utc(moment: datetime) -> datetime:
    # Upstream's parser already returns aware UTC times; a naive one is read as UTC the same way.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Choice:
    """What ``choose_release`` picked, and the newest release it held back for its age."""

    release: Release | None
    # The newest release that qualified on every other rule but is younger than min_age, when
    # it is newer than ``release``; None when nothing is waiting.
    waiting: Release | None = None
    # When ``waiting`` becomes old enough (its upload time + min_age); None when nothing waits.
    ready_at: datetime | None = None


def releases(files: Iterable[DistFile]) -> list[Release]:
    """Files grouped by version, oldest first; files whose names don't parse are skipped."""
    # Version equality ignores trailing zeros (PEP 440), so "1.0" and "1.0.0" share a key.
    groups: dict[Version, list[DistFile]] = {}
    for file in files:
        version = file.version
        if version is not None:
            groups.setdefault(version, []).append(file)
    result: list[Release] = []
    for version, grouped in groups.items():
        # Report the version as the sdist spells it: that is what a feedstock will name.
        spelled = next((f.version for f in grouped if f.is_sdist), None) or version
        result.append(Release(version=spelled, files=tuple(grouped)))
    result.sort(key=lambda release: release.version)
    return result


def latest_release(
    files: Iterable[DistFile],
    *,
    newer_than: Version | None = None,
    prereleases: bool = False,
    ignore: Sequence[SpecifierSet] = (),
    min_age: timedelta | None = None,
    now: datetime | None = None,
) -> Release | None:
    """The newest buildable release: not yanked, final unless asked, with an unyanked sdist.

    ``ignore`` holds the registry entry's ``versions.ignore`` specifiers; a release any of
    them contains is never proposed (pre-releases included, so ``>=3a0,<3`` means what it says).
    Local versions (``1.0+local``) are never proposed: an index must not serve them (PEP 440).

    With ``min_age``, a release uploaded less than ``min_age`` before ``now`` is not proposed
    yet and the newest older one that qualifies is proposed instead, still only when it is
    newer than ``newer_than`` (like Renovate's minimumReleaseAge). A release exactly ``min_age``
    old is old enough. A release with no upload time on any file counts as old enough: HTML
    pages (PEP 503) carry no times, and holding those back would mean never updating at all.
    ``now`` must be given (timezone-aware) with ``min_age``; nothing here reads the clock.
    """
    return choose_release(
        files,
        newer_than=newer_than,
        prereleases=prereleases,
        ignore=ignore,
        min_age=min_age,
        now=now,
    ).release


def choose_release(
    files: Iterable[DistFile],
    *,
    newer_than: Version | None = None,
    prereleases: bool = False,
    ignore: Sequence[SpecifierSet] = (),
    min_age: timedelta | None = None,
    now: datetime | None = None,
) -> Choice:
    """``latest_release`` and why: also the newest release held back by ``min_age``, if any.

    Lets a caller say "2.0 waits for its minimum age until <ready_at>"; same rules and
    arguments as ``latest_release``.
    """
    if min_age is not None:
        if now is None:
            raise ValueError("now is required with min_age")
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if min_age < timedelta(0):
            raise ValueError("min_age must not be negative")
    waiting: Release | None = None
    ready_at: datetime | None = None
    for release in reversed(releases(files)):
        if newer_than is not None and not release.version > newer_than:
            # Sorted ascending, so nothing older can qualify either.
            break
        if release.version.local is not None:
            continue
        if release.yanked:
            continue
        if any(spec.contains(release.version, prereleases=True) for spec in ignore):
            continue
        # PEP 440: is_prerelease covers both pre-releases and dev releases; post releases are final.
        if release.version.is_prerelease and not prereleases:
            continue
        sdist = release.sdist
        # Building from a yanked sdist would publish wheels of something upstream withdrew.
        if sdist is None or sdist.yanked is not None:
            continue
        uploaded = release.uploaded
        if min_age is not None and now is not None and uploaded is not None:
            uploaded = _as_utc(uploaded)
            if now - uploaded < min_age:
                if waiting is None:
                    waiting, ready_at = release, uploaded + min_age
                continue
        return Choice(release=release, waiting=waiting, ready_at=ready_at)
    return Choice(release=None, waiting=waiting, ready_at=ready_at)
