"""Benchmark the real `wheelstock tick --no-build` over 25,000 feedstocks and 2,500 open bot PRs.

Every timed tick is the `wheelstock` command line in a child process, as an operator runs it,
against the simulated upstream of benchmarks/upstream_sim.py (127.0.0.1, 30 ms per response,
ETags and 304s), with `files` on: each page's sdists can be downloaded (a tiny valid .tar.gz
whose real sha256 the page gives) and each wheel's core metadata is served beside it (PEP 658,
marked on the page), so bump PRs are opened as on the real index, metadata and all.

The state, built once per size (and kept with `--work DIR`, then reused):
- **Registry**: `registry/proj-NNNNN.yaml`, one entry per project, in the shape
  tests/conftest.py's `Workspace.enrol` writes (project, one maintainer, consent URL).
- **Feedstocks, fast path**: what `LocalForge.create_feedstock` makes, without its ~100 ms a
  repo. Every feedstock's files are rendered from feedstock-template/ (the same output as
  `bot.feedstock.render`, from one jinja2 environment; a sample is compared with the real
  function), at the release the tick would pick (upstream's newest, with its sdist's URL and
  real sha256, also compared on a sample with what the bot reads from the simulator). All the
  initial commits (author and committer wheelstock-bot, the message `create_feedstock` gives)
  are written by ONE `git fast-import` into a shared object repository, `objects.git` beside
  the state; each `state/forge/repos/<name>-feedstock.git` is a small bare-repo skeleton
  (`HEAD`, `config`, `refs/heads/main`, `objects/info/alternates` naming the shared objects).
  There is no `forge.db` yet: the first `LocalForge` open migrates the root as it would any
  root made before the index (its real code: the post-receive hook into every repo, one
  `git for-each-ref` each). A sample is then read back with `LocalForge.head`, `read_file`
  and `branches`. Later commits (the bot's bump branches, merges) go into each repo's own
  objects, as usual.
- **Metadata cache, fast path**: `state/metadata/<name>/<version>.json` of each feedstock's
  version, as `create_feedstock` leaves it (it reads the metadata once, for the dependency
  graph); written in `MetadataCache`'s format without a fsync each, and compared on a sample
  with what `fetch_metadata` reads from the simulator. Projects require 0-4 others
  (upstream_sim.requires_of), so PR bodies' "affected" lists come from a real graph.
- **Steady state, real ticks** (untimed here, their figures printed): a first tick syncs every
  project (fills the watch's validators, the index pages, each project's sync fingerprint);
  then 10% of the projects get a newer release upstream and a tick with `--max-new-prs` that
  many opens their bump PRs (the bot's own, in its state); then a tick that settles (the forge
  names the projects the bot itself changed); then a check that the next tick opens nothing.
  The simulator's releases are saved with the state, and it listens on the same port again
  (the state names its URL). Each phase is recorded as it is done, so an interrupted setup
  resumes where it stopped. The setup does not depend on the change feed: its simulator has
  no serials and its ticks run with `--no-change-feed`, as before the feed; the state it
  leaves serves both modes (the simulator keeps a page's ETag when serials are on).

Timed (each `wheelstock tick --no-build --state-dir ... --registry ... --upstream SIM_URL`
on a fresh copy of that state (hard links for the trees whose files are only ever replaced
by a rename, real copies of the databases and logs), its wall time as this process saw it, its
peak RSS from `os.wait4`'s `ru_maxrss` and the sampled sum of its process tree's RSS; git runs
counted by a logging `git` (a shell script, first on the child's PATH, that appends a line and
execs the real one: about a millisecond a run); HTTP requests from the simulator's counters,
the root page apart from the project pages), against the simulator with `serials` on (a
change feed: the root page lists every project's serial; upstream_sim's docstring), in two
modes on the same copy, one after the other: first every tick with `--no-change-feed` (a
conditional request for every project, as before the feed), then one untimed tick with the
feed (it takes the serials in; reported), then every tick again with the feed (the default).
Each mode runs in one stretch, as an operator runs it, so no timed tick follows one of the
other mode. In each mode:
1. the no-change tick, `--runs` times; without the feed, alternating with **the watch
   alone**: `bot.watch.watch` over the same projects with the validators the state holds (all
   304s), in a child process (interpreter start, reading the validators, the worker
   processes), as the tick runs it: the floor of a tick that asks for every page;
2. per round: 1% of the projects release upstream, chosen among those with an open bump PR
   (never the same project twice, over both modes), and a tick opens their bump PRs and
   supersedes the older ones; then (reported, untimed for the goal) the tick after it, which
   looks at what the bot changed; then 100 open PRs are merged by hand
   (`LocalForge.merge_pr(n, "volunteer")`, untimed) and a tick runs; then a check that the
   next tick is a no-change tick again;
3. the curve: the no-change tick (and the watch alone) at 2,500 and 10,000 projects, each
   its own state with 10% open PRs, beside the 25,000 of (1).
The report sets each tick with the feed beside the same tick without it: wall times, their
ratio, and the requests (root page + project pages, and files).

    python benchmarks/tick.py                     # 25,000 projects, curve 2,500 / 10,000, 3 runs
    python benchmarks/tick.py --quick             # 2,500 projects, curve 500 / 1,000, 1 run
    python benchmarks/tick.py --work /tmp/tick    # keep the states; a later run reuses them
    python benchmarks/tick.py --work /tmp/tick --profile   # the timed ticks under cProfile
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import pstats
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import machine  # noqa: E402
from upstream_sim import (  # noqa: E402
    RELEASES,
    Simulator,
    project_name,
    requires_of,
    sdist_bytes,
    version_of,
)

TEMPLATE = REPO / "feedstock-template"
GOAL_NO_CHANGE = 60.0  # seconds
GOAL_WATCH_RATIO = 1.5  # no-change tick / watch alone
GOAL_RELEASE = 90.0  # seconds, the 1% tick
GOAL_RSS_MB = 1024.0
GOAL_CURVE = 1.25  # seconds per project at the largest size / at the smallest, at most
OPEN_FRACTION = 0.10  # of the projects, with an open bot bump PR in the steady state
RELEASE_FRACTION = 0.01
MERGE_FRACTION = 0.004  # 100 of 25,000
# The projects the root page of the index this machine is configured for listed on
# 2026-12-01 (927,088 links, 40 MB of HTML): the feed's one request is that large, whatever
# the number enrolled.
ROOT_PROJECTS = 927_088
MAINTAINER = "alice"
# Bumped when the state's shape changes: a --work state of another version is rebuilt.
STATE_VERSION = 1
BOT = "wheelstock-bot <bot@wheelstock.invalid>"
GIT_READS = frozenset(
    {"show", "log", "rev-parse", "ls-tree", "for-each-ref", "diff", "cat-file", "merge-base"}
)
_LINE = re.compile(r"^tick: .*$", re.MULTILINE)
NO_FEED = "--no-change-feed"  # `wheelstock tick`: a conditional request for every project


def _count(line: str, what: str) -> int:
    found = re.search(rf"(\d+) {what}", line)
    return int(found.group(1)) if found else 0


# --- the layout of one size's state --------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    root: Path  # WORK/p<N>

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def base(self) -> Path:
        return self.root / "base"  # the steady state, never ticked after setup

    @property
    def run(self) -> Path:
        return self.root / "run"  # a copy of base, for the timed ticks

    @property
    def objects(self) -> Path:
        return self.root / "objects.git"

    @property
    def info(self) -> Path:
        return self.root / "setup.json"

    @property
    def generations(self) -> Path:
        return self.root / "generations.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def git_log(self) -> Path:
        return self.root / "git-runs.log"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def real_git() -> str:
    found = shutil.which("git")
    if found is None:
        raise SystemExit("git is not on PATH")
    return os.path.realpath(found)


def write_git_wrapper(layout: Layout) -> None:
    """A `git` first on the child's PATH: one line per run, then the real git."""
    layout.bin.mkdir(parents=True, exist_ok=True)
    wrapper = layout.bin / "git"
    wrapper.write_text(
        f'#!/bin/sh\nprintf \'%s\\n\' "$*" >> "{layout.git_log}"\nexec "{real_git()}" "$@"\n'
    )
    wrapper.chmod(0o755)


