"""Benchmark the index tree (bot.index) against dumb-pypi on the same 250,000-file list.

Both sides read the same package list (one JSON object a line, dumb-pypi's own format) and write a
whole static index into an empty directory, each in its own process, alternating. Then one project
is published into the full index (ours: a real wheel with `publish`; dumb-pypi: the same file added
with `--previous-package-list-json`), at a tenth of the size and at the full size, to show whether
it stays flat; then `verify` and `rebuild` of the full tree. Every step runs in a child process, so
its wall time and its peak RSS (wait4's ru_maxrss) are its own.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import functools
import hashlib
import importlib.util
import io
import json
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine

GOAL_FULL_RATIO = 3.0  # our full write at least this many times faster than dumb-pypi's build
GOAL_PUBLISH_SECONDS = 0.050
GOAL_FLAT_RATIO = 1.5  # publish time at the full size / at a tenth of it

# Upstream's files are linked by an absolute URL (that is how our pages tell them from ours).
# A reserved name: the benchmark never reaches out, and names no real host.
FILES_URL = "https://upstream.invalid/files/"
VERSIONS = 5  # x (sdist + wheel) = 10 files a project, as shared/BENCHMARKS.md says
BASE_TIME = 1_600_000_000  # upload times, seconds since the epoch, fixed so runs repeat
# What we publish: a wheel of one of upstream's releases for a platform upstream has no wheel for,
# which is what the bot builds; so our file sits beside upstream's ten, none of them yanked.
OUR_TAG = "cp311-cp311-manylinux_2_17_x86_64"
# A build record of about the size a real one has (the sdist, the builder, the environment).
BUILD_RECORD = {
    "buildDefinition": {
        "buildType": "https://wheelstock.invalid/build/v1",
        "externalParameters": {"sdist": {"sha256": "0" * 64}, "python": "3.11", "tag": OUR_TAG},
        "resolvedDependencies": [
            {"name": f"dep-{i}", "digest": {"sha256": "1" * 64}} for i in range(8)
        ],
    },
    "runDetails": {"builder": {"id": "wheelstock"}, "metadata": {"startedOn": "2026-01-01"}},
}
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/]*")


def project(i: int) -> str:
    return f"proj-{i:05d}"


def dist_name(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _fake_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- the input: one list for both sides ---------------------------------------------------------


def list_entry(filename: str, upload: int) -> dict[str, Any]:
    """A file as dumb-pypi's --package-list-json takes it; ours reads the very same line."""
    entry: dict[str, Any] = {
        "filename": filename,
        "hash": f"sha256={_fake_sha256(filename)}",
        "requires_python": ">=3.8",
        "upload_timestamp": upload,
    }
    if filename.endswith(".whl"):
        entry["core_metadata"] = f"sha256={_fake_sha256(filename + '.metadata')}"
    return entry


def write_list(path: Path, projects: int, extra: Sequence[dict[str, Any]] = ()) -> int:
    """`projects` x 5 releases x (sdist + wheel), then `extra` lines; returns the line count."""
    lines = 0
    with path.open("w") as handle:
        for i in range(projects):
            dist = dist_name(project(i))
            for v in range(VERSIONS):
                upload = BASE_TIME + i * 60 + v * 86_400 * 30
                for filename in (f"{dist}-1.{v}.0.tar.gz", f"{dist}-1.{v}.0-py3-none-any.whl"):
                    handle.write(json.dumps(list_entry(filename, upload)) + "\n")
                    lines += 1
        for entry in extra:
            handle.write(json.dumps(entry) + "\n")
            lines += 1
    return lines


# --- real wheels to publish ---------------------------------------------------------------------


