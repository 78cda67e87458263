"""What the dependency graph is made of: each entry's requirements at its feedstock's version,
read from cached or upstream metadata; and who depends on a project, for PR bodies."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

from packaging.version import Version

from bot import feedstock, registry
from bot.context import Bot, Summary
from bot.errors import (
    WheelstockError,
)
from bot.feedstock import FEEDSTOCK_FILE
from bot.graph import Graph, Requirements, Target, build_graph
from bot.metadata import MetadataCache, ProjectMetadata, fetch_metadata
from bot.registry import Entry
from bot.simple import DistFile
from bot.versions import Release, latest_release

Affected = Callable[[str], tuple[str, ...]]


def wanted_release(
    entry: Entry, files: tuple[DistFile, ...], newer_than: Version | None = None
) -> Release | None:
    """The release this entry's rules pick from upstream's files (versions.* in the entry)."""
    return latest_release(
        files, newer_than=newer_than, prereleases=entry.prereleases, ignore=entry.ignored
    )


def metadata_of(
    bot: Bot,
    entry: Entry,
    version: str,
    files: tuple[DistFile, ...] | None = None,
    *,
    fetch: bool = True,
    quiet: bool = False,
) -> ProjectMetadata:
    """The metadata of ``entry`` at ``version``: cached, else read from upstream's files.

    ``fetch=False``: the cache only (WheelstockError when it lacks them), no network.
    """
    cache = MetadataCache(bot.state.root / "metadata")
    meta = cache.get(entry.name, version)
    if meta is None and not fetch:
        raise WheelstockError(f"the metadata of {entry.name} {version} are not read yet")
    if meta is None:
        if not quiet:
            bot.echo(f"reading the metadata of {entry.name} {version} ...")
        if files is None:
            files = bot.upstream.project(entry.project).files
        workdir = bot.state.root / "tmp"
        workdir.mkdir(parents=True, exist_ok=True)
        meta = fetch_metadata(
            bot.upstream,
            files,
            entry.project,
            version,
            cache,
            workdir=workdir,
            downloaded=bot.state.downloads_dir / entry.name,
        )
    return meta


def target_of(entry: Entry) -> Target:
    """What an entry builds for; without build.pythons/platforms, what this builder runs."""
    here = sys.platform if sys.platform in registry.PLATFORMS else "linux"
    return Target(
        pythons=entry.pythons or (f"{sys.version_info.major}.{sys.version_info.minor}",),
        platforms=entry.platforms or (here,),
    )


def requirements_of(bot: Bot, entry: Entry, version: str, *, fetch: bool = True) -> Requirements:
    """Run and build requirements of ``entry`` at ``version``: cached, else fetched upstream."""
    meta = metadata_of(bot, entry, version, fetch=fetch)
    return Requirements(entry.name, version, run=meta.requires_dist, build=meta.build_requires)


def feedstock_version(bot: Bot, entry: Entry, ref: str = "main") -> str:
    text = bot.forge.read_file(entry.name, FEEDSTOCK_FILE, ref)
    return feedstock.parse(text, f"{entry.name}-feedstock/{FEEDSTOCK_FILE}@{ref}").version


def dependency_graph(
    bot: Bot,
    entries: tuple[Entry, ...],
    summary: Summary,
    versions: Mapping[str, str] | None = None,
    *,
    fetch: bool = True,
) -> Graph:
    """The graph at the versions the feedstocks build (upstream's newest where none exists).

    ``versions``: what main builds, for the projects the caller knows it of without git.
    ``fetch=False``: from what is cached alone, no network: a project without a feedstock or
    cached metadata is a node without edges, and that is no error.
    A project whose metadata cannot be had is a node without edges, reported as an error.
    """
    known = versions or {}
    reqs = []
    for entry in entries:
        try:
            if entry.name in known:
                version = known[entry.name]
            elif bot.forge.has_feedstock(entry.name):
                version = feedstock_version(bot, entry)
            elif not fetch:
                reqs.append(Requirements(entry.name, "0", (), ()))
                continue
            else:
                page = bot.upstream.project(entry.project)
                release = wanted_release(entry, page.files)
                if release is None:
                    raise WheelstockError(f"upstream has no release of {entry.project} to build")
                version = str(release.version)
            reqs.append(requirements_of(bot, entry, version, fetch=fetch))
        except WheelstockError as exc:
            if not fetch:
                reqs.append(Requirements(entry.name, "0", (), ()))
                continue
            summary.errors.append(f"{entry.name}: {exc}")
            bot.echo(f"error: {entry.name}: {exc}")
            reqs.append(Requirements(entry.name, "0", (), ()))
    return build_graph(reqs, {e.name: target_of(e) for e in entries})


def affected_by(
    bot: Bot, entries: tuple[Entry, ...], versions: Mapping[str, str] | None = None
) -> Callable[[str], tuple[str, ...]]:
    """Enrolled projects that depend on a project; the graph is built once, when first asked.

    ``versions`` may still grow until then (dependency_graph's). From cached metadata only:
    a PR for one project never reads upstream for 25,000 others; each feedstock's metadata
    is read when it is created and when a bump PR names a new version.
    """
    graph: list[Graph] = []

    def affected(name: str) -> tuple[str, ...]:
        if not graph:
            # Metadata that cannot be had leaves a node without edges; that is no error here.
            graph.append(dependency_graph(bot, entries, Summary(), versions, fetch=False))
        try:
            return tuple(sorted(graph[0].impact(name)["any"]))
        except WheelstockError:
            return ()

    return affected