def git_subcommands(log: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    if not log.exists():
        return counts
    for line in log.read_text().splitlines():
        words = line.split()
        i = 0
        while i < len(words) and words[i].startswith("-"):
            i += 2 if words[i] in ("-C", "-c") else 1
        counts[words[i] if i < len(words) else "?"] += 1
    return counts


# --- children: the tick, the watch alone ---------------------------------------------------------


class TreeSampler(threading.Thread):
    """The sum of RSS over a process and its descendants, sampled every 0.2 s; its peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kb = 0
        self.done = threading.Event()

    @staticmethod
    def _tree(pid: int) -> list[int]:
        found, todo = [], [pid]
        while todo:
            current = todo.pop()
            found.append(current)
            try:
                tasks = os.listdir(f"/proc/{current}/task")
            except OSError:
                continue
            for task in tasks:
                try:
                    text = Path(f"/proc/{current}/task/{task}/children").read_text()
                except OSError:
                    continue
                todo.extend(int(child) for child in text.split())
        return found

    @staticmethod
    def _rss_kb(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def run(self) -> None:
        while not self.done.wait(0.2):
            total = sum(self._rss_kb(pid) for pid in self._tree(self.pid))
            self.peak_kb = max(self.peak_kb, total)


@dataclass
class Child:
    wall: float
    rss_mb: float  # ru_maxrss from wait4: the largest of the process and its waited children
    tree_mb: float  # the sampled peak of the whole tree's RSS, summed
    code: int
    output: str


def run_child(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )
        sampler = TreeSampler(proc.pid)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Child(
        wall, usage.ru_maxrss / 1024, sampler.peak_kb / 1024, proc.returncode, log.read_text()
    )


def wheelstock_argv(profile: Path | None) -> list[str]:
    script = Path(sys.executable).parent / "wheelstock"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "bot"]
    if profile is None:
        return command
    if command[0] == sys.executable:
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "bot"]
    return [sys.executable, "-m", "cProfile", "-o", str(profile), str(script)]


@dataclass
class Tick:
    label: str
    wall: float
    rss_mb: float
    tree_mb: float
    git: Counter[str]
    http: dict[str, int]
    line: str
    profile: Path | None = None

    @property
    def opened(self) -> int:
        return _count(self.line, "PRs opened")

    @property
    def superseded(self) -> int:
        return _count(self.line, "PRs superseded")

    @property
    def errors(self) -> int:
        return _count(self.line, "errors")

    @property
    def git_runs(self) -> int:
        return sum(self.git.values())

    @property
    def git_reads(self) -> int:
        return sum(n for command, n in self.git.items() if command in GIT_READS)


HTTP_COUNTS = ("requests", "not_modified", "files", "metadata", "root", "root_not_modified")


def http_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """What the simulator answered between two of its stats: "pages" are project pages
    ("not_modified" their 304s), "root" the root page ("root_not_modified" its 304s)."""
    delta = {key: after[key] - before[key] for key in HTTP_COUNTS}
    delta["requests"] -= 1  # the stats request taken before
    delta["pages"] = delta["requests"] - delta["files"] - delta["metadata"] - delta["root"]
    return delta


def run_tick(
    layout: Layout,
    sim: Simulator,
    label: str,
    *,
    max_new_prs: int | None = None,
    profile: bool = False,
    state: Path | None = None,
    feed: bool = True,
) -> Tick:
    """``feed``: the tick as it runs by default, reading the change feed if upstream has one;
    False: with `--no-change-feed`, a conditional request for every project."""
    state = state or layout.run
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    prof = layout.logs / f"{slug}.prof" if profile else None
    argv = [
        *wheelstock_argv(prof),
        "tick",
        "--no-build",
        "--state-dir",
        str(state),
        "--registry",
        str(layout.registry),
        "--template",
        str(TEMPLATE),
        "--upstream",
        sim.url,
    ]
    if max_new_prs is not None:
        argv += ["--max-new-prs", str(max_new_prs)]
    if not feed:
        argv.append(NO_FEED)
    env = {**os.environ, "PATH": f"{layout.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    layout.git_log.unlink(missing_ok=True)
    if feed and sim.churning:
        sim.churn()
    before = sim.stats()
    child = run_child(argv, layout.logs / f"{slug}.log", env)
    http = http_delta(before, sim.stats())
    lines = _LINE.findall(child.output)
    if child.code != 0 or not lines:
        tail = "\n".join(child.output.strip().splitlines()[-20:])
        raise SystemExit(f"{label}: wheelstock tick failed (exit {child.code}):\n{tail}")
    tick = Tick(
        label,
        child.wall,
        child.rss_mb,
        child.tree_mb,
        git_subcommands(layout.git_log),
        http,
        lines[-1],
        prof,
    )
    print(
        f"  {label}: {tick.wall:.1f} s, {tick.git_runs} git, {http['requests']} HTTP "
        f"({http['root']} root, {http['not_modified']} 304), RSS {tick.rss_mb:.0f} MB "
        f"(tree {tick.tree_mb:.0f} MB) | {tick.line}",
        flush=True,
    )
    return tick


def child_watch(spec: dict[str, Any]) -> dict[str, Any]:
    """In the child: the watch alone, as the tick runs it, with the state's validators."""
    from bot.state import State
    from bot.upstream import Upstream, make_client
    from bot.watch import watch

    state = State(Path(spec["state"]))
    upstream = Upstream(spec["url"], make_client())
    known = state.validators(upstream.index_url)
    names = [project_name(i) for i in range(spec["projects"])]
    items = [(name, known.get(name)) for name in names]
    start = time.perf_counter()
    statuses = Counter(checked.status for checked in watch(upstream, items, processes=None))
    seconds = time.perf_counter() - start
    state.close()
    return {"watch": seconds, "statuses": dict(statuses), "validators": len(known)}


@dataclass
class WatchRun:
    wall: float
    inside: float  # the watch() call alone
    rss_mb: float
    tree_mb: float
    requests: int


def run_watch(layout: Layout, sim: Simulator, projects: int, label: str) -> WatchRun:
    spec = {"state": str(layout.run), "url": sim.url, "projects": projects}
    argv = [sys.executable, str(Path(__file__).resolve()), "--child-watch", json.dumps(spec)]
    before = sim.stats()
    child = run_child(argv, layout.logs / f"{label}.log")
    http = http_delta(before, sim.stats())
    if child.code != 0:
        raise SystemExit(f"{label}: the watch failed:\n{child.output[-2000:]}")
    out = json.loads(child.output.strip().splitlines()[-1])
    if out["statuses"] != {"unchanged": projects} or http["not_modified"] != projects:
        raise SystemExit(f"{label}: expected {projects} 304s, got {out['statuses']} / {http}")
    run = WatchRun(child.wall, out["watch"], child.rss_mb, child.tree_mb, http["requests"])
    print(
        f"  {label}: {run.wall:.1f} s (watch() {run.inside:.1f} s), {run.requests} HTTP, "
        f"RSS {run.rss_mb:.0f} MB (tree {run.tree_mb:.0f} MB)",
        flush=True,
    )
    return run


# --- setup: the fast path ----------------------------------------------------------------------


class Renderer:
    """`bot.feedstock.render` with one jinja2 environment for all feedstocks (it makes one a
    call, 3 ms); the output is compared with the real function on a sample."""

    def __init__(self, template_dir: Path) -> None:
        import jinja2

        from bot import feedstock

        self.version = feedstock.template_version(template_dir)
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(template_dir)),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            autoescape=False,
        )
        self.env.filters["yaml"] = lambda value: json.dumps(str(value))
        self.paths = [
            path.relative_to(template_dir).as_posix()
            for path in sorted(template_dir.rglob("*"))
            if path.is_file() and path.name != feedstock.TEMPLATE_VERSION_FILE
        ]
        self.template_dir = template_dir

    def render(self, **context: Any) -> dict[str, str]:
        context = {**context, "template_version": self.version}
        files = {}
        for relative in self.paths:
            if relative.endswith(".j2"):
                files[relative[:-3]] = self.env.get_template(relative).render(context)
            else:
                files[relative] = (self.template_dir / relative).read_text(encoding="utf-8")
        return files


