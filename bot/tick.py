"""One cycle of the bot: registry, feedstocks, upstream, bump PRs, builds, publication."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import Version

from bot import __version__, feedstock, gate, index, propose, registry
from bot.build.provenance import BuilderInfo, Requirement, statement
from bot.build.release import ReleaseBuild, build_release
from bot.build.sandbox import Sandbox, SandboxUnavailable, find_sandbox
from bot.build.targets import find_pythons, host_interpreter, upstream_coverage
from bot.builder import BUILDER
from bot.context import Bot, Summary
from bot.errors import (
    ProjectNotFound,
    PublishError,
    SourceRefused,
    UpstreamError,
    WheelstockError,
)
from bot.feedstock import FEEDSTOCK_FILE, Feedstock, Source
from bot.forge import Forge
from bot.fsutil import sha256_file
from bot.graph import Graph, Requirements, Target, build_graph
from bot.metadata import MetadataCache, ProjectMetadata, fetch_metadata
from bot.prs import Bump, backoff
from bot.registry import Entry
from bot.state import State, iso, now
from bot.upstream import DistFile, ProjectPage, Upstream, watch
from bot.versions import Choice, Release, choose_release, latest_release

# A watch over more projects than this reports its progress.
WATCH_PROGRESS = 1000


def _source(entry: Entry, release: Release) -> tuple[Source, DistFile]:
    sdist = release.sdist
    if sdist is None:  # latest_release only returns releases with an sdist
        raise WheelstockError(f"release {release.version} has no sdist")
    if not sdist.sha256:
        raise WheelstockError(f"upstream gives no sha256 for {sdist.filename}")
    # The name becomes a path under downloads/ and goes into feedstock.yaml: a bare sdist
    # name of this project at this version, or nothing (DESIGN, trust rules).
    feedstock.check_sdist_name(
        sdist.filename, entry.project, str(release.version), f"upstream's page of {entry.project}"
    )
    return Source(filename=sdist.filename, url=sdist.url, sha256=sdist.sha256), sdist


def wanted_release(
    entry: Entry, files: tuple[DistFile, ...], newer_than: Version | None = None
) -> Release | None:
    """The release this entry's rules pick from upstream's files (versions.* in the entry)."""
    return latest_release(
        files, newer_than=newer_than, prereleases=entry.prereleases, ignore=entry.ignored
    )


def choose(
    bot: Bot, entry: Entry, files: tuple[DistFile, ...], newer_than: Version | None = None
) -> Choice:
    """Like ``wanted_release``, also honouring the operator's minimum release age."""
    choice = choose_release(
        files,
        newer_than=newer_than,
        prereleases=entry.prereleases,
        ignore=entry.ignored,
        min_age=bot.min_release_age,
        now=bot.clock(),
    )
    if choice.waiting is not None and choice.ready_at is not None:
        bot.echo(
            f"{entry.name}: {choice.waiting.version} waits for its minimum release age "
            f"until {iso(choice.ready_at)}"
        )
    return choice


def create_feedstock(bot: Bot, entry: Entry, page: ProjectPage, summary: Summary) -> None:
    choice = choose(bot, entry, page.files)
    release = choice.release
    if release is None:
        if choice.waiting is not None:
            return
        raise WheelstockError(
            f"upstream has no final, non-yanked release of {entry.project} with an sdist"
        )
    source, _ = _source(entry, release)
    files = feedstock.render(
        bot.template_dir,
        project=entry.project,
        version=str(release.version),
        source=source,
        maintainers=entry.maintainers,
        consent=entry.consent,
    )
    bot.forge.create_feedstock(
        entry.name, files, f"Create feedstock for {entry.project} {release.version}"
    )
    summary.created += 1
    bot.echo(f"created {entry.name}-feedstock at {release.version}")


Affected = Callable[[str], tuple[str, ...]]