def make_wheel(directory: Path, name: str, version: str, tag: str = OUR_TAG) -> Path:
    """A small valid wheel (PEP 427): one module, METADATA, WHEEL and a hashed RECORD."""
    dist = dist_name(name)
    info = f"{dist}-{version}.dist-info"
    members = {
        f"{dist}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Python: >=3.8\n"
        ).encode(),
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: wheelstock-bench\nRoot-Is-Purelib: false\nTag: {tag}\n"
        ).encode(),
    }
    record = ""
    for member, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{member},sha256={digest},{len(data)}\n"
    members[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in members.items():
            archive.writestr(zipfile.ZipInfo(member, (2024, 1, 1, 0, 0, 0)), data)
    return path


def signed_provenance(wheel: Path, key: Any) -> bytes:
    """The wheel's publication statement signed with the index key, as the gate makes it."""
    from bot import signing

    statement = signing.publication(
        wheel.name,
        hashlib.sha256(wheel.read_bytes()).hexdigest(),
        {"predicateType": "https://slsa.dev/provenance/v1", "predicate": BUILD_RECORD},
        {"predicate": {"approved-by": "reviewer", "at": "2026-01-01T00:00:00Z"}},
    )
    return (json.dumps(signing.sign(statement, key), indent=2) + "\n").encode()


# --- the child process: one step of ours --------------------------------------------------------


def _load_pages(path: Path) -> dict[str, list[Any]]:
    """The package list as upstream pages: {project: [DistFile, ...]}, as the watch hands them."""
    from bot.simple import DistFile

    pages: dict[str, list[Any]] = {}
    with path.open() as handle:
        for line in handle:
            info = json.loads(line)
            filename = info["filename"]
            # The generated names are <dist>-<version>...; the watch gives pages by project.
            name = filename.split("-", 1)[0].replace("_", "-")
            pages.setdefault(name, []).append(
                DistFile(
                    filename=filename,
                    url=FILES_URL + filename,
                    sha256=info["hash"].removeprefix("sha256="),
                    requires_python=info.get("requires_python"),
                    upload_time=datetime.fromtimestamp(info["upload_timestamp"], UTC),
                    core_metadata=info.get("core_metadata"),
                )
            )
    return pages


def _no_fsync(fd: Any) -> None:
    del fd


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one step of ours and say what it took (times inside the call, in seconds)."""
    if spec.get("no_fsync"):
        os.fsync = _no_fsync  # diagnostic only: what durability costs
    import bot.index as index

    phase = spec["phase"]
    if phase == "publish-interleaved":
        return _interleaved(spec["trees"])
    root = Path(spec["root"])
    out: dict[str, Any] = {}
    profiler = cProfile.Profile() if spec.get("profile") else None

    def call(work: Callable[[], Any]) -> tuple[float, Any]:
        if profiler is not None:
            profiler.enable()
        start = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - start
        if profiler is not None:
            profiler.disable()
        return seconds, result

    if phase == "refresh":
        start = time.perf_counter()
        pages = _load_pages(Path(spec["list"]))
        out["load"] = time.perf_counter() - start
        out["call"], said = call(lambda: index.refresh(root, pages))
        out["projects"] = len(pages)
        out["said"] = len(said)
    elif phase == "rebuild":
        out["call"], out["projects"] = call(lambda: index.rebuild(root))
    elif phase == "verify":
        from bot.index_verify import verify

        out["call"], problems = call(lambda: verify(root))
        out["problems"] = len(problems)
        out["first_problems"] = [str(p) for p in problems[:5]]
    elif phase == "publish":
        from bot import signing

        # What the gate hands over with each wheel: its provenance signed with the index key,
        # and the public key already in the tree. Signing is the gate's work, done before the
        # timer starts; writing the document beside the wheel is publish's, and is timed.
        key = signing.load_or_create_key(Path(spec["state"]))
        signing.publish_public_key(root, key)

        def work_for(name: str, wheel: str) -> Callable[[], Any]:
            path = Path(wheel)
            document = {path.name: signed_provenance(path, key)}
            return functools.partial(index.publish, root, name, [path], provenance=document)

        work_for(*spec["warmup"])()  # imports, the first page read: not timed
        for kind in ("existing", "new"):
            out[kind] = [call(work_for(name, wheel))[0] for name, wheel in spec[kind]]

    else:
        raise SystemExit(f"unknown phase {phase!r}")
    if profiler is not None:
        profiler.dump_stats(spec["profile"])
    return out


def _interleaved(trees: list[dict[str, Any]]) -> dict[str, Any]:
    """Publishes into each tree in turn, so the sizes are compared under the same load.

    A publish is a dozen fsyncs, and what else the machine writes meanwhile moves them by
    milliseconds: measured minutes apart, the two sizes would compare two loads.
    """
    import bot.index as index
    from bot import signing

    def work_for(tree: dict[str, Any], key: Any, name: str, wheel: str) -> Callable[[], Any]:
        path = Path(wheel)
        document = {path.name: signed_provenance(path, key)}
        return functools.partial(
            index.publish, Path(tree["root"]), name, [path], provenance=document
        )

    keys = []
    for tree in trees:
        key = signing.load_or_create_key(Path(tree["state"]))
        signing.publish_public_key(Path(tree["root"]), key)
        keys.append(key)
        work_for(tree, key, *tree["warmup"])()
    out: dict[str, Any] = {}
    for kind in ("existing", "new"):
        times: list[list[float]] = [[] for _ in trees]
        for k in range(len(trees[0][kind])):
            # Alternate who goes first, as the full writes do.
            order = list(range(len(trees))) if k % 2 == 0 else list(reversed(range(len(trees))))
            for t in order:
                work = work_for(trees[t], keys[t], *trees[t][kind][k])
                start = time.perf_counter()
                work()
                times[t].append(time.perf_counter() - start)
        out[kind] = times
    return out


# --- the parent: running children, timing them, their memory ------------------------------------


@dataclass
class Run:
    wall: float  # process start to exit, as the parent saw it
    rss_mb: float  # the child's peak RSS (ru_maxrss from wait4)
    out: dict[str, Any] = field(default_factory=dict)


def run_process(argv: Sequence[str], log: Path, *, then_sync: bool = False) -> Run:
    # Untimed: write back what earlier steps left dirty (dumb-pypi does not fsync, and rmtree
    # leaves work for the journal), so no step pays for another's writes.
    os.sync()
    with log.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        if then_sync:
            os.sync()  # timed: the pages on disk, as ours are when refresh returns
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-15:])
        raise SystemExit(f"{argv[0]} ... failed ({proc.returncode}):\n{_URL.sub('<url>', tail)}")
    return Run(wall, usage.ru_maxrss / 1024)


def run_ours(spec: dict[str, Any], log: Path) -> Run:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    run = run_process(argv, log)
    lines = log.read_text().strip().splitlines()
    run.out = json.loads(lines[-1]) if lines else {}
    return run


def dumb_build(
    venv: Path,
    package_list: Path,
    out: Path,
    log: Path,
    previous: Path | None = None,
    *,
    then_sync: bool = False,
) -> Run:
    argv = [str(venv / "bin" / "dumb-pypi"), "--package-list-json", str(package_list)]
    if previous is not None:
        argv += ["--previous-package-list-json", str(previous)]
    argv += ["--output-dir", str(out), "--packages-url", FILES_URL, "--no-per-release-json"]
    return run_process(argv, log, then_sync=then_sync)


def ensure_dumb_pypi(venv: Path) -> str:
    """A venv of its own with dumb-pypi from the configured index; returns its versions."""
    if not (venv / "bin" / "dumb-pypi").exists():
        print(f"installing dumb-pypi into {venv} ...", flush=True)
        for argv in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "dumb-pypi"],
        ):
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
                raise SystemExit(f"cannot install dumb-pypi:\n{_URL.sub('<index>', tail)}")
    code = (
        "import importlib.metadata as m; "
        "print(', '.join(f'{n} {m.version(n)}' for n in ('dumb-pypi', 'Jinja2', 'packaging')))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "dumb-pypi ?"


def tree_size(root: Path) -> tuple[int, int]:
    """Files (the lock file aside) and their bytes under root."""
    files = size = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name == ".index.lock":
                continue
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def profile_text(path: Path, limit: int) -> str:
    """The top of a cProfile dump, by cumulative time and by own time, without its headers."""
    parts = []
    for order in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(str(path), stream=buffer).strip_dirs().sort_stats(order).print_stats(limit)
        lines = buffer.getvalue().splitlines()
        start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
        total = next((line.strip() for line in lines if "function calls" in line), "")
        rows = [line for line in lines[start:] if line.strip()]
        parts.append(f"by {order} ({total}):\n" + "\n".join(rows))
    return "\n".join(parts)


# --- one size -----------------------------------------------------------------------------------


@dataclass
class Size:
    projects: int
    ours_full: list[Run] = field(default_factory=list)
    dumb_full: list[Run] = field(default_factory=list)
    ours_nofsync: list[Run] = field(default_factory=list)
    dumb_synced: list[Run] = field(default_factory=list)
    dumb_increment: list[Run] = field(default_factory=list)
    publish: Run | None = None
    verify: list[Run] = field(default_factory=list)
    rebuild: list[Run] = field(default_factory=list)
    ours_tree: tuple[int, int] = (0, 0)
    dumb_tree: tuple[int, int] = (0, 0)
    lines: int = 0
    profiles: dict[str, str] = field(default_factory=dict)
    # For the interleaved flatness step: this size's full tree, key and wheels to publish.
    flat: dict[str, Any] = field(default_factory=dict)
    # That step's medians (seconds) per kind, when it ran.
    flat_medians: dict[str, float] = field(default_factory=dict)


def measure(
    args: argparse.Namespace, projects: int, rounds: int, work: Path, venv: Path, full: bool
) -> Size:
    """Everything at one index size; `full` adds verify, rebuild and the fsync diagnostic."""
    size = Size(projects)
    here = fresh(work / f"n{projects}")
    logs = here / "logs"
    logs.mkdir()
    wheels = here / "wheels"

    # What gets published: a wheel of an upstream release for a platform upstream lacks, into
    # projects spread across the index (each publish a different project and version), and the
    # first wheel of projects that have no page yet (the root pages list them).
    spread = max(projects // (args.publishes + 2), 1)
    picks = [(project((k + 1) * spread % projects), f"1.{k % VERSIONS}.0") for k in range(64)]
    warmup = picks.pop(0)
    existing = picks[: args.publishes]
    spare = picks[args.publishes :]  # for the profile pass
    new = [(f"fresh-{k:03d}", "1.0.0") for k in range(args.publishes * 2)]

    def wheel_for(name: str, version: str) -> list[str]:
        return [name, str(make_wheel(wheels, name, version))]

    # dumb-pypi's increment adds the same kind of file, one per round, to its previous list.
    package_list = here / "list-0.jsonl"
    size.lines = write_list(package_list, projects)
    increments: list[dict[str, Any]] = []
    for k in range(rounds):
        name, version = existing[k % len(existing)]
        filename = f"{dist_name(name)}-{version}-{OUR_TAG}.whl"
        increments.append(list_entry(filename, BASE_TIME + 86_400 * 400 + k))
        write_list(here / f"list-{k + 1}.jsonl", projects, increments)
    print(
        f"{projects:,} projects: {size.lines:,} files in the list "
        f"({package_list.stat().st_size / 1e6:.0f} MB)",
        flush=True,
    )

    # Each round writes a directory of its own, and none is removed until the size is done:
    # removing 75,000 files between rounds left the filesystem slower for every later round.
    for r in range(rounds):
        ours_root = here / f"ours-{r}"
        dumb_root = here / f"dumb-{r}"
        # Alternate who goes first, so a drift in the machine's load favours neither side.
        order = ["ours", "dumb"] if r % 2 == 0 else ["dumb", "ours"]
        for side in order:
            if side == "ours":
                spec: dict[str, Any] = {
                    "phase": "refresh",
                    "root": str(fresh(ours_root)),
                    "list": str(package_list),
                }
                run = run_ours(spec, logs / f"refresh-{r}.log")
                size.ours_full.append(run)
            else:
                run = dumb_build(venv, package_list, fresh(dumb_root), logs / f"dumb-{r}.log")
                size.dumb_full.append(run)
            print(
                f"  full write {r + 1}/{rounds}: {side} {run.wall:.2f} s, {run.rss_mb:.0f} MB",
                flush=True,
            )
    size.ours_tree = tree_size(ours_root)
    size.dumb_tree = tree_size(dumb_root)

    if full and not args.no_diagnostic:
        spec = {
            "phase": "refresh",
            "root": str(fresh(here / "nofsync")),
            "list": str(package_list),
            "no_fsync": True,
        }
        run = run_ours(spec, logs / "refresh-nofsync.log")
        size.ours_nofsync.append(run)
        print(f"  full write without fsync (diagnostic): ours {run.wall:.2f} s", flush=True)
        synced = fresh(here / "synced")
        run = dumb_build(venv, package_list, synced, logs / "dumb-synced.log", then_sync=True)
        size.dumb_synced.append(run)
        print(f"  full build then sync (diagnostic): dumb-pypi {run.wall:.2f} s", flush=True)

    # One project into the full index.
    spec = {
        "phase": "publish",
        "root": str(ours_root),
        "state": str(here / "state"),
        "warmup": wheel_for(*warmup),
        "existing": [wheel_for(*pick) for pick in existing],
        "new": [wheel_for(*pick) for pick in new[: args.publishes]],
    }
    size.publish = run_ours(spec, logs / "publish.log")
    size.flat = {
        "root": str(ours_root),
        "state": str(here / "state"),
        "warmup": wheel_for(*spare[-3]),
        "existing": [wheel_for(*pick) for pick in spare[args.publishes : args.publishes * 2]],
        "new": [wheel_for(f"flat-{k:03d}", "1.0.0") for k in range(args.publishes)],
    }
    print(
        f"  publish: new version {statistics.median(size.publish.out['existing']) * 1000:.1f} ms, "
        f"new project {statistics.median(size.publish.out['new']) * 1000:.1f} ms (medians of "
        f"{args.publishes})",
        flush=True,
    )
    for k in range(rounds):
        run = dumb_build(
            venv,
            here / f"list-{k + 1}.jsonl",
            dumb_root,
            logs / f"dumb-increment-{k}.log",
            here / f"list-{k}.jsonl",
        )
        size.dumb_increment.append(run)
        print(f"  dumb-pypi increment {k + 1}/{rounds}: {run.wall:.2f} s", flush=True)

    if full:
        for r in range(rounds):
            run = run_ours({"phase": "verify", "root": str(ours_root)}, logs / f"verify-{r}.log")
            if run.out.get("missing"):
                print("  verify: bot.index.verify is not there yet", flush=True)
                break
            size.verify.append(run)
            print(f"  verify {r + 1}/{rounds}: {run.wall:.2f} s, {run.out['problems']} problems")
            for line in run.out["first_problems"]:
                print(f"    {line}")
        for r in range(rounds):
            run = run_ours({"phase": "rebuild", "root": str(ours_root)}, logs / f"rebuild-{r}.log")
            size.rebuild.append(run)
            print(f"  rebuild {r + 1}/{rounds}: {run.wall:.2f} s", flush=True)

    publish_missed = _publish_missed(size)
    if full and (args.profile or publish_missed):
        # Profiled apart (cProfile slows Python down), on the same full tree, fresh wheels.
        count = args.publishes
        for kind, picks_ in (("existing", spare[:count]), ("new", new[count : count * 2])):
            stats = here / f"publish-{kind}.prof"
            spec = {
                "phase": "publish",
                "root": str(ours_root),
                "state": str(here / "state"),
                "warmup": wheel_for(*spare[-1 - (kind == "new")]),
                "existing": [wheel_for(*p) for p in picks_] if kind == "existing" else [],
                "new": [wheel_for(*p) for p in picks_] if kind == "new" else [],
                "profile": str(stats),
            }
            run_ours(spec, logs / f"profile-{kind}.log")
            size.profiles[f"publish ({kind}), {count} calls"] = profile_text(stats, 14)
    if full and args.profile:
        stats = here / "refresh.prof"
        spec = {
            "phase": "refresh",
            "root": str(fresh(here / "profiled")),
            "list": str(package_list),
            "profile": str(stats),
        }
        run_ours(spec, logs / "profile-refresh.log")
        size.profiles["full write (refresh)"] = profile_text(stats, 14)
    return size


def _publish_missed(size: Size) -> bool:
    if size.publish is None:
        return False
    return any(
        statistics.median(size.publish.out[kind]) > GOAL_PUBLISH_SECONDS
        for kind in ("existing", "new")
    )


# --- the report ---------------------------------------------------------------------------------


def _spread(values: Sequence[float], scale: float = 1.0, unit: str = "s", digits: int = 2) -> str:
    if not values:
        return "-"
    med = statistics.median(values) * scale
    if len(values) == 1:
        return f"{med:.{digits}f} {unit}"
    low, high = min(values) * scale, max(values) * scale
    return f"{med:.{digits}f} {unit} ({low:.{digits}f} - {high:.{digits}f})"


def _walls(runs: Sequence[Run]) -> list[float]:
    return [r.wall for r in runs]


def _rss(runs: Sequence[Run]) -> str:
    return f"{max(r.rss_mb for r in runs):.0f} MB" if runs else "-"


def _ratio(dumb: Sequence[Run] | Sequence[float], ours: Sequence[float]) -> str:
    if not dumb or not ours:
        return "-"
    d = [r.wall if isinstance(r, Run) else r for r in dumb]
    return f"{statistics.median(d) / statistics.median(ours):,.1f}x"


def report(sizes: list[Size], rounds: dict[int, int], publishes: int) -> None:
    print()
    print(
        "| step | projects | rounds | ours, median (min - max) | dumb-pypi, median (min - max) "
        "| dumb-pypi / ours | peak RSS: ours / dumb-pypi |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in sizes:
        n = f"{s.projects:,}"
        k = rounds[s.projects]
        ours_walls = _walls(s.ours_full)
        print(
            f"| full write (ours: `refresh` into an empty tree; dumb-pypi: full build) | {n} | {k} "
            f"| {_spread(ours_walls)} | {_spread(_walls(s.dumb_full))} "
            f"| **{_ratio(s.dumb_full, ours_walls)}** "
            f"| {_rss(s.ours_full)} / {_rss(s.dumb_full)} |"
        )
        calls = [r.out["call"] for r in s.ours_full]
        print(
            f"| ... ours inside `refresh()` only (no start-up, no reading the list) | {n} | {k} "
            f"| {_spread(calls)} | | {_ratio(s.dumb_full, calls)} | |"
        )
        if s.ours_nofsync:
            walls = _walls(s.ours_nofsync)
            print(
                f"| ... ours with fsync off (diagnostic, not as shipped) | {n} | 1 "
                f"| {_spread(walls)} | | {_ratio(s.dumb_full, walls)} | {_rss(s.ours_nofsync)} |"
            )
        if s.dumb_synced:
            walls = _walls(s.dumb_synced)
            print(
                f"| ... dumb-pypi's full build then `sync` (diagnostic: its pages on disk, as "
                f"ours are) | {n} | 1 | | {_spread(walls)} | {_ratio(s.dumb_synced, ours_walls)} "
                f"| / {_rss(s.dumb_synced)} |"
            )
        if s.publish is not None:
            existing = s.publish.out["existing"]
            dumb = _walls(s.dumb_increment)
            print(
                f"| one project: a new wheel for a project on the index (dumb-pypi: one file "
                f"added, `--previous-package-list-json`) | {n} | {publishes} / {k} "
                f"| {_spread(existing, 1000, 'ms', 1)} | {_spread(dumb)} "
                f"| {_ratio(dumb, existing)} "
                f"| {s.publish.rss_mb:.0f} MB / {_rss(s.dumb_increment)} |"
            )
            print(
                f"| one project: the first wheel of a project not yet on the index (root pages) "
                f"| {n} | {publishes} | {_spread(s.publish.out['new'], 1000, 'ms', 1)} | | | |"
            )
        for kind, label in (("existing", "a new wheel"), ("new", "a new project's first wheel")):
            if kind in s.flat_medians:
                print(
                    f"| ... {label}, interleaved with the other size in one process (median) "
                    f"| {n} | {publishes} | {s.flat_medians[kind] * 1000:.1f} ms | | | |"
                )
        if s.verify:
            print(
                f"| `verify` of the full tree | {n} | {len(s.verify)} | {_spread(_walls(s.verify))}"
                f" (in the call {_spread([r.out['call'] for r in s.verify])}) | | "
                f"| {_rss(s.verify)} |"
            )
        if s.rebuild:
            print(
                f"| `rebuild` of the full tree (every page re-rendered, unchanged ones not "
                f"rewritten) | {n} | {len(s.rebuild)} | {_spread(_walls(s.rebuild))} | | "
                f"| {_rss(s.rebuild)} |"
            )
    for s in sizes:
        print(
            f"\n{s.projects:,} projects: ours writes {s.ours_tree[0]:,} files "
            f"({s.ours_tree[1] / 1e6:.0f} MB), dumb-pypi {s.dumb_tree[0]:,} files "
            f"({s.dumb_tree[1] / 1e6:.0f} MB)"
        )


def verdicts(sizes: list[Size], verify_pending: bool) -> None:
    big, small = max(sizes, key=lambda s: s.projects), min(sizes, key=lambda s: s.projects)
    print()
    ours = statistics.median(_walls(big.ours_full))
    dumb = statistics.median(_walls(big.dumb_full))
    ratio = dumb / ours
    met = ratio >= GOAL_FULL_RATIO
    print(
        f"goal: full write >= {GOAL_FULL_RATIO:.0f}x faster than dumb-pypi at "
        f"{big.projects:,} projects: {'met' if met else 'NOT met'} "
        f"(ours {ours:.2f} s, dumb-pypi {dumb:.2f} s, {ratio:.2f}x)"
    )
    if big.publish is not None and small.publish is not None and big is not small:
        for kind, label in (
            ("existing", "a new wheel for a project on the index"),
            ("new", "the first wheel of a new project"),
        ):
            # Flatness from the interleaved step (both sizes under the same load) when it ran.
            if kind in big.flat_medians and kind in small.flat_medians:
                at_big, at_small = big.flat_medians[kind], small.flat_medians[kind]
            else:
                at_big = statistics.median(big.publish.out[kind])
                at_small = statistics.median(small.publish.out[kind])
            flat = at_big / at_small
            met = at_big <= GOAL_PUBLISH_SECONDS and flat <= GOAL_FLAT_RATIO
            print(
                f"goal: publishing one project ({label}) <= {GOAL_PUBLISH_SECONDS * 1000:.0f} ms "
                f"and flat (<= {GOAL_FLAT_RATIO}x from {small.projects:,} to {big.projects:,}): "
                f"{'met' if met else 'NOT met'} ({at_small * 1000:.1f} ms -> "
                f"{at_big * 1000:.1f} ms, {flat:.2f}x)"
            )
    if verify_pending:
        print("verify: pending (bot.index has no verify yet)")
    for s in sizes:
        for title, text in s.profiles.items():
            print(f"\ncProfile, {s.projects:,} projects, {title}:\n{text}")


def _revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=here,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        blob = subprocess.run(
            ["git", "hash-object", str(here.parent / "bot" / "index.py")],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{described or '?'} (bot/index.py blob {blob[:10] or '?'})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(json.dumps(child(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=25_000)
    parser.add_argument("--small", type=int, default=0, help="the smaller size (default: a tenth)")
    parser.add_argument("--rounds", type=int, default=3, help="full builds at the full size")
    parser.add_argument("--small-rounds", type=int, default=5, help="full builds, smaller size")
    parser.add_argument("--publishes", type=int, default=9, help="timed publishes per kind")
    parser.add_argument("--quick", action="store_true", help="2,500 and 250 projects, 1 round")
    parser.add_argument("--profile", action="store_true", help="cProfile publish and refresh")
    parser.add_argument("--no-diagnostic", action="store_true", help="skip the fsync-off run")
    parser.add_argument("--work", type=Path, help="keep the trees here (default: a temp dir)")
    parser.add_argument("--dumb-pypi-venv", type=Path, help="reuse this venv with dumb-pypi")
    args = parser.parse_args(argv)
    if args.quick:
        args.projects, args.rounds, args.small_rounds, args.publishes = 2_500, 1, 1, 3
    small = args.small or max(args.projects // 10, 1)
    rounds = {small: args.small_rounds, args.projects: args.rounds}

    work = (args.work or Path(tempfile.mkdtemp(prefix="wheelstock-bench-index-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        venv = (args.dumb_pypi_venv or work / "dumb-pypi-venv").resolve()
        peer = ensure_dumb_pypi(venv)
        import bot.index

        verify_pending = importlib.util.find_spec("bot.index_verify") is None
        print(
            f"{args.projects:,} and {small:,} projects x {VERSIONS * 2} files; full builds "
            f"{args.rounds} rounds at {args.projects:,}, {args.small_rounds} at {small:,}, "
            f"alternating; {args.publishes} publishes of each kind; {os.cpu_count()} CPUs, "
            f"{machine.memory()}, Python {platform.python_version()}, {peer}; wheelstock "
            f"{_revision()} from {Path(bot.index.__file__).parent.parent}; verify "
            f"{'pending' if verify_pending else 'present'}; load average "
            f"{machine.load()}; trees under {work}",
            flush=True,
        )
        sizes = [
            measure(args, small, rounds[small], work, venv, full=False),
            measure(args, args.projects, rounds[args.projects], work, venv, full=True),
        ]
        interleaved = run_ours(
            {"phase": "publish-interleaved", "trees": [s.flat for s in sizes]},
            work / "publish-interleaved.log",
        )
        for position, s in enumerate(sizes):
            for kind in ("existing", "new"):
                s.flat_medians[kind] = statistics.median(interleaved.out[kind][position])
        print(
            "  publish, interleaved in one process: "
            + "; ".join(
                f"{s.projects:,}: new version {s.flat_medians['existing'] * 1000:.1f} ms, "
                f"new project {s.flat_medians['new'] * 1000:.1f} ms"
                for s in sizes
            ),
            flush=True,
        )
        report(sizes, rounds, args.publishes)
        verdicts(sizes, verify_pending and not sizes[-1].verify)
        print(f"\nload average at the end: {machine.load()}")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