def _quoted(path: str) -> bytes:
    return ('"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"').encode()


@dataclass(frozen=True)
class Project:
    index: int
    name: str
    version: str
    filename: str
    url: str
    sha256: str


def initial_project(index: int, base_url: str) -> Project:
    name = project_name(index)
    version = version_of(RELEASES - 1)  # upstream's newest: what create_feedstock picks
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"
    digest = hashlib.sha256(sdist_bytes(name, version)).hexdigest()
    return Project(index, name, version, filename, f"{base_url}/files/{name}/{filename}", digest)


def render_project(renderer: Renderer, project: Project) -> dict[str, str]:
    from bot.feedstock import Source

    return renderer.render(
        project=project.name,
        version=project.version,
        source=Source(filename=project.filename, url=project.url, sha256=project.sha256),
        maintainers=(MAINTAINER,),
        consent=f"https://example.org/{project.name}/1",
    )


def write_registry(directory: Path, projects: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(projects):
        name = project_name(i)
        (directory / f"{name}.yaml").write_text(
            f"project: {name}\nmaintainers:\n  - {MAINTAINER}\n"
            f"consent: https://example.org/{name}/1\n"
        )


def make_feedstocks(layout: Layout, projects: list[Project]) -> dict[str, str]:
    """All initial commits in one fast-import into objects.git; a skeleton bare repo each."""
    git = real_git()
    subprocess.run([git, "init", "--quiet", "--bare", str(layout.objects)], check=True)
    marks = layout.root / "objects.marks"
    proc = subprocess.Popen(
        [git, "-C", str(layout.objects), "fast-import", "--quiet", "--done",
         f"--export-marks={marks}"],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    renderer = Renderer(TEMPLATE)
    stamp = int(time.time())
    for mark, project in enumerate(projects, start=1):
        files = render_project(renderer, project)
        message = f"Create feedstock for {project.name} {project.version}\n".encode()
        ref = f"refs/heads/{project.name}"
        parts = [
            f"reset {ref}\ncommit {ref}\nmark :{mark}\n".encode(),
            f"author {BOT} {stamp} +0000\ncommitter {BOT} {stamp} +0000\n".encode(),
            b"data %d\n" % len(message),
            message,
        ]
        for path, text in files.items():
            data = text.encode()
            parts += [b"M 100644 inline " + _quoted(path) + b"\n", b"data %d\n" % len(data)]
            parts += [data, b"\n"]
        parts.append(b"\n")
        proc.stdin.write(b"".join(parts))
    proc.stdin.write(b"done\n")
    proc.stdin.close()
    if proc.wait() != 0:
        raise SystemExit("git fast-import failed")
    by_mark = dict(line.split() for line in marks.read_text().splitlines())
    shas = {p.name: by_mark[f":{mark}"] for mark, p in enumerate(projects, start=1)}
    repos = layout.base / "forge" / "repos"
    alternates = f"{layout.objects / 'objects'}\n"
    config = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
    for project in projects:
        repo = repos / f"{project.name}-feedstock.git"
        for sub in ("hooks", "objects/info", "objects/pack", "refs/heads", "refs/tags"):
            (repo / sub).mkdir(parents=True)
        (repo / "HEAD").write_text("ref: refs/heads/main\n")
        (repo / "config").write_text(config)
        (repo / "objects" / "info" / "alternates").write_text(alternates)
        (repo / "refs" / "heads" / "main").write_text(shas[project.name] + "\n")
    return shas


def initial_metadata(project: Project) -> Any:
    from bot.metadata import ProjectMetadata

    return ProjectMetadata(
        project=project.name,
        version=project.version,
        requires_dist=requires_of(project.index),
        requires_python=">=3.8",
        build_requires=("setuptools>=61",),
        build_backend="setuptools.build_meta",
        source="pep658",
        license="MIT",
        project_urls=(),
    )


def fill_metadata(state: Path, projects: list[Project]) -> None:
    """MetadataCache files as create_feedstock leaves them, without a fsync each."""
    from bot.metadata import CACHE_FORMAT, MetadataCache

    cache = MetadataCache(state / "metadata")
    for project in projects:
        meta = initial_metadata(project)
        path = cache.path(meta.project, meta.version)
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"format": CACHE_FORMAT, "metadata": meta.to_json()}
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")


def verify_setup(
    layout: Layout, sim: Simulator, projects: list[Project], shas: dict[str, str]
) -> None:
    """The fast path against the real code, on a sample: rendering, the release and source
    the bot would pick, the metadata it would read, and real reads of the forge."""
    from bot import feedstock
    from bot.dependencies import wanted_release
    from bot.feedstock import FEEDSTOCK_FILE
    from bot.forge.local import LocalForge
    from bot.metadata import MetadataCache, fetch_metadata
    from bot.propose import source_of
    from bot.registry import load_directory
    from bot.upstream import Upstream, make_client

    sample = sorted({0, 1, len(projects) // 2, len(projects) - 1, *range(0, len(projects), 997)})
    renderer = Renderer(TEMPLATE)
    entries = {e.name: e for e in load_directory(layout.registry).entries}
    upstream = Upstream(sim.url, make_client())
    forge = LocalForge(layout.base / "forge")
    with tempfile.TemporaryDirectory() as scratch:
        cache = MetadataCache(Path(scratch) / "metadata")
        for i in sample[:8]:
            project = projects[i]
            entry = entries[project.name]
            page = upstream.project(project.name)
            release = wanted_release(entry, page.files)
            assert release is not None and str(release.version) == project.version
            source, _ = source_of(entry, release)
            assert (source.filename, source.url, source.sha256) == (
                project.filename,
                project.url,
                project.sha256,
            ), (source, project)
            real = feedstock.render(
                TEMPLATE,
                project=entry.project,
                version=project.version,
                source=source,
                maintainers=entry.maintainers,
                consent=entry.consent,
            )
            assert real == render_project(renderer, project), project.name
            meta = fetch_metadata(
                upstream, page.files, project.name, project.version, cache, workdir=Path(scratch)
            )
            assert meta == initial_metadata(project), (meta, initial_metadata(project))
    upstream.client.close()
    for i in sample:
        project = projects[i]
        assert forge.head(project.name) == shas[project.name]
        assert forge.branches(project.name) == ["main"]
        text = forge.read_file(project.name, FEEDSTOCK_FILE)
        assert text == render_project(renderer, project)[FEEDSTOCK_FILE]
        assert feedstock.parse(text).version == project.version
        assert MetadataCache(layout.base / "metadata").get(project.name, project.version)
    print(f"  verified the fast path on {len(sample)} feedstocks with real reads", flush=True)


def _tick_record(tick: Tick) -> dict[str, Any]:
    return {
        "label": tick.label,
        "wall": tick.wall,
        "git": tick.git_runs,
        "http": tick.http["requests"],
        "rss": tick.rss_mb,
        "tree": tick.tree_mb,
        "line": tick.line,
    }


def build_state(layout: Layout, projects: int, args: argparse.Namespace) -> dict[str, Any]:
    """The steady state of one size in layout.base (see the module's docstring).

    Phase by phase, each recorded in setup.json as it is done, so a run that stops (a tick
    that fails, ^C) resumes at the phase it was in.
    """
    from bot.forge.local import LocalForge

    info: dict[str, Any] = {}
    if layout.info.exists():
        info = json.loads(layout.info.read_text())
        if any(info.get(k) != v for k, v in _identity(projects, args).items()):
            info = {}
    if not info.get("phases"):
        if layout.root.exists():
            shutil.rmtree(layout.root)
        layout.root.mkdir(parents=True)
        layout.logs.mkdir()
        info = {
            **_identity(projects, args),
            "port": free_port(),
            "open_prs": max(1, round(projects * OPEN_FRACTION)),
            "phases": [],
            "steps": {},
            "ticks": [],
            "seconds": 0.0,
        }
    write_git_wrapper(layout)
    phases: list[str] = info["phases"]
    wanted = int(info["open_prs"])
    started = time.perf_counter() - float(info["seconds"])

    def done(phase: str) -> None:
        phases.append(phase)
        info["seconds"] = time.perf_counter() - started
        layout.info.write_text(json.dumps(info, indent=2))

    def step(label: str, clock: float) -> None:
        info["steps"][label] = time.perf_counter() - clock

    def tick(label: str, **kwargs: Any) -> Tick:
        # Without the feed, against the simulator without serials: the setup is what it was
        # before the feed, and its state serves both modes.
        label = f"setup {projects} {label}"
        result = run_tick(layout, sim, label, state=layout.base, feed=False, **kwargs)
        assert result.errors == 0, result.line
        info["ticks"].append(_tick_record(result))
        return result

    resumed = f", resuming after {phases[-1]}" if phases else ""
    print(f"setting up {projects:,} projects in {layout.root}{resumed}", flush=True)
    generations = str(layout.generations) if layout.generations.exists() else None
    with Simulator(
        projects, files=True, port=int(info["port"]), delay=args.delay, generations=generations
    ) as sim:
        if "fast" not in phases:
            clock = time.perf_counter()
            write_registry(layout.registry, projects)
            step("registry files", clock)
            clock = time.perf_counter()
            chosen = [initial_project(i, sim.base) for i in range(projects)]
            shas = make_feedstocks(layout, chosen)
            step("feedstocks: render, one fast-import, skeleton repos (fast path)", clock)
            clock = time.perf_counter()
            fill_metadata(layout.base, chosen)
            os.sync()
            step("metadata cache files (fast path)", clock)
            clock = time.perf_counter()
            LocalForge(layout.base / "forge").changes(None)  # opens forge.db: the migration
            step("forge.db: LocalForge's migration (real: a hook, a for-each-ref a repo)", clock)
            verify_setup(layout, sim, chosen, shas)
            done("fast")
        if "first" not in phases:
            first = tick("first tick (syncs every project)")
            assert first.opened == 0, first.line
            done("first")
        if "release" not in phases:
            rng = random.Random(1)
            names = sorted(project_name(i) for i in rng.sample(range(projects), wanted))
            sim.release(names)
            layout.generations.write_text(json.dumps(sim.generations()))
            done("release")
        if "opening" not in phases:
            already = sum(len(n) for n in open_bot_prs(layout.base).values())
            tick(f"opening {wanted - already} PRs", max_new_prs=wanted - already)
            assert sum(len(n) for n in open_bot_prs(layout.base).values()) == wanted
            done("opening")
        if "settle" not in phases:
            settle = tick("settling (the bot's own changes seen once)")
            assert settle.opened == 0, settle.line
            done("settle")
        if "check" not in phases:
            check = tick("check: a no-change tick")
            assert check.opened == 0, check.line
            assert len(LocalForge(layout.base / "forge").pull_requests(state="open")) == wanted
            info["built"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            done("check")
    print(f"  set up in {info['seconds']:.0f} s", flush=True)
    return info


def _identity(projects: int, args: argparse.Namespace) -> dict[str, Any]:
    return {"version": STATE_VERSION, "projects": projects, "delay": args.delay}


def ensure_state(layout: Layout, projects: int, args: argparse.Namespace) -> dict[str, Any]:
    if layout.info.exists():
        info: dict[str, Any] = json.loads(layout.info.read_text())
        identity = all(info.get(k) == v for k, v in _identity(projects, args).items())
        if identity and "check" in info.get("phases", ()):
            print(f"reusing the state of {projects:,} projects in {layout.root}", flush=True)
            write_git_wrapper(layout)
            return info
    return build_state(layout, projects, args)


# Trees whose files are only ever replaced (written beside and renamed, as git, bot.fsutil and
# bot.index do), never changed in place: a copy may share their files with the base (hard
# links). Everything else (the SQLite databases, the push log the hooks append to, the PR
# records) is copied.
LINKED = ("forge/repos", "index", "metadata", "downloads")


def fresh_copy(layout: Layout) -> float:
    """The timed ticks work on a copy: the base stays the steady state for the next run."""
    clock = time.perf_counter()
    if layout.run.exists():
        shutil.rmtree(layout.run)

    def copy(source: Path, target: Path, relative: str) -> None:
        target.mkdir(parents=True)
        for entry in sorted(source.iterdir()):
            inner = f"{relative}{entry.name}"
            if (
                entry.is_dir()
                and not entry.is_symlink()
                and any(linked.startswith(inner + "/") for linked in LINKED)
            ):
                copy(entry, target / entry.name, inner + "/")
            else:
                flags = "-al" if inner in LINKED else "-a"
                subprocess.run(["cp", flags, str(entry), str(target / entry.name)], check=True)

    copy(layout.base, layout.run, "")
    os.sync()
    return time.perf_counter() - clock


def open_bot_prs(state: Path) -> dict[str, list[int]]:
    """Open PRs per project, of the bot's own (the numbers in its intents)."""
    from bot.forge.local import LocalForge
    from bot.state import State

    db = State(state)
    ours = {i.pr_number for i in db.intents() if i.pr_number is not None}
    db.close()
    found: dict[str, list[int]] = {}
    for pr in LocalForge(state / "forge").pull_requests(state="open"):
        if pr.number in ours:
            found.setdefault(pr.project, []).append(pr.number)
    return found


# --- measuring -------------------------------------------------------------------------------


@dataclass
class Mode:
    """The timed ticks of one mode: with the change feed (the default) or `--no-change-feed`."""

    feed: bool
    no_change: list[Tick] = field(default_factory=list)
    release: list[Tick] = field(default_factory=list)
    after_release: list[Tick] = field(default_factory=list)
    merged: list[Tick] = field(default_factory=list)
    checks: list[Tick] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "feed" if self.feed else "no feed"

    def timed(self) -> list[Tick]:
        return [*self.no_change, *self.release, *self.after_release, *self.merged]


@dataclass
class Size:
    projects: int
    open_prs: int
    info: dict[str, Any]
    copy_seconds: float = 0.0
    watch: list[WatchRun] = field(default_factory=list)
    plain: Mode = field(default_factory=lambda: Mode(feed=False))
    feed: Mode = field(default_factory=lambda: Mode(feed=True))
    first_feed: Tick | None = None  # the first tick with the feed, untimed for the goals

    @property
    def modes(self) -> tuple[Mode, Mode]:
        return (self.feed, self.plain)


@dataclass
class Rounds:
    """Which projects release and merge: never one twice, over both modes' rounds."""

    layout: Layout
    count: int
    merges: int
    rng: random.Random = field(default_factory=lambda: random.Random(2))
    released: set[str] = field(default_factory=set)
    merged: set[str] = field(default_factory=set)

    def to_release(self) -> list[str]:
        candidates = sorted(set(open_bot_prs(self.layout.run)) - self.released - self.merged)
        names = sorted(self.rng.sample(candidates, self.count))
        self.released.update(names)
        return names

    def to_merge(self) -> dict[str, int]:
        open_now = open_bot_prs(self.layout.run)
        pool = sorted(set(open_now) - self.released - self.merged)
        chosen = sorted(self.rng.sample(pool, self.merges))
        self.merged.update(chosen)
        return {name: open_now[name][0] for name in chosen}


def measure_mode(
    layout: Layout,
    sim: Simulator,
    size: Size,
    mode: Mode,
    rounds: Rounds | None,
    args: argparse.Namespace,
) -> None:
    """One mode's ticks: the no-change ticks (without the feed, alternating with the watch
    alone), then, for the main size, its rounds of 1% tick, the tick after it, 100 merges by
    hand and the tick after them, and a check."""
    from bot.forge.local import LocalForge

    feed, tag = mode.feed, f"({mode.name})"
    for run in range(args.runs):
        steps = ("tick",) if feed else ("watch", "tick") if run % 2 == 0 else ("tick", "watch")
        for step in steps:
            if step == "watch":
                size.watch.append(run_watch(layout, sim, size.projects, f"watch-alone-{run + 1}"))
                continue
            label = f"no-change tick {run + 1} {tag}"
            tick = run_tick(layout, sim, label, profile=args.profile, feed=feed)
            assert tick.opened == 0 and tick.errors == 0, tick.line
            mode.no_change.append(tick)
    if rounds is None:
        return
    for run in range(args.rounds):
        sim.release(rounds.to_release())
        tick = run_tick(
            layout,
            sim,
            f"1% tick {run + 1} {tag}",
            max_new_prs=4 * rounds.count,
            profile=args.profile,
            feed=feed,
        )
        assert tick.opened == rounds.count and tick.superseded == rounds.count, tick.line
        assert tick.errors == 0, tick.line
        mode.release.append(tick)
        label = f"tick after the 1% tick {run + 1} {tag}"
        after = run_tick(layout, sim, label, profile=False, feed=feed)
        assert after.opened == 0 and after.errors == 0, after.line
        mode.after_release.append(after)
        forge = LocalForge(layout.run / "forge")
        for number in rounds.to_merge().values():
            forge.merge_pr(number, "volunteer")
        tick = run_tick(
            layout, sim, f"merged tick {run + 1} {tag}", profile=args.profile, feed=feed
        )
        assert tick.opened == 0 and tick.errors == 0, tick.line
        mode.merged.append(tick)
        check = run_tick(layout, sim, f"check tick {run + 1} {tag}", profile=False, feed=feed)
        assert check.opened == 0 and check.errors == 0, check.line
        mode.checks.append(check)


def measure(layout: Layout, projects: int, args: argparse.Namespace, full: bool) -> Size:
    """Both modes on one fresh copy, against the simulator with serials on: first every tick
    with `--no-change-feed` (the order the figures were taken in before the feed), then one
    untimed tick with the feed, which takes its serials in, and every tick with it. Each
    mode runs in one stretch, as an operator runs it: no timed tick follows one of the other
    mode, whatever the bot does on a switch."""
    info = ensure_state(layout, projects, args)
    size = Size(projects, int(info["open_prs"]), info)
    size.copy_seconds = fresh_copy(layout)
    print(f"measuring {projects:,} projects (state copied in {size.copy_seconds:.0f} s)")
    rounds = None
    if full:
        count = max(1, round(projects * RELEASE_FRACTION))
        rounds = Rounds(layout, count, max(1, round(projects * MERGE_FRACTION)))
    with Simulator(
        projects,
        files=True,
        serials=True,
        root_projects=args.root_projects,
        port=int(info["port"]),
        delay=args.delay,
        generations=str(layout.generations),
    ) as sim:
        sim.churning = not args.root_unchanged
        measure_mode(layout, sim, size, size.plain, rounds, args)
        first = run_tick(layout, sim, "first tick with the feed", feed=True)
        assert first.opened == 0 and first.errors == 0, first.line
        size.first_feed = first
        measure_mode(layout, sim, size, size.feed, rounds, args)
    return size


# --- the report ------------------------------------------------------------------------------


def _spread(values: Sequence[float], unit: str = " s", digits: int = 1) -> tuple[str, str]:
    median = statistics.median(values)
    return f"{median:.{digits}f}{unit}", f"{min(values):.{digits}f} - {max(values):.{digits}f}"


def _median(ticks: Sequence[Tick]) -> float:
    return statistics.median(t.wall for t in ticks)


def _git_text(ticks: Sequence[Tick]) -> str:
    if not ticks:
        return ""
    runs = statistics.median(t.git_runs for t in ticks)
    last = ticks[-1].git
    parts = ", ".join(f"{command} {n}" for command, n in last.most_common(6))
    return f"{runs:,.0f}" + (f" ({parts})" if parts else "")


def _http_text(ticks: Sequence[Tick]) -> str:
    t = ticks[-1].http
    pages = t["pages"] - t["not_modified"]
    root = f"root {t['root']:,} ({t['root_not_modified']:,} 304); " if t["root"] else ""
    return (
        f"{t['requests']:,} ({root}{t['not_modified']:,} 304, {pages:,} pages, "
        f"{t['files']:,} sdists, {t['metadata']:,} metadata)"
    )


def _requests_text(tick: Tick) -> str:
    """Root and project-page requests (and files) of one tick, for the feed table."""
    t = tick.http
    files = t["files"] + t["metadata"]
    return f"{t['root']:,} + {t['pages']:,}" + (f" (+ {files:,} files)" if files else "")


def _rss_text(ticks: Sequence[Tick] | Sequence[WatchRun]) -> str:
    return f"{max(t.rss_mb for t in ticks):.0f} / {max(t.tree_mb for t in ticks):.0f} MB"


def report(sizes: list[Size], args: argparse.Namespace) -> list[str]:
    main = sizes[-1]
    feed, plain = main.feed, main.plain
    verdicts: list[str] = []
    print()
    print(
        f"| {main.projects:,} projects, {main.open_prs:,} open bot PRs | runs | wall, median | "
        "min - max | git runs (last run's commands) | HTTP requests (last run) | "
        "peak RSS: largest process / tree |"
    )
    print("| --- | ---: | ---: | ---: | --- | --- | ---: |")
    w = main.watch
    median, spread = _spread([r.wall for r in w])
    inside, _ = _spread([r.inside for r in w])
    print(
        f"| watch alone (child process; `watch()` itself {inside}) | {len(w)} | {median} | "
        f"{spread} | 0 | {w[-1].requests:,} (all 304) | {_rss_text(w)} |"
    )
    first = [main.first_feed] if main.first_feed else []
    rows = [
        ("**no-change tick**, feed", feed.no_change),
        ("**no-change tick**, no feed", plain.no_change),
        ("the first tick with the feed (after the no-feed ticks; untimed)", first),
        ("**1% tick**, feed (releases: bump PRs opened, older superseded)", feed.release),
        ("**1% tick**, no feed", plain.release),
        ("the tick after it (the bot's own changes seen once), feed", feed.after_release),
        ("the tick after it, no feed", plain.after_release),
        ("**tick after 100 merges by hand**, feed", feed.merged),
        ("**tick after 100 merges by hand**, no feed", plain.merged),
        ("the no-change tick after each round, feed", feed.checks),
        ("the no-change tick after each round, no feed", plain.checks),
    ]
    for label, ticks in rows:
        if not ticks:
            continue
        median, spread = _spread([t.wall for t in ticks])
        print(
            f"| {label} | {len(ticks)} | {median} | {spread} | {_git_text(ticks)} | "
            f"{_http_text(ticks)} | {_rss_text(ticks)} |"
        )
    print()
    for label, ticks in (rows[3], rows[4], rows[7], rows[8]):
        if ticks:
            print(f"{label}: {ticks[-1].line}")

    print()
    print("| the feed, medians | with the feed | `--no-change-feed` | feed / no feed | "
          "requests: root + project pages, feed | no feed |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    pairs = [
        ("no-change tick", feed.no_change, plain.no_change),
        ("1% tick", feed.release, plain.release),
        ("the tick after it", feed.after_release, plain.after_release),
        ("tick after 100 merges by hand", feed.merged, plain.merged),
    ]
    for label, with_feed, without in pairs:
        if not with_feed or not without:
            continue
        a, b = _median(with_feed), _median(without)
        print(
            f"| {label} | {a:.1f} s | {b:.1f} s | {a / b:.2f}x | "
            f"{_requests_text(with_feed[-1])} | {_requests_text(without[-1])} |"
        )

    print()
    print("| projects | open bot PRs | no-change tick, no feed | min - max | watch alone | "
          "tick / watch | per 1,000 projects | no-change tick, feed | min - max | "
          "feed / no feed | per 1,000 projects | git runs |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for size in sizes:
        plain_s, feed_s = _median(size.plain.no_change), _median(size.feed.no_change)
        watch = statistics.median(r.wall for r in size.watch)
        _, spread = _spread([t.wall for t in size.plain.no_change])
        _, feed_spread = _spread([t.wall for t in size.feed.no_change])
        git = max(t.git_runs for m in size.modes for t in m.no_change)
        print(
            f"| {size.projects:,} | {size.open_prs:,} | {plain_s:.1f} s | {spread} | "
            f"{watch:.1f} s | {plain_s / watch:.2f}x | {plain_s / size.projects * 1000:.2f} s | "
            f"{feed_s:.1f} s | {feed_spread} | {feed_s / plain_s:.2f}x | "
            f"{feed_s / size.projects * 1000:.2f} s | {git} |"
        )

    print()
    print("setup (untimed for the goals):")
    for size in sizes:
        info = size.info
        print(f"  {size.projects:,} projects, built {info['built']} in {info['seconds']:.0f} s:")
        for step, seconds in info["steps"].items():
            print(f"    {step}: {seconds:.1f} s")
        for t in info["ticks"]:
            print(
                f"    {t['label']}: {t['wall']:.1f} s, {t['git']} git, {t['http']} HTTP, "
                f"RSS {t['rss']:.0f} / {t['tree']:.0f} MB | {t['line']}"
            )

    watch = statistics.median(r.wall for r in main.watch)
    for mode in main.modes:
        no_change = _median(mode.no_change)
        met = no_change <= GOAL_NO_CHANGE and no_change <= GOAL_WATCH_RATIO * watch
        verdicts.append(
            f"no-change tick ({mode.name}) <= {GOAL_NO_CHANGE:.0f} s and <= "
            f"{GOAL_WATCH_RATIO}x the watch alone: {'met' if met else 'NOT met'} "
            f"({no_change:.1f} s, {no_change / watch:.2f}x of {watch:.1f} s)"
        )
    for mode in main.modes:
        if mode.release:
            release = _median(mode.release)
            verdicts.append(
                f"1% tick ({mode.name}) <= {GOAL_RELEASE:.0f} s: "
                f"{'met' if release <= GOAL_RELEASE else 'NOT met'} ({release:.1f} s)"
            )
    every = [t for s in sizes for m in s.modes for t in m.timed()]
    peak = max(max(t.rss_mb, t.tree_mb) for t in every)
    verdicts.append(
        f"peak RSS <= {GOAL_RSS_MB:.0f} MB: {'met' if peak <= GOAL_RSS_MB else 'NOT met'} "
        f"({peak:.0f} MB, the largest of any timed tick's process tree)"
    )
    if len(sizes) > 1:
        for name in ("plain", "feed"):
            per = [_median(getattr(s, name).no_change) / s.projects for s in sizes]
            ratio = per[-1] / per[0]
            verdicts.append(
                f"curve ({getattr(main, name).name}) no worse than linear (time per project "
                f"at {sizes[-1].projects:,} <= {GOAL_CURVE}x that at {sizes[0].projects:,}): "
                f"{'met' if ratio <= GOAL_CURVE else 'NOT met'} ({ratio:.2f}x)"
            )
    print()
    for line in verdicts:
        print(f"goal: {line}")
    return verdicts


def print_profiles(size: Size, top: int) -> None:
    for mode in size.modes:
        for ticks in (mode.no_change[-1:], mode.release[-1:], mode.merged[-1:]):
            for tick in ticks:
                if tick.profile is None or not tick.profile.exists():
                    continue
                stats = pstats.Stats(str(tick.profile))
                print(f"\n--- {tick.label}: forge calls (LocalForge methods, from its profile) ---")
                print(forge_calls(stats) or "none")
                for order in ("cumulative", "tottime"):
                    print(f"\n--- cProfile of {tick.label} ({tick.wall:.1f} s), by {order} ---")
                    stats.sort_stats(order).print_stats(top)


FORGE_READS = (
    "has_feedstock",
    "feedstocks",
    "head",
    "read_file",
    "branches",
    "branch_authors",
    "pull_requests",
    "get_pr",
    "comments",
    "changes",
    "diff",
)


def forge_calls(stats: pstats.Stats) -> str:
    """Calls of the Forge protocol's methods on LocalForge, reads first."""
    calls: Counter[str] = Counter()
    for (filename, _, function), row in stats.stats.items():  # type: ignore[attr-defined]
        if filename.endswith(os.path.join("forge", "local.py")) and function[0].islower():
            calls[function] += int(row[1])  # primitive calls
    reads = [f"{f} {calls[f]:,}" for f in FORGE_READS if calls.get(f)]
    others = [f"{f} {n:,}" for f, n in sorted(calls.items()) if f not in FORGE_READS]
    return (
        "reads: "
        + (", ".join(reads) or "none")
        + "; writes and others: "
        + (", ".join(others) or "none")
    )


def check_feed_flag() -> None:
    """The ticks are timed with and without the change feed: `wheelstock tick` must have
    `--no-change-feed` (the setup's ticks pass it too)."""
    done = subprocess.run(
        [*wheelstock_argv(None), "tick", "--help"], capture_output=True, text=True, check=False
    )
    if NO_FEED not in done.stdout:
        raise SystemExit(f"`wheelstock tick` has no {NO_FEED}: this benchmark needs it")


def _revision() -> str:
    """`git describe` of the tree; a copy without .git may name it in a REVISION file."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        described = ""
    if not described and (REPO / "REVISION").is_file():
        described = (REPO / "REVISION").read_text().strip() + " (copy)"
    return described or "?"


def _git_version() -> str:
    return subprocess.run([real_git(), "--version"], capture_output=True, text=True).stdout.strip()


def _bot_location() -> str:
    """Where the child's `bot` comes from (PYTHONPATH may point at a copy of the tree)."""
    out = subprocess.run(
        [sys.executable, "-c", "import bot; print(bot.__file__)"], capture_output=True, text=True
    )
    return f"bot from {Path(out.stdout.strip()).parent}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    if argv[:1] == ["--child-watch"]:
        print(json.dumps(child_watch(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--projects", type=int, default=25_000)
    parser.add_argument(
        "--curve",
        default="",
        help="smaller sizes for the curve, comma-separated (default: a tenth and two fifths)",
    )
    parser.add_argument("--no-curve", action="store_true", help="the main size only")
    parser.add_argument("--runs", type=int, default=3, help="no-change ticks (and watches)")
    parser.add_argument("--rounds", type=int, default=0, help="1%% + merge rounds (default: runs)")
    parser.add_argument("--delay", type=float, default=0.030, help="seconds per response")
    parser.add_argument("--quick", action="store_true", help="2,500 projects, curve 500/1,000")
    parser.add_argument("--work", type=Path, help="keep the states here and reuse them")
    parser.add_argument(
        "--root-unchanged",
        action="store_true",
        help="let the root page answer 304 to a tick with the feed when no enrolled project "
        "moved (by default a project no one enrolled changes before each such tick, as a "
        "real index's root changes every few seconds)",
    )
    parser.add_argument(
        "--root-projects",
        type=int,
        default=ROOT_PROJECTS,
        help="projects upstream's root page lists in all, enrolled or not "
        "(default: %(default)s, as many as a real index lists)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the timed ticks")
    parser.add_argument("--top", type=int, default=30, help="profile lines to print")
    args = parser.parse_args(argv)
    if args.quick:
        args.projects, args.runs = 2_500, 1
        args.curve = args.curve or "500,1000"
    args.rounds = args.rounds or args.runs
    check_feed_flag()
    curve = (
        [int(x) for x in args.curve.split(",") if x.strip()]
        if args.curve
        else [args.projects // 10, args.projects * 2 // 5]
    )
    curve = [] if args.no_curve else sorted({n for n in curve if 0 < n < args.projects})
    work = (args.work or Path(tempfile.mkdtemp(prefix="wheelstock-bench-tick-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(
        f"{args.projects:,} projects ({OPEN_FRACTION:.0%} with an open bot PR), curve "
        f"{', '.join(f'{n:,}' for n in curve) or 'none'}; {args.runs} no-change run(s), "
        f"{args.rounds} round(s) of 1% + merges; {args.delay * 1000:.0f} ms per response; "
        f"{os.cpu_count()} CPUs, {machine.memory()}, Python {platform.python_version()}, "
        f"{_git_version()}; wheelstock {_revision()} ({_bot_location()}); load average "
        f"{machine.load()}; states under {work}"
        + ("; timed ticks under cProfile" if args.profile else ""),
        flush=True,
    )
    try:
        sizes = [measure(Layout(work / f"p{n}"), n, args, full=False) for n in curve]
        sizes.append(measure(Layout(work / f"p{args.projects}"), args.projects, args, full=True))
        report(sizes, args)
        if args.profile:
            print_profiles(sizes[-1], args.top)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nload average at the end: {machine.load()}; the whole run took "
        f"{time.perf_counter() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