def sync_project(
    bot: Bot, entry: Entry, page: ProjectPage, summary: Summary, affected: Affected
) -> None:
    """Create the feedstock, or propose what it lacks: a newer release, the newest template."""
    if not bot.forge.has_feedstock(entry.name):
        create_feedstock(bot, entry, page, summary)
        return
    propose.reconcile(bot, entry.name)
    text = bot.forge.read_file(entry.name, FEEDSTOCK_FILE)
    current = feedstock.parse(text, f"{entry.name}-feedstock/{FEEDSTOCK_FILE}")
    release = choose(bot, entry, page.files, Version(current.version)).release
    propose.close_unwanted(
        bot, entry.name, current.version, None if release is None else str(release.version)
    )
    if release is not None:
        propose_bump(bot, entry, page, text, current, release, summary, affected)
    propose.rerender_feedstock(bot, entry, text, summary)
    propose.settle(bot, entry.name, summary)


def verify_sdist(bot: Bot, entry: Entry, source: Source) -> Path:
    """Download the sdist and check upstream's sha256 before a PR names it (kept for the build)."""
    folder = bot.state.downloads_dir / entry.name
    path = folder / source.filename
    if path.resolve().parent != folder.resolve():
        raise SourceRefused(f"{source.filename!r} is not a bare sdist file name")
    if not (path.is_file() and sha256_file(path) == source.sha256):
        bot.upstream.download(source.url, path, source.sha256)
    return path


def metadata_of(
    bot: Bot, entry: Entry, version: str, files: tuple[DistFile, ...] | None = None
) -> ProjectMetadata:
    """The metadata of ``entry`` at ``version``: cached, else read from upstream's files."""
    cache = MetadataCache(bot.state.root / "metadata")
    meta = cache.get(entry.name, version)
    if meta is None:
        bot.echo(f"reading the metadata of {entry.name} {version} ...")
        if files is None:
            files = bot.upstream.project(entry.project).files
        workdir = bot.state.root / "tmp"
        workdir.mkdir(parents=True, exist_ok=True)
        meta = fetch_metadata(bot.upstream, files, entry.project, version, cache, workdir=workdir)
    return meta


def _metadata_or_none(
    bot: Bot, entry: Entry, version: str, files: tuple[DistFile, ...]
) -> ProjectMetadata | None:
    # The PR says "unknown" rather than not being opened: the bump itself does not need it.
    try:
        return metadata_of(bot, entry, version, files)
    except WheelstockError as exc:
        bot.echo(f"{entry.name}: metadata of {version} unknown ({exc})")
        return None


def propose_bump(
    bot: Bot,
    entry: Entry,
    page: ProjectPage,
    text: str,
    current: Feedstock,
    release: Release,
    summary: Summary,
    affected: Affected,
) -> None:
    """Open the version-bump PR for ``release`` (one commit editing feedstock.yaml ``text``)."""
    source, sdist = _source(entry, release)
    bump = Bump(
        project=entry.name,
        old=current.version,
        new=str(release.version),
        source=source,
        maintainers=entry.maintainers,
        page_url=page.url,
        requires_python=sdist.requires_python,
    )
    # Never two PRs for one (project, version): the branch names the pair, and a PR that a
    # volunteer closed stays closed rather than coming back every tick.
    if any(pr.branch == bump.branch for pr in bot.forge.pull_requests(entry.name)):
        return

    def prepare() -> Mapping[str, str]:
        verify_sdist(bot, entry, source)
        return {FEEDSTOCK_FILE: feedstock.bump(text, bump.new, source)}

    def body(closes: tuple[int, ...], kept: tuple[int, ...]) -> str:
        return replace(
            bump,
            old_meta=_metadata_or_none(bot, entry, bump.old, page.files),
            new_meta=_metadata_or_none(bot, entry, bump.new, page.files),
            affected=affected(entry.name),
            supersedes=closes,
            kept_open=kept,
        ).body()

    propose.open_proposal(
        bot,
        propose.Proposal(
            project=entry.name,
            kind="bump",
            version=bump.new,
            branch=bump.branch,
            title=bump.title,
            prepare=prepare,
            message=bump.commit_message,
            body=body,
        ),
        summary,
    )


