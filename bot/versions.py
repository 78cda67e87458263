"""Which upstream release is wanted: finals vs pre/dev, epochs, yanks, sdists (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bot.upstream import DistFile

__all__ = ["Release", "latest_release", "releases"]


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
) -> Release | None:
    """The newest buildable release: not yanked, final unless asked, with an unyanked sdist.

    ``ignore`` holds the registry entry's ``versions.ignore`` specifiers; a release any of
    them contains is never proposed (pre-releases included, so ``>=3a0,<3`` means what it says).
    """
    for release in reversed(releases(files)):
        if newer_than is not None and not release.version > newer_than:
            # Sorted ascending, so nothing older can qualify either.
            return None
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
        return release
    return None
