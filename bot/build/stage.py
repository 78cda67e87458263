"""The tick's build stage: which feedstock heads to build, in which order, and recording each
outcome; then publishing what maintainers approved. One wheel's build is ``bot.builder``."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import Version

from bot import __version__, feedstock, gate
from bot.build.provenance import BuilderInfo, Requirement, statement
from bot.build.release import ReleaseBuild, build_release
from bot.build.sandbox import Sandbox, SandboxUnavailable, find_sandbox
from bot.build.targets import find_pythons, host_interpreter, upstream_coverage
from bot.builder import BUILDER
from bot.context import Bot, Summary
from bot.dependencies import feedstock_version, requirements_of, target_of
from bot.errors import (
    ProjectNotFound,
    SourceRefused,
    UpstreamError,
    WheelstockError,
)
from bot.feedstock import FEEDSTOCK_FILE, Feedstock
from bot.fsutil import sha256_file
from bot.graph import Requirements, build_graph
from bot.registry import Entry
from bot.simple import ProjectPage
from bot.state import now
from bot.upstream import Upstream


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


def build_heads(
    bot: Bot,
    entries: tuple[Entry, ...],
    summary: Summary,
    heads: Mapping[str, str] | None = None,
) -> None:
    """Build every feedstock whose ``main`` head has no recorded build yet, in build order.

    ``heads``: main's head of the projects the tick knows it for without asking the forge.
    """
    known = heads or {}
    built = bot.state.built_commits()
    pending = []
    for entry in entries:
        head = known.get(entry.name)
        if head is None:
            if not bot.forge.has_feedstock(entry.name):
                continue
            head = bot.forge.head(entry.name)
        if (entry.name, head) not in built:
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