def fetch_sdist(
    upstream: Upstream, fs: Feedstock, downloads: Path, page: ProjectPage | None = None
) -> Path:
    """Download the feedstock's sdist, verifying its sha256 before anything reads it.

    The sdist must be one upstream publishes, with the hash upstream gives: a merged
    feedstock.yaml cannot point the builder at other bytes (DESIGN, trust rules). Raises
    SourceRefused (HashMismatch for other bytes) and keeps nothing then.
    """
    page = page or upstream.project(fs.project)
    served = next((f for f in page.files if f.filename == fs.source.filename), None)
    if served is None:
        raise SourceRefused(f"upstream does not serve {fs.source.filename}")
    if served.sha256 != fs.source.sha256:
        raise SourceRefused(
            f"{fs.source.filename}: the feedstock pins sha256 {fs.source.sha256}, "
            f"upstream publishes {served.sha256}"
        )
    sdist = downloads / fs.source.filename
    downloads.mkdir(parents=True, exist_ok=True)
    if not (sdist.is_file() and sha256_file(sdist) == fs.source.sha256):
        upstream.download(served.url, sdist, fs.source.sha256)
    return sdist


def wanted_pythons(entry: Entry | None) -> tuple[str, ...]:
    """The Python versions a project builds for: its build.pythons, else this builder's own."""
    if entry is not None and entry.pythons:
        return entry.pythons
    return (host_interpreter().version,)


def upstream_wheels(page: ProjectPage, version: str) -> list[str]:
    """Filenames of the wheels upstream serves for ``version`` and has not yanked."""
    wanted = Version(version)
    # A yank with an empty reason is still a yank (PEP 592): "" is not None.
    return [
        dist.filename
        for dist in page.files
        if dist.is_wheel and dist.yanked is None and dist.version == wanted
    ]


def fetch_and_build(
    bot: Bot,
    fs: Feedstock,
    downloads: Path,
    out: Path,
    entry: Entry | None = None,
    *,
    page: ProjectPage | None = None,
) -> ReleaseBuild:
    """Fetch the verified sdist and build it for each wanted Python this machine has."""
    sandbox = ensure_sandbox(bot)
    sdist = fetch_sdist(bot.upstream, fs, downloads, page)
    host = host_interpreter()
    found, missing = find_pythons(wanted_pythons(entry), {host.version: host.path, **bot.pythons})
    return build_release(
        sdist,
        out,
        project=fs.project,
        version=fs.version,
        pythons=list(found.values()),
        missing=missing,
        sandbox=sandbox,
        import_check=entry.import_check if entry is not None else True,
        reproducible=bot.verify_reproducible or bool(entry and entry.verify_reproducible),
        runner=bot.runner,
        timeout=bot.build_timeout,
        limits=bot.extract_limits,
        frontends=bot.state.root / "frontends",
    )


def ensure_sandbox(bot: Bot) -> Sandbox:
    """The tick's sandbox, found once; SandboxUnavailable says in one line what is missing."""
    if bot.sandbox is None:
        bot.sandbox = find_sandbox(
            unsafe=bot.unsafe_no_sandbox,
            limits=bot.resource_limits,
            # Never visible to a build: what the bot remembers and the operator's home.
            hidden=[bot.state.root, Path.home()],
        )
        if not bot.sandbox.isolated:
            bot.echo("warning: --unsafe-no-sandbox: project code runs with this machine's network")
    return bot.sandbox


def provenance_of(
    entry: Entry, fs: Feedstock, commit: str, result: ReleaseBuild, sandbox: Sandbox
) -> dict[str, Any]:
    """The build's SLSA provenance statement, with the wheels as they were staged."""
    environment = result.results[0].environment if result.results else {}
    requirements = {}
    for built in result.results:
        for req in built.requirements:
            if req.get("name") and req.get("version"):
                key = (str(req["name"]), str(req["version"]))
                requirements[key] = Requirement(key[0], key[1], req.get("sha256"))
    info = BuilderInfo(
        wheelstock=__version__,
        python=str(environment.get("python", platform.python_version())),
        platform=str(environment.get("platform", platform.platform())),
        bwrap=sandbox.version,
        auditwheel=_version_of("auditwheel"),
        build=str(environment.get("build")) if environment.get("build") else None,
    )
    return statement(
        wheels=[(w.name, sha256_file(w)) for w in result.wheels],
        project=entry.name,
        version=fs.version,
        sdist_filename=fs.source.filename,
        sdist_url=fs.source.url,
        sdist_sha256=fs.source.sha256,
        feedstock_repo=f"{entry.name}-feedstock",
        feedstock_commit=commit,
        builder=info,
        python=", ".join(result.pythons),
        requirements=list(requirements.values()),
        started=result.started,
        finished=result.finished,
        sandbox={**sandbox.describe(), "missing_pythons": dict(result.missing)},
        reproducible=result.reproducible,
    )


