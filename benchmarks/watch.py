"""Benchmark bot.watch.watch against a simulated upstream: cold, warm (304s), 1% changed."""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import ssl
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from upstream_sim import Simulator, project_name

from bot.simple import ACCEPT
from bot.upstream import Checked, Upstream, Validators, make_client
from bot.watch import watch

GOAL_SECONDS = 15.0
GOAL_RATIO = 10.0


# --- memory -----------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(child) for child in text.split())
    return found


def _peak_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class WorkerPeaks:
    """Peak RSS (VmHWM) of one pass's worker processes, sampled while they are alive."""

    def __init__(self) -> None:
        self.peaks: dict[int, int] = {}
        self.workers = 0
        self.most_kb = 0

    def begin(self) -> None:
        self.peaks = {}

    def end(self) -> None:
        # Summed over the pass's workers (they run at once), the largest pass kept.
        self.workers = max(self.workers, len(self.peaks))
        self.most_kb = max(self.most_kb, sum(self.peaks.values()))

    def sample(self, done: int = 0, total: int = 0) -> None:
        for pid in _children(os.getpid()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            # The pool's workers, not the simulator or multiprocessing's resource tracker.
            if b"spawn_main" not in cmdline:
                continue
            peak = _peak_kb(pid)
            if peak is not None:
                self.peaks[pid] = max(self.peaks.get(pid, 0), peak)

    @property
    def total_mb(self) -> float:
        return self.most_kb / 1024


def self_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the ceiling: bare httpx in the same layout ------------------------------------------------

_raw: tuple[threading.local, concurrent.futures.ThreadPoolExecutor, ssl.SSLContext] | None = None


def _raw_start(threads: int) -> None:
    global _raw
    # One SSL context for all: httpx would load the CA bundle again for every client.
    context = httpx.create_ssl_context()
    _raw = (threading.local(), concurrent.futures.ThreadPoolExecutor(threads), context)


def _raw_get(item: tuple[str, str | None]) -> int:
    assert _raw is not None
    local = _raw[0]
    client = getattr(local, "client", None)
    if client is None:
        # One plain client (one keep-alive connection) per thread: the layout measured best.
        client = local.client = httpx.Client(timeout=30, verify=_raw[2])
    url, etag = item
    headers = {"Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    return client.get(url, headers=headers).status_code


def _raw_chunk(items: list[tuple[str, str | None]]) -> list[int]:
    assert _raw is not None
    return list(_raw[1].map(_raw_get, items))


def raw_pass(
    items: list[tuple[str, str | None]], processes: int, threads: int, chunk: int
) -> Counter[int]:
    """The same GETs with nothing but httpx: no parsing, retries or bookkeeping."""
    statuses: Counter[int] = Counter()
    if processes == 1:
        _raw_start(threads)
        for start in range(0, len(items), chunk):
            statuses.update(_raw_chunk(items[start : start + chunk]))
        return statuses
    with concurrent.futures.ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_raw_start,
        initargs=(threads,),
    ) as pool:
        parts = [items[start : start + chunk] for start in range(0, len(items), chunk)]
        for result in pool.map(_raw_chunk, parts):
            statuses.update(result)
    return statuses


# --- one run ----------------------------------------------------------------------------------


def timed(call: Callable[[], Iterable[Checked]]) -> tuple[float, list[Checked]]:
    start = time.perf_counter()
    results = list(call())
    return time.perf_counter() - start, results


def one_run(args: argparse.Namespace, seed: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    names = [project_name(i) for i in range(args.projects)]
    with Simulator(args.projects, mode=args.mode, delay=args.delay) as sim:
        upstream = Upstream(sim.url, make_client())
        peaks = WorkerPeaks()

        def run_watch(items: list[tuple[str, Validators | None]]) -> Iterable[Checked]:
            peaks.begin()
            yield from watch(
                upstream,
                items,
                processes=args.processes,
                threads=args.threads,
                chunk=args.chunk,
                progress=peaks.sample,
            )
            peaks.end()

        # Cold: nothing known, every page fetched and parsed.
        seconds, cold = timed(lambda: run_watch([(n, None) for n in names]))
        assert Counter(c.status for c in cold) == {"changed": args.projects}, Counter(
            c.status for c in cold
        )
        figures["cold"] = seconds
        known = {c.name: c.validators for c in cold}
        del cold

        # Warm: the validators of the cold pass, so every page should be a 304.
        before = sim.stats()["not_modified"]
        seconds, warm = timed(lambda: run_watch([(n, known[n]) for n in names]))
        assert Counter(c.status for c in warm) == {"unchanged": args.projects}
        assert sim.stats()["not_modified"] - before == args.projects
        figures["warm"] = seconds

        # 1% changed upstream since the last pass.
        changed = set(sim.change(0.01, seed))
        seconds, after = timed(lambda: run_watch([(n, known[n]) for n in names]))
        assert {c.name for c in after if c.status == "changed"} == changed
        assert sum(c.status == "unchanged" for c in after) == args.projects - len(changed)
        for c in after:
            known[c.name] = c.validators
        figures["changed"] = seconds
        figures["changed_count"] = len(changed)

        # One at a time: the same warm checks, sequentially, on a sample; scaled up.
        sample = names[: args.sample]
        start = time.perf_counter()
        for name in sample:
            assert upstream.check(name, known[name]).status == "unchanged"
        per_project = (time.perf_counter() - start) / len(sample)
        figures["baseline"] = per_project * args.projects

        # Ceiling: the warm pass's requests, by httpx alone, in the same layout.
        raw_items = [(f"{sim.url}{n}/", known[n].etag) for n in names]
        start = time.perf_counter()
        statuses = raw_pass(raw_items, args.processes, args.threads, args.chunk)
        figures["ceiling"] = time.perf_counter() - start
        assert statuses == {304: args.projects}, statuses

        upstream.client.close()
        figures["workers_mb"] = peaks.total_mb
        figures["workers"] = peaks.workers
    figures["parent_mb"] = self_peak_mb()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=25_000)
    parser.add_argument("--delay", type=float, default=0.030, help="seconds per response")
    parser.add_argument("--mode", choices=["json", "html"], default="json")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--threads", type=int, default=48, help="per process")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--sample", type=int, default=500, help="projects for the baseline")
    args = parser.parse_args(argv)
    args.sample = min(args.sample, args.projects)

    print(
        f"{args.projects} projects, {args.mode} pages, {args.delay * 1000:.0f} ms per response; "
        f"{args.processes} process(es) x {args.threads} threads, chunks of {args.chunk}; "
        f"{args.runs} run(s), {os.cpu_count()} CPUs",
        flush=True,
    )
    runs: list[dict[str, float]] = []
    for run in range(args.runs):
        figures = one_run(args, seed=run)
        runs.append(figures)
        print(
            f"run {run + 1}: "
            + ", ".join(
                f"{key} {figures[key]:.2f} s"
                for key in ("cold", "warm", "changed", "baseline", "ceiling")
            ),
            flush=True,
        )

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    baseline = median("baseline")
    ceiling = median("ceiling")
    print()
    print(
        f"| pass ({args.projects:,} projects) | wall, median | min - max | projects/s "
        "| vs baseline | of ceiling |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rows = [
        ("cold (nothing known, 200s parsed)", "cold"),
        ("warm (ETags from the cold pass, 304s)", "warm"),
        (f"1% changed ({int(median('changed_count'))} pages 200, rest 304)", "changed"),
        (f"one at a time (warm, {args.sample} sampled, scaled)", "baseline"),
        ("ceiling: bare httpx, same layout, same 304s", "ceiling"),
    ]
    for label, key in rows:
        seconds = median(key)
        low, high = min(r[key] for r in runs), max(r[key] for r in runs)
        print(
            f"| {label} | {seconds:.2f} s | {low:.2f} - {high:.2f} s "
            f"| {args.projects / seconds:,.0f} | {baseline / seconds:.1f}x "
            f"| {ceiling / seconds:.0%} |"
        )
    warm = median("warm")
    print()
    print(
        f"peak RSS: watching process {max(r['parent_mb'] for r in runs):.0f} MB, "
        f"{int(runs[0]['workers'])} worker processes {max(r['workers_mb'] for r in runs):.0f} MB "
        "in all (VmHWM); the simulator is not counted"
    )
    met = warm <= GOAL_SECONDS and baseline / warm >= GOAL_RATIO
    print(
        f"goal: warm pass <= {GOAL_SECONDS:.0f} s and >= {GOAL_RATIO:.0f}x the one-at-a-time "
        f"baseline: {'met' if met else 'NOT met'} ({warm:.2f} s, {baseline / warm:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
