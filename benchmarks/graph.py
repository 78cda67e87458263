"""Benchmark bot.graph on a synthetic registry: build, build waves, impact; time and memory."""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.graph import Graph, Requirements, build_graph

GOAL_SECONDS = 3.0
GOAL_MB = 500.0

SPECIFIERS = ["", "", "", ">=1.0", ">=2.3", ">=1.0,<3", "~=2.1", "==1.4.*", "<4", "!=1.5"]
MARKERS = [
    '; python_version < "3.8"',
    '; sys_platform == "win32"',
    '; python_version >= "3.9"',
    '; platform_system == "Windows"',
    '; os_name == "posix" and python_version < "3.13"',
    '; implementation_name == "pypy"',
]
EXTRAS = ["test", "docs", "speed", "all"]


def _zipf_cum(n: int, s: float) -> list[float]:
    # A power law over popularity ranks: rank 0 is the project everything depends on.
    return list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(n)))


def synthetic_registry(projects: int, strings: int, seed: int) -> list[Requirements]:
    """`projects` enrolled projects holding `strings` requirement strings in all."""
    rng = random.Random(seed)
    names = [f"proj-{i:05d}" for i in range(projects)]
    # Core metadata spells names as upstream does; canonicalisation must fold them together.
    spelled = [n.replace("-", "_").title() if rng.random() < 0.1 else n for n in names]
    outside = [f"ext-{i:04d}" for i in range(max(projects // 5, 1))]
    run_cum = _zipf_cum(projects, 1.1)
    build_cum = _zipf_cum(min(200, projects), 1.3)  # build backends: a few, very popular
    outside_cum = _zipf_cum(len(outside), 1.0)

    run: list[list[str]] = [[] for _ in range(projects)]
    build: list[list[str]] = [[] for _ in range(projects)]
    n_build = strings // 5
    owners = rng.choices(range(projects), k=strings)
    run_picks = rng.choices(range(projects), cum_weights=run_cum, k=strings)
    build_picks = rng.choices(range(min(200, projects)), cum_weights=build_cum, k=n_build)
    outside_picks = rng.choices(outside, cum_weights=outside_cum, k=strings)
    for i, owner in enumerate(owners):
        is_build = i < n_build
        roll = rng.random()
        if roll < 0.10:
            name = outside_picks[i]  # ~10% name projects that are not enrolled
        elif is_build:
            dep = build_picks[i]
            # Builds mostly need more popular projects (a DAG), with the odd cycle to break.
            if dep >= owner and rng.random() < 0.995:
                dep = rng.randrange(owner) if owner else dep
            name = spelled[dep]
        else:
            name = spelled[run_picks[i]]
        text = name + rng.choice(SPECIFIERS)
        kind_roll = rng.random()
        if kind_roll < 0.08:
            text += MARKERS[rng.randrange(len(MARKERS))]
        elif kind_roll < 0.14 and not is_build:
            text = f"{name}[{rng.choice(EXTRAS)}]{rng.choice(SPECIFIERS)}"
        elif kind_roll < 0.19 and not is_build:
            text += f'; extra == "{rng.choice(EXTRAS)}"'
        elif kind_roll < 0.20:
            text = f"{name} (>=1.0)"  # the old parenthesised form: the slow path
        (build if is_build else run)[owner].append(text)
    return [
        Requirements(project=names[i], version="1.0", run=tuple(run[i]), build=tuple(build[i]))
        for i in range(projects)
    ]


def most_depended_on(graph: Graph) -> str:
    degree = graph.graph.out_degree
    return str(max(graph.graph, key=lambda n: (degree[n], n)))


def one_run(reqs: list[Requirements]) -> dict[str, float]:
    # A networkx graph holds reference cycles (its cached views), so the previous run's graph
    # waits for the collector; collect it here, untimed, so each run starts from the same heap.
    gc.collect()
    t0 = time.perf_counter()
    graph = build_graph(reqs)
    t1 = time.perf_counter()
    graph.build_order()
    t2 = time.perf_counter()
    hub = most_depended_on(graph)
    t3 = time.perf_counter()
    graph.impact(hub)
    t4 = time.perf_counter()
    return {
        "build_graph": t1 - t0,
        "build_order": t2 - t1,
        "impact(hub)": t4 - t3,
        "total": (t1 - t0) + (t2 - t1) + (t4 - t3),
    }


def maxrss_mb() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=25_000)
    parser.add_argument("--edges", type=int, default=250_000, help="requirement strings in all")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    reqs = synthetic_registry(args.projects, args.edges, args.seed)
    strings = sum(len(r.run) + len(r.build) for r in reqs)
    distinct = len({s for r in reqs for s in (*r.run, *r.build)})
    gc.collect()
    rss_before = maxrss_mb()

    runs = [one_run(reqs) for _ in range(args.runs)]
    rss_after = maxrss_mb()

    graph = build_graph(reqs)
    waves, broken = graph.build_order()
    hub = most_depended_on(graph)
    impact = graph.impact(hub)

    # A separate run under tracemalloc: tracing slows Python down, so it is not timed.
    gc.collect()
    tracemalloc.start()
    g2 = build_graph(reqs)
    g2.build_order()
    g2.impact(hub)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    del g2

    print(
        f"registry: {len(reqs)} projects, {strings} requirement strings ({distinct} distinct), "
        f"seed {args.seed}"
    )
    print(
        f"graph: {graph.graph.number_of_edges()} edges "
        f"({len(graph.edges('build'))} build), {len(waves)} waves, {len(broken)} broken edges, "
        f"{len(graph.invalid)} invalid strings, {len(graph.missing)} projects with missing needs"
    )
    print(
        f"hub: {hub} with {graph.graph.out_degree[hub]} direct dependents; impact "
        f"run {len(impact['run'])}, build {len(impact['build'])}, any {len(impact['any'])}"
    )
    print()
    print(f"{'step':<14} {'median s':>9} {'min s':>8} {'max s':>8}   ({args.runs} runs)")
    for step in ("build_graph", "build_order", "impact(hub)", "total"):
        values = [r[step] for r in runs]
        print(
            f"{step:<14} {statistics.median(values):>9.3f} {min(values):>8.3f} {max(values):>8.3f}"
        )
    print()
    print(f"tracemalloc peak of one build + order + impact: {traced_peak:8.1f} MB")
    print(f"process max RSS before the timed runs:          {rss_before:8.1f} MB")
    print(
        f"process max RSS after them (delta):             {rss_after:8.1f} MB "
        f"(+{rss_after - rss_before:.1f})"
    )
    total = statistics.median(r["total"] for r in runs)
    ok = total <= GOAL_SECONDS and rss_after <= GOAL_MB
    print()
    print(
        f"goal: total <= {GOAL_SECONDS:.0f} s and peak <= {GOAL_MB:.0f} MB: "
        f"{'met' if ok else 'NOT met'} (median total {total:.2f} s, max RSS {rss_after:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