def _version_of(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_head(bot: Bot, entry: Entry, commit: str, summary: Summary) -> None:
    """Build the feedstock at ``commit``; record the outcome so it is never rebuilt blindly."""
    state = bot.state
    where = f"{entry.name}-feedstock/{FEEDSTOCK_FILE}@{commit[:12]}"
    fs = feedstock.parse(bot.forge.read_file(entry.name, FEEDSTOCK_FILE, commit), where)
    build_dir = state.builds_dir / entry.name / commit[:12]
    if build_dir.exists():
        shutil.rmtree(build_dir)  # the leftovers of an interrupted run of this same build
    build_dir.mkdir(parents=True)
    log_path = build_dir / "build.log"

    def record(status: str, reason: str) -> None:
        state.record_build(
            project=entry.name,
            version=fs.version,
            commit=commit,
            status=status,
            directory=build_dir,
            reason=reason,
        )

    def fail(reason: str, log: str = "", *, remember: bool = False) -> None:
        log_path.write_text(f"{log}\nwheelstock: build refused or failed: {reason}\n", "utf-8")
        record("failed", reason)
        if remember:
            state.record_failed_sdist(fs.source.sha256, BUILDER, entry.name, commit, reason)
        summary.failed += 1
        bot.echo(f"build of {entry.name} {fs.version} failed: {reason} (log: {log_path})")

    # A feedstock publishes only its own project (DESIGN, trust rules).
    if canonicalize_name(fs.project) != entry.name:
        return fail(f"{where} names project {fs.project!r}, not {entry.name}")
    # Published files never change, so a new head at a published version (a README edit,
    # a template rerender) has nothing to build; recording it keeps the next tick quiet.
    if any(
        Version(b.version) == Version(fs.version)
        for b in state.builds(project=entry.name, status="published")
    ):
        record("skipped", f"{fs.version} is already published")
        bot.echo(f"{entry.name} {fs.version} is already published; {commit[:12]} not rebuilt")
        return None
    # The same sdist fails the same way with the same builder: a rerender or a README edit
    # does not buy another try; `@wheelstock rebuild` or a new wheelstock version does.
    prior = state.failed_sdist(fs.source.sha256, BUILDER)
    if prior is not None:
        first, why = prior
        reason = (
            f"{fs.source.filename} already failed with {BUILDER} at {first[:12]} ({why}); "
            "not rebuilt until `@wheelstock rebuild` or a new wheelstock"
        )
        log_path.write_text(f"wheelstock: not built: {reason}\n", "utf-8")
        record("failed", reason)
        bot.echo(f"{entry.name} {fs.version}: {reason}")
        return None

    try:
        page = bot.upstream.project(fs.project)
    except UpstreamError as exc:
        raise UpstreamError(f"cannot read upstream's page of {fs.project}: {exc}") from exc
    # piwheels' rule: what upstream already serves for every target is not built again.
    coverage = upstream_coverage(
        upstream_wheels(page, fs.version), wanted_pythons(entry), entry.platforms
    )
    if coverage.covered:
        reason = f"not built: {coverage.reason}"
        record("skipped", reason)
        bot.echo(f"{entry.name} {fs.version}: {reason}")
        return None

    bot.echo(f"building {entry.name} {fs.version} from {fs.source.filename} ...")
    try:
        result = fetch_and_build(
            bot, fs, state.downloads_dir / entry.name, build_dir / "wheels", entry, page=page
        )
    except SourceRefused as exc:
        return fail(str(exc))
    for version, why in result.missing.items():
        bot.echo(f"{entry.name}: Python {version} is not available here ({why}); not built for it")
    if not result.ok:
        return fail(result.reason or "build failed", result.log, remember=True)
    log_path.write_text(result.log, "utf-8")
    build = gate.stage(
        state,
        project=entry.name,
        version=fs.version,
        commit=commit,
        build_dir=build_dir,
        wheels=result.wheels,
        provenance=provenance_of(entry, fs, commit, result, ensure_sandbox(bot)),
    )
    summary.built += 1
    names = ", ".join(Path(w).name for w in build.wheels)
    verdict = ""
    if result.reproducible is not None:
        verdict = (
            "; reproducible: identical"
            if result.reproducible["identical"]
            else "; reproducible: NO, differs in "
            + ", ".join(m for ms in result.reproducible["differences"].values() for m in ms[:5])
        )
    bot.echo(
        f"built {entry.name} {fs.version}: {names} staged{verdict}; a maintainer approves with "
        f"`wheelstock review approve {entry.name} {fs.version} --as HANDLE`"
    )


def target_of(entry: Entry) -> Target:
    """What an entry builds for; without build.pythons/platforms, what this builder runs."""
    here = sys.platform if sys.platform in registry.PLATFORMS else "linux"
    return Target(
        pythons=entry.pythons or (f"{sys.version_info.major}.{sys.version_info.minor}",),
        platforms=entry.platforms or (here,),
    )


def requirements_of(bot: Bot, entry: Entry, version: str) -> Requirements:
    """Run and build requirements of ``entry`` at ``version``: cached, else fetched upstream."""
    meta = metadata_of(bot, entry, version)
    return Requirements(entry.name, version, run=meta.requires_dist, build=meta.build_requires)


def feedstock_version(bot: Bot, entry: Entry, ref: str = "main") -> str:
    text = bot.forge.read_file(entry.name, FEEDSTOCK_FILE, ref)
    return feedstock.parse(text, f"{entry.name}-feedstock/{FEEDSTOCK_FILE}@{ref}").version


def dependency_graph(bot: Bot, entries: tuple[Entry, ...], summary: Summary) -> Graph:
    """The graph at the versions the feedstocks build (upstream's newest where none exists).

    A project whose metadata cannot be had is a node without edges, reported as an error.
    """
    reqs = []
    for entry in entries:
        try:
            if bot.forge.has_feedstock(entry.name):
                version = feedstock_version(bot, entry)
            else:
                page = bot.upstream.project(entry.project)
                release = wanted_release(entry, page.files)
                if release is None:
                    raise WheelstockError(f"upstream has no release of {entry.project} to build")
                version = str(release.version)
            reqs.append(requirements_of(bot, entry, version))
        except WheelstockError as exc:
            summary.errors.append(f"{entry.name}: {exc}")
            bot.echo(f"error: {entry.name}: {exc}")
            reqs.append(Requirements(entry.name, "0", (), ()))
    return build_graph(reqs, {e.name: target_of(e) for e in entries})


def in_build_order(bot: Bot, pending: list[tuple[Entry, str]]) -> list[tuple[Entry, str]]:
    """Pending builds ordered so a project builds after the enrolled ones it needs to build.

    Only heads built in this tick are ordered, from their own feedstock versions; metadata
    that cannot be had leaves that project unordered rather than stopping the tick.
    """
    if len(pending) < 2:
        return pending
    reqs = []
    for entry, head in pending:
        try:
            reqs.append(requirements_of(bot, entry, feedstock_version(bot, entry, head)))
        except WheelstockError as exc:
            bot.echo(f"{entry.name}: build order unknown ({exc})")
            reqs.append(Requirements(entry.name, "0", (), ()))
    waves, broken = build_graph(reqs, {e.name: target_of(e) for e, _ in pending}).build_order()
    for dependency, dependent in broken:
        bot.echo(f"build cycle: {dependency} -> {dependent} ignored for the order")
    wave_of = {name: number for number, wave in enumerate(waves) for name in wave}
    return sorted(pending, key=lambda item: (wave_of.get(item[0].name, 0), item[0].name))


def build_heads(bot: Bot, entries: tuple[Entry, ...], summary: Summary) -> None:
    """Build every feedstock whose ``main`` head has no recorded build yet, in build order."""
    pending = []
    for entry in entries:
        if not bot.forge.has_feedstock(entry.name):
            continue
        head = bot.forge.head(entry.name)
        if bot.state.build_for(entry.name, head) is None:
            pending.append((entry, head))
    if not pending:
        return
    try:
        ensure_sandbox(bot)
    except SandboxUnavailable as exc:
        # Said once for the tick, not per project; the heads stay unbuilt for a later tick.
        summary.error(bot, "build", f"{exc} ({len(pending)} builds waiting)")
        return
    for entry, head in in_build_order(bot, pending):
        try:
            build_head(bot, entry, head, summary)
        except WheelstockError as exc:
            summary.errors.append(f"{entry.name}: {exc}")
            bot.echo(f"error: {entry.name}: {exc}")


def upstream_filenames(upstream: Upstream) -> gate.UpstreamFiles:
    """What upstream serves for a project, for the gate's never-shadow-upstream rule."""

    def filenames(project: str) -> set[str]:
        try:
            return {f.filename for f in upstream.project(project).files}
        except ProjectNotFound:
            return set()

    return filenames


def publish(bot: Bot, summary: Summary) -> None:
    for outcome in gate.publish_approved(bot.state, upstream_filenames(bot.upstream)):
        if outcome.error is not None:
            summary.errors.append(f"{outcome.build.project}: {outcome.error}")
        else:
            summary.published += 1
        bot.echo(outcome.line())


def load_registry(bot: Bot, summary: Summary) -> registry.Registry:
    reg = registry.load_directory(bot.registry_dir)
    for problem in reg.problems:
        summary.errors.append(str(problem))
        bot.echo(f"error: {problem}")
    summary.projects = len(reg.entries)
    return reg


def retire_removed(bot: Bot, reg: registry.Registry, summary: Summary) -> None:
    """Feedstocks whose entry left the registry: reported once, then left alone.

    No new PRs or builds reach them (only entries are synced and built); what was published
    stays. A file that is merely invalid still claims its name, so a typo retires nothing.
    """
    retired = bot.state.retired()
    for name in bot.forge.feedstocks():
        if name in reg.claimed:
            if name in retired:
                bot.state.unretire(name)
                bot.echo(f"{name} has a registry entry again; its feedstock is no longer retired")
        elif name not in retired:
            bot.state.retire(name)
            summary.retired += 1
            bot.echo(
                f"retired {name}-feedstock: its entry left the registry; no new PRs or builds, "
                "published files stay"
            )


def active(bot: Bot, reg: registry.Registry, summary: Summary) -> tuple[Entry, ...]:
    """The entries the bot works on this tick; a skipped one is named with its reason."""
    entries = []
    for entry in reg.entries:
        if entry.skip is not None:
            summary.skipped += 1
            bot.echo(f"skipped {entry.name}: {entry.skip}")
        else:
            entries.append(entry)
    return tuple(entries)


def rebuild(bot: Bot, entry: Entry) -> str:
    """``@wheelstock rebuild``: build main's head again if its build failed; say what happens."""
    head = bot.forge.head(entry.name)
    build = bot.state.build_for(entry.name, head)
    if build is None:
        return f"main ({head[:12]}) has not been built yet; it is built at the next build."
    if build.status != "failed":
        return (
            f"{build.version} at {head[:12]} is {build.status}; only a failed build is rebuilt "
            "(published files never change)."
        )
    kept = None
    if build.directory.exists():
        # The failed attempt's log stays next to the new one, under a name no retry reuses.
        stamp = now().replace(":", "").replace("-", "")
        kept = build.directory.with_name(f"{build.directory.name}.failed-{stamp}")
        attempt = 1
        while kept.exists():
            attempt += 1
            kept = build.directory.with_name(f"{build.directory.name}.failed-{stamp}-{attempt}")
        try:
            build.directory.rename(kept)
        except OSError as exc:
            raise WheelstockError(f"cannot keep the failed build's log: {exc.strerror}") from exc
    bot.state.forget_build(build)
    with contextlib.suppress(WheelstockError):
        text = bot.forge.read_file(entry.name, FEEDSTOCK_FILE, head)
        bot.state.forget_failed_sdist(feedstock.parse(text, FEEDSTOCK_FILE).source.sha256)
    where = f"; the failed attempt's log is in {kept}" if kept else ""
    return f"rebuilding {build.version} from main ({head[:12]}) at the next build{where}."


def affected_by(bot: Bot, entries: tuple[Entry, ...]) -> Callable[[str], tuple[str, ...]]:
    """Enrolled projects that depend on a project; the graph is built once, when first asked."""
    graph: list[Graph] = []

    def affected(name: str) -> tuple[str, ...]:
        if not graph:
            # Metadata that cannot be had leaves a node without edges; that is no error here.
            graph.append(dependency_graph(bot, entries, Summary()))
        try:
            return tuple(sorted(graph[0].impact(name)["any"]))
        except WheelstockError:
            return ()

    return affected


def watch_upstream(
    bot: Bot, entries: list[Entry]
) -> tuple[dict[str, ProjectPage | str], dict[str, ProjectPage]]:
    """Check the entries' pages upstream, concurrently and conditionally (ETag/Last-Modified).

    Returns the page to work from (fresh, or the stored one when upstream answered 304), or
    the one-line reason why there is none; and, apart, the pages upstream sent anew. Every
    outcome is recorded in state.
    """
    if not entries:
        return {}, {}
    known = bot.state.validators(bot.upstream.index_url)
    items = [(e.project, known.get(e.name)) for e in entries]

    def progress(done: int, total: int) -> None:
        bot.echo(f"watched {done}/{total} projects upstream")

    checks = list(
        watch(
            bot.upstream,
            items,
            processes=bot.watch_processes,
            progress=progress if len(items) > WATCH_PROGRESS else None,
        )
    )
    bot.state.record_checks(checks)
    pages: dict[str, ProjectPage | str] = {}
    fresh: dict[str, ProjectPage] = {}
    for checked in checks:
        if checked.page is not None:
            pages[checked.name] = checked.page
            fresh[checked.name] = checked.page
        elif checked.status == "unchanged":
            cached = bot.state.cached_page(checked.name, bot.upstream.index_url)
            pages[checked.name] = cached or "upstream answered 304 but no page is stored"
        else:
            pages[checked.name] = checked.error or f"upstream check {checked.status}"
    counts = Counter(c.status for c in checks)
    bot.echo(
        f"upstream: {len(checks)} projects checked: {counts['changed']} pages fetched, "
        f"{counts['unchanged']} unchanged (304), "
        f"{counts['failed'] + counts['missing']} failed"
    )
    return pages, fresh


def mirror_upstream(bot: Bot, fresh: Mapping[str, ProjectPage]) -> None:
    """Put upstream's files, and their yanks, on our pages of the projects whose page changed.

    Only pages upstream sent anew are touched: a tick where nothing moved rewrites nothing.
    """
    if not fresh:
        return
    try:
        said = index.refresh(bot.state.index_dir, {n: p.files for n, p in fresh.items()})
    except PublishError as exc:
        bot.echo(f"error: index: {exc}")
        return
    for line in said:
        bot.echo(f"index: {line}")


def sync_all(bot: Bot, entries: tuple[Entry, ...], summary: Summary) -> None:
    """Sync each entry; one that fails is retried only after an exponential backoff."""
    moment = bot.clock()
    attempts = bot.state.attempts()
    affected = affected_by(bot, entries)
    due = []
    for entry in entries:
        attempt = attempts.get(entry.name)
        if attempt is not None and attempt.next_attempt > moment:
            summary.backing_off += 1
            bot.echo(
                f"{entry.name}: backing off after {attempt.failures} failed attempts "
                f"({attempt.reason}); next attempt after {iso(attempt.next_attempt)}"
            )
        else:
            due.append(entry)
    pages, fresh = watch_upstream(bot, due)
    mirror_upstream(bot, fresh)
    for entry in due:
        attempt = attempts.get(entry.name)
        try:
            page = pages.get(entry.name, "not checked")
            if isinstance(page, str):
                raise UpstreamError(page)
            sync_project(bot, entry, page, summary, affected)
        except WheelstockError as exc:
            failed = bot.state.record_failure(entry.name, str(exc), moment, backoff)
            summary.error(
                bot,
                entry.name,
                f"{exc} (failure {failed.failures}; next attempt after {iso(failed.next_attempt)})",
            )
        else:
            if attempt is not None:
                bot.state.clear_failures(entry.name)


def tick(bot: Bot, *, build: bool = True) -> Summary:
    """Run one whole cycle; one project's failure never stops the others.

    With ``build=False`` only upstream is watched and PRs are tended; merged heads are built
    and approved builds published by the next full tick.
    """
    summary = Summary()
    reg = load_registry(bot, summary)
    retire_removed(bot, reg, summary)
    entries = active(bot, reg, summary)
    # Commands first: a PR that this tick supersedes still gets its answers.
    try:
        propose.answer_commands(
            bot, {e.name: e for e in reg.entries}, summary, lambda entry: rebuild(bot, entry)
        )
    except WheelstockError as exc:
        summary.error(bot, "commands", str(exc))
    sync_all(bot, entries, summary)
    if build:
        build_heads(bot, entries, summary)
        publish(bot, summary)
    return summary


@dataclass(frozen=True)
class ProjectStatus:
    """One line of ``wheelstock status``: what the bot knows of a project, without network."""

    name: str
    state: str  # active | skipped | retired | invalid
    feedstock: str | None  # version on main
    open_prs: tuple[int, ...]
    last_build: str | None  # "<version> <status>"
    note: str | None  # skip reason, failure reason, or the registry problem

    def line(self) -> str:
        prs = ",".join(f"#{n}" for n in self.open_prs) or "-"
        note = f"  ({self.note})" if self.note else ""
        return (
            f"{self.name:<24} {self.state:<8} {self.feedstock or '-':<12} {prs:<8} "
            f"{self.last_build or '-'}{note}"
        )


def status(state: State, forge: Forge, registry_dir: Path) -> list[ProjectStatus]:
    reg = registry.load_directory(registry_dir)
    retired = state.retired()
    problems: dict[str, str] = {canonicalize_name(p.path.stem): str(p) for p in reg.problems}
    names = sorted(set(forge.feedstocks()) | {e.name for e in reg.entries} | set(problems))
    entries = {e.name: e for e in reg.entries}
    attempts = state.attempts()
    rows = []
    for name in names:
        entry = entries.get(name)
        note = None
        if entry is not None and entry.skip is not None:
            kind, note = "skipped", entry.skip
        elif entry is not None:
            kind = "active"
        elif name in problems:
            kind, note = "invalid", problems[name]
        else:
            kind = "retired" if name in retired else "removed"
        version = None
        if forge.has_feedstock(name):
            text = forge.read_file(name, FEEDSTOCK_FILE)
            version = feedstock.parse(text, f"{name}-feedstock/{FEEDSTOCK_FILE}").version
        builds = state.builds(project=name)
        last = builds[-1] if builds else None
        attempt = attempts.get(name)
        if attempt is not None and note is None:
            note = (
                f"backing off after {attempt.failures} failed attempts: {attempt.reason}; "
                f"next attempt after {iso(attempt.next_attempt)}"
            )
        if last is not None and note is None and last.status in ("failed", "refused", "skipped"):
            note = last.reason
        rows.append(
            ProjectStatus(
                name=name,
                state=kind,
                feedstock=version,
                open_prs=tuple(pr.number for pr in forge.pull_requests(name, "open")),
                last_build=None if last is None else f"{last.version} {last.status}",
                note=note,
            )
        )
    return rows
