"""The dependency graph of enrolled projects: run and build edges, cycles, build waves, impact.

Over the ~500 lines a module here aims for: the fast path for plain PEP 508 requirements,
the per-target marker evaluation and the algorithms (waves, cycle breaking, impact) share one
node and edge representation tuned together (benchmarks/graph.py); apart, each would reach
into the others' internals.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple
from xml.sax.saxutils import escape, quoteattr

import networkx as nx
from packaging.markers import InvalidMarker, Marker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bot.errors import GraphError
from bot.gcutil import gc_paused

__all__ = ["KINDS", "Graph", "GraphError", "Requirements", "Target", "build_graph"]

KINDS = ("build", "run")
FORMATS = ("dot", "graphml", "json")

_RUN, _BUILD = 1, 2
# One shared frozenset per combination: 250k edges then hold three objects, not 250k.
_KINDSETS = {
    _RUN: frozenset({"run"}),
    _BUILD: frozenset({"build"}),
    _RUN | _BUILD: frozenset({"run", "build"}),
}

# sys_platform -> (platform_system, os_name, platform_machine) as CPython reports them on
# 64-bit machines; 64-bit Windows says "AMD64" where Linux and macOS (Intel) say "x86_64".
_PLATFORMS = {
    "linux": ("Linux", "posix", "x86_64"),
    "darwin": ("Darwin", "posix", "x86_64"),
    "win32": ("Windows", "nt", "AMD64"),
}
_PYTHON = re.compile(r"[0-9]+\.[0-9]+(?:\.[0-9]+)?")

# Fast path for the usual PEP 508 shapes: a name, optional extras, optional specifiers (bare
# or in the old parentheses) and an optional marker after ";". Only what this regex fully
# matches skips packaging's parser, so it may only accept what packaging accepts too (the
# tests compare the two); versions are kept to the normalised PEP 440 public forms, and
# URLs (`name @ url`), local versions and other spellings fall back to packaging.
_WS = r"[ \t]"  # PEP 508 whitespace; `\s` would also take Unicode spaces packaging refuses
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_VERSION = r"[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?"
_SPEC = (
    rf"(?:(?:==|!=|>=|<=|<|>){_WS}*{_VERSION}"  # not ===: its operand may swallow a comma
    rf"|(?:==|!=){_WS}*[0-9]+(?:\.[0-9]+)*\.\*"  # prefix matching takes a release only
    rf"|~={_WS}*[0-9]+(?:\.[0-9]+)+)"  # compatible release needs two components (PEP 440)
)
_SPECS = rf"{_SPEC}(?:{_WS}*,{_WS}*{_SPEC})*"
_FAST = re.compile(
    rf"{_WS}*(?P<name>{_NAME}){_WS}*"
    rf"(?:\[{_WS}*(?P<extras>{_NAME}(?:{_WS}*,{_WS}*{_NAME})*)?{_WS}*\])?{_WS}*"
    rf"(?:{_SPECS}|\({_WS}*{_SPECS}{_WS}*\))?{_WS}*"
    r"(?:;(?P<marker>.*))?"
)
_NO_EXTRAS: frozenset[str] = frozenset()
_NO_MARKER: tuple[None, str, bool] = (None, "", False)


@dataclass(frozen=True)
class Requirements:
    """What one enrolled project's feedstock version needs."""

    project: str  # canonical name (packaging.utils.canonicalize_name)
    version: str
    run: tuple[str, ...]  # Requires-Dist strings (PEP 508), as in the core metadata
    build: tuple[str, ...]  # [build-system].requires strings of the sdist (PEP 518)

    def __post_init__(self) -> None:
        # A bare string would be iterated character by character: refuse it early.
        for kind in KINDS:
            if isinstance(getattr(self, kind), str):
                raise GraphError(f"{self.project}: {kind} requirements must be a sequence")


@dataclass(frozen=True)
class Target:
    """The Pythons and platforms one project is built for; markers are evaluated for each."""

    pythons: tuple[str, ...] = ("3.11",)  # "3.12" etc.
    platforms: tuple[str, ...] = ("linux",)  # sys_platform values: linux, darwin, win32

    def __post_init__(self) -> None:
        if not self.pythons or not self.platforms:
            raise GraphError("a target needs at least one python and one platform")
        for python in self.pythons:
            if not _PYTHON.fullmatch(python):
                raise GraphError(f"target python {python!r} is not like 3.12 or 3.12.1")
        for platform in self.platforms:
            if platform not in _PLATFORMS:
                raise GraphError(
                    f"target platform {platform!r} is not one of {', '.join(sorted(_PLATFORMS))}"
                )


def _environment(python: str, platform: str, extra: str) -> dict[str, str]:
    # Every PEP 508 variable is given so nothing falls back to the machine running the bot.
    parts = python.split(".")
    full = python if len(parts) == 3 else f"{python}.0"
    system, os_name, machine = _PLATFORMS[platform]
    return {
        "implementation_name": "cpython",
        "implementation_version": full,
        "os_name": os_name,
        "platform_machine": machine,
        "platform_python_implementation": "CPython",
        "platform_release": "",
        "platform_system": system,
        "platform_version": "",
        "python_full_version": full,
        "python_version": ".".join(parts[:2]),
        "sys_platform": platform,
        "extra": extra,
    }


class _Parsed(NamedTuple):  # a tuple: built ~10x faster than a frozen dataclass
    name: str  # canonical
    extras: frozenset[str]  # canonical (PEP 685)
    marker: Marker | None
    marker_key: str  # str(marker): equal markers share verdicts
    extra_sensitive: bool  # the marker mentions `extra`, so its verdict depends on it


class _Resolver:
    """Parses each distinct string once and evaluates each marker once per environment."""

    def __init__(self) -> None:
        self.parsed: dict[str, _Parsed | None] = {}
        self.names: dict[str, str] = {}
        self.markers: dict[str, tuple[Marker | None, str, bool] | None] = {}
        self.verdicts: dict[tuple[str, Target, str], bool | None] = {}
        self.env_verdicts: dict[tuple[str, str, str, str], bool] = {}

    def canonical(self, name: str) -> str:
        found = self.names.get(name)
        if found is None:
            found = self.names[name] = canonicalize_name(name)
        return found

    def parse(self, text: str) -> _Parsed | None:
        """The parsed requirement, or None when packaging would reject it."""
        try:
            return self.parsed[text]
        except KeyError:
            pass
        result: _Parsed | None = None
        match = _FAST.fullmatch(text)
        if match is not None:
            marker = self.marker(match["marker"])
            if marker is not None:
                extras = match["extras"]
                result = _Parsed(
                    self.canonical(match["name"]),
                    frozenset(self.canonical(x.strip()) for x in extras.split(","))
                    if extras
                    else _NO_EXTRAS,
                    *marker,
                )
        else:
            try:
                req = Requirement(text)
            except InvalidRequirement:
                pass
            else:
                key = str(req.marker) if req.marker is not None else ""
                result = _Parsed(
                    self.canonical(req.name),
                    frozenset(self.canonical(x) for x in req.extras),
                    req.marker,
                    key,
                    "extra" in key,
                )
        self.parsed[text] = result
        return result

    def marker(self, text: str | None) -> tuple[Marker | None, str, bool] | None:
        """(marker, its normal form, whether it mentions `extra`), None if invalid.

        Real metadata repeats a handful of markers thousands of times, so each distinct text
        is parsed and formatted once.
        """
        if text is None:
            return _NO_MARKER
        try:
            return self.markers[text]
        except KeyError:
            pass
        try:
            marker = Marker(text)
        except InvalidMarker:
            found = None
        else:
            key = str(marker)
            found = (marker, key, "extra" in key)
        self.markers[text] = found
        return found

    def holds(self, parsed: _Parsed, target: Target, extra: str) -> bool | None:
        """Whether the marker holds in ANY environment of target; None if it cannot be evaluated."""
        key = (parsed.marker_key, target, extra)
        try:
            return self.verdicts[key]
        except KeyError:
            pass
        verdict: bool | None = False
        try:
            for python in target.pythons:
                for platform in target.platforms:
                    if self._holds_in(parsed, python, platform, extra):
                        verdict = True
                        break
                if verdict:
                    break
        except (UndefinedComparison, UndefinedEnvironmentName, ValueError):
            verdict = None
        self.verdicts[key] = verdict
        return verdict

    def _holds_in(self, parsed: _Parsed, python: str, platform: str, extra: str) -> bool:
        key = (parsed.marker_key, python, platform, extra)
        try:
            return self.env_verdicts[key]
        except KeyError:
            pass
        assert parsed.marker is not None
        verdict = self.env_verdicts[key] = parsed.marker.evaluate(
            _environment(python, platform, extra)
        )
        return verdict


@dataclass(eq=False)
class Graph:
    """Enrolled projects as a DiGraph: edge dependency -> dependent, attribute kinds."""

    graph: nx.DiGraph
    missing: dict[str, dict[str, set[str]]] = field(default_factory=dict)
    invalid: list[tuple[str, str]] = field(default_factory=list)

    def edges(self, kind: str | None = None) -> list[tuple[str, str]]:
        """Edges (dependency, dependent) of one kind, or all, sorted."""
        _check_kind(kind)
        if kind is None:
            return sorted(self.graph.edges)
        return sorted((u, v) for u, v, kinds in self.graph.edges(data="kinds") if kind in kinds)

    def cycles(self, kind: str | None = None, *, limit: int | None = None) -> list[list[str]]:
        """Simple cycles over edges of one kind (or any), each starting at its smallest name.

        A dense tangle has exponentially many simple cycles; ``limit`` stops after that many
        (which ones is then up to networkx's search order).
        """
        _check_kind(kind)
        view = self.graph
        if kind is not None:
            view = self.graph.edge_subgraph(self.edges(kind))
        result = []
        for cycle in itertools.islice(nx.simple_cycles(view), limit):
            start = cycle.index(min(cycle))
            result.append(cycle[start:] + cycle[:start])
        result.sort()
        return result

    def depth(self) -> int:
        """Longest path (in edges) of the build-edge DAG after cycle breaking."""
        waves, _ = self.build_order()
        return max(len(waves) - 1, 0)

    def build_order(self) -> tuple[list[list[str]], list[tuple[str, str]]]:
        """(waves, broken_edges): topological generations over build edges, cycles broken.

        Run edges do not order builds: a wheel is built from the sdist in an environment that
        holds only [build-system].requires (PEP 517/518), so only those must exist first.
        """
        with gc_paused():  # one list per node: see bot.gcutil
            # networkx's own algorithms read _succ too: the views cost ~3x more per edge.
            succ = {
                u: [v for v, data in nbrs.items() if "build" in data["kinds"]]
                for u, nbrs in self.graph._succ.items()
            }
            waves, leftover = _generations(succ)
            broken: list[tuple[str, str]] = []
            if leftover:
                broken = _break_cycles(succ, leftover)
                waves, leftover = _generations(succ)
                assert not leftover
        return waves, sorted(broken)

    def impact(self, name: str) -> dict[str, set[str]]:
        """Transitive dependents of name via run edges, via build edges, and via any edges."""
        node = canonicalize_name(name)
        if node not in self.graph:
            raise GraphError(f"{name} is not an enrolled project")
        adj = self.graph._succ  # plain dicts: the views cost several times more per step
        return {
            "run": _reach(adj, node, "run"),
            "build": _reach(adj, node, "build"),
            "any": _reach(adj, node, None),
        }

    def export(self, fmt: str) -> str:
        """The graph as text: "json" (node-link), "graphml" or "dot"."""
        if fmt == "json":
            return self._json()
        if fmt == "graphml":
            return self._graphml()
        if fmt == "dot":
            return self._dot()
        raise GraphError(f"unknown export format {fmt!r} (expected one of {', '.join(FORMATS)})")

    def draw_svg(self, *, use_graphviz: bool | None = None) -> str:
        """SVG text: Graphviz `dot -Tsvg` when available (or asked for), else a built-in layout."""
        dot = shutil.which("dot")
        if use_graphviz is None:
            use_graphviz = dot is not None
        if not use_graphviz:
            return _draw(self)
        if dot is None:
            raise GraphError("Graphviz is not installed: no `dot` on PATH")
        try:
            proc = subprocess.run(
                [dot, "-Tsvg"], input=self._dot(), capture_output=True, text=True, check=False
            )
        except OSError as exc:
            raise GraphError(f"could not run {dot}: {exc.strerror or exc}") from exc
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[0]
            raise GraphError(f"dot -Tsvg failed: {detail}")
        return proc.stdout

    # -- exports -----------------------------------------------------------------------------

    def _sorted_edges(self) -> list[tuple[str, str, list[str]]]:
        return sorted((u, v, sorted(k)) for u, v, k in self.graph.edges(data="kinds"))

    def _json(self) -> str:
        # The node-link layout networkx reads back with node_link_graph(data, edges="edges").
        data = {
            "directed": True,
            "multigraph": False,
            "graph": {},
            "nodes": [
                {"id": n, "version": self.graph.nodes[n].get("version", "")}
                for n in sorted(self.graph)
            ],
            "edges": [{"source": u, "target": v, "kinds": k} for u, v, k in self._sorted_edges()],
            "missing": {
                n: {kind: sorted(names) for kind, names in sorted(by_kind.items())}
                for n, by_kind in sorted(self.missing.items())
            },
            "invalid": [list(pair) for pair in self.invalid],
        }
        return json.dumps(data, indent=1) + "\n"

    def _graphml(self) -> str:
        # GraphML attributes are scalars, so sets become sorted comma-joined strings.
        out = nx.DiGraph()
        for n in sorted(self.graph):
            missing = self.missing.get(n, {})
            out.add_node(
                n,
                version=str(self.graph.nodes[n].get("version", "")),
                missing_run=",".join(sorted(missing.get("run", ()))),
                missing_build=",".join(sorted(missing.get("build", ()))),
            )
        for u, v, kinds in self._sorted_edges():
            out.add_edge(u, v, kinds=",".join(kinds))
        return "\n".join(nx.generate_graphml(out)) + "\n"

    def _dot(self) -> str:
        lines = [
            "digraph wheelstock {",
            "  rankdir=LR;",
            '  node [shape=box, style=rounded, fontname="Helvetica"];',
            '  edge [fontname="Helvetica", fontsize=9];',
        ]
        for n in sorted(self.graph):
            version = str(self.graph.nodes[n].get("version", ""))
            label = f"{_dot_quote(n)[1:-1]}\\n{_dot_quote(version)[1:-1]}"
            lines.append(f'  {_dot_quote(n)} [label="{label}"];')
        for u, v, kinds in self._sorted_edges():
            style = _EDGE_STYLE[",".join(kinds)]
            lines.append(
                f'  {_dot_quote(u)} -> {_dot_quote(v)} [label="{",".join(kinds)}", '
                f'style={style["dot_style"]}, color="{style["color"]}"];'
            )
        lines.append("}")
        return "\n".join(lines) + "\n"


def build_graph(
    reqs: Iterable[Requirements],
    target: Target | Mapping[str, Target] = Target(),  # frozen, so safe to share
    extras: Mapping[str, Iterable[str]] | None = None,
) -> Graph:
    """The graph of enrolled projects: one node per Requirements, edges for what they need.

    `target` is one Target for all or a mapping project -> Target (default Target() for the
    rest); `extras` requests extras of projects, as a user installing `project[extra]` would.
    Keys naming projects that are not enrolled are ignored in both.
    """
    with gc_paused():
        return _build_graph(reqs, target, extras)


def _build_graph(
    reqs: Iterable[Requirements],
    target: Target | Mapping[str, Target],
    extras: Mapping[str, Iterable[str]] | None,
) -> Graph:
    projects: dict[str, Requirements] = {}
    for req in reqs:
        name = canonicalize_name(req.project)
        if name in projects:
            raise GraphError(f"{name} is enrolled twice")
        projects[name] = req

    default = Target()
    targets: dict[str, Target]
    if isinstance(target, Target):
        targets = dict.fromkeys(projects, target)
    else:
        by_name: dict[str, Target] = {canonicalize_name(k): t for k, t in target.items()}
        targets = {name: by_name.get(name, default) for name in projects}

    resolver = _Resolver()
    edges: dict[tuple[str, str], int] = {}
    missing: dict[str, dict[str, set[str]]] = {}
    invalid: set[tuple[str, str]] = set()
    requested: dict[str, set[str]] = {}
    queue: deque[tuple[str, str]] = deque()
    # Run requirements whose marker names `extra` and is false for the base install: they
    # come into play only once that extra of the project is requested (PEP 508 `extra`).
    by_extra: dict[str, list[tuple[str, _Parsed]]] = {}

    def request(node: str, extra: str) -> None:
        wanted = requested.setdefault(node, set())
        if extra not in wanted:
            wanted.add(extra)
            queue.append((node, extra))

    for key, names in (extras or {}).items():
        if isinstance(names, str):
            raise GraphError(f"extras of {key} must be a sequence of names, not a string")
        asked = canonicalize_name(key)
        if asked in projects:
            for extra in names:
                request(asked, canonicalize_name(extra))

    def need(node: str, bit: int, kind: str, parsed: _Parsed) -> None:
        dep = parsed.name
        if dep in projects:
            # Self-requirements only request extras: `foo[all]` needing `foo[a,b]` is common.
            if dep != node:
                pair = (dep, node)
                edges[pair] = edges.get(pair, 0) | bit
            for extra in parsed.extras:
                request(dep, extra)
        else:
            missing.setdefault(node, {}).setdefault(kind, set()).add(dep)

    # The hot loop (hundreds of thousands of strings): need() is inlined, parsed strings come
    # straight from the cache, and only strings with markers reach marker evaluation.
    seen = resolver.parsed
    parse = resolver.parse
    holds = resolver.holds
    edges_get = edges.get
    for node, req in projects.items():
        node_target = targets[node]
        for kind, bit, strings in (("run", _RUN, req.run), ("build", _BUILD, req.build)):
            for text in strings:
                parsed = seen[text] if text in seen else parse(text)
                if parsed is None:
                    invalid.add((node, text))
                    continue
                if parsed.marker is not None:
                    # The base install: `extra` is "" (PEP 508), so `extra == "x"` is false.
                    verdict = holds(parsed, node_target, "")
                    if verdict is None:
                        invalid.add((node, text))
                        continue
                    if not verdict:
                        # Build requires have no extras (PEP 518), so only run ones wait.
                        if bit == _RUN and parsed.extra_sensitive:
                            by_extra.setdefault(node, []).append((text, parsed))
                        continue
                dep = parsed.name
                if dep in projects:
                    if dep != node:
                        pair = (dep, node)
                        edges[pair] = edges_get(pair, 0) | bit
                    if parsed.extras:
                        for extra in parsed.extras:
                            request(dep, extra)
                else:
                    missing.setdefault(node, {}).setdefault(kind, set()).add(dep)

    # Requested extras propagate: A needing B[x] whose x needs C[y] requests C's y too.
    while queue:
        node, extra = queue.popleft()
        for text, parsed in by_extra.get(node, ()):
            verdict = holds(parsed, targets[node], extra)
            if verdict is None:
                invalid.add((node, text))
            elif verdict:
                need(node, _RUN, "run", parsed)

    graph = nx.DiGraph()
    graph.add_nodes_from((name, {"version": req.version}) for name, req in projects.items())
    graph.add_edges_from((u, v, {"kinds": _KINDSETS[bits]}) for (u, v), bits in edges.items())
    return Graph(graph=graph, missing=missing, invalid=sorted(invalid))


def _check_kind(kind: str | None) -> None:
    if kind is not None and kind not in KINDS:
        raise GraphError(f"unknown edge kind {kind!r} (expected build or run)")


def _reach(
    adj: Mapping[str, Mapping[str, Mapping[str, frozenset[str]]]], start: str, kind: str | None
) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        u = stack.pop()
        for v, data in adj[u].items():
            if v not in seen and (kind is None or kind in data["kinds"]):
                seen.add(v)
                stack.append(v)
    seen.discard(start)  # a node on a cycle reaches itself; it is not its own dependent
    return seen


def _generations(succ: Mapping[str, list[str]]) -> tuple[list[list[str]], set[str]]:
    """Kahn's algorithm by levels: (sorted waves, nodes left over because they sit on or after
    a cycle)."""
    indegree = dict.fromkeys(succ, 0)
    for targets in succ.values():
        for v in targets:
            indegree[v] += 1
    wave = sorted(n for n, d in indegree.items() if d == 0)
    waves: list[list[str]] = []
    while wave:
        waves.append(wave)
        following = []
        for u in wave:
            for v in succ[u]:
                indegree[v] -= 1
                if indegree[v] == 0:
                    following.append(v)
        wave = sorted(following)
    placed = sum(len(w) for w in waves)
    leftover = set() if placed == len(succ) else {n for n, d in indegree.items() if d > 0}
    return waves, leftover


def _break_cycles(succ: dict[str, list[str]], nodes: set[str]) -> list[tuple[str, str]]:
    """Remove edges from succ until acyclic; each removed edge is the last-sorting edge of a
    cycle found deterministically (DFS from the smallest node, successors in sorted order)."""
    broken: list[tuple[str, str]] = []
    pending = _components(succ, _cyclic_core(succ, nodes))
    while pending:
        component = pending.pop()
        cycle = _find_cycle(succ, component)
        u, v = max(cycle)
        succ[u].remove(v)
        broken.append((u, v))
        pending.extend(_components(succ, component))
    return broken


def _cyclic_core(succ: Mapping[str, list[str]], nodes: set[str]) -> set[str]:
    """The nodes left after peeling sinks off: every cycle stays, what only follows one goes.

    Kahn's algorithm leaves a cycle together with everything downstream of it (often most of
    the graph, below a popular build backend); this keeps the cycle search small.
    """
    outdegree = dict.fromkeys(nodes, 0)
    preds: dict[str, list[str]] = {u: [] for u in nodes}
    for u in nodes:
        for v in succ[u]:
            if v in outdegree:
                outdegree[u] += 1
                preds[v].append(u)
    sinks = [u for u, d in outdegree.items() if d == 0]
    while sinks:
        for u in preds[sinks.pop()]:
            outdegree[u] -= 1
            if outdegree[u] == 0:
                sinks.append(u)
    return {u for u, d in outdegree.items() if d > 0}


def _components(succ: Mapping[str, list[str]], nodes: set[str]) -> list[set[str]]:
    """Strongly connected components with a cycle, among nodes, smallest-named last."""
    sub = nx.DiGraph()
    sub.add_nodes_from(nodes)
    sub.add_edges_from((u, v) for u in nodes for v in succ[u] if v in nodes)
    found = [set(c) for c in nx.strongly_connected_components(sub) if len(c) > 1]
    found.sort(key=min, reverse=True)
    return found


def _find_cycle(succ: Mapping[str, list[str]], component: set[str]) -> list[tuple[str, str]]:
    start = min(component)
    path = [start]
    on_path = {start: 0}
    done: set[str] = set()
    iters = [iter(sorted(v for v in succ[start] if v in component))]
    while iters:
        for v in iters[-1]:
            if v in on_path:
                ring = [*path[on_path[v] :], v]
                return list(itertools.pairwise(ring))
            if v not in done:
                on_path[v] = len(path)
                path.append(v)
                iters.append(iter(sorted(w for w in succ[v] if w in component)))
                break
        else:
            iters.pop()
            finished = path.pop()
            del on_path[finished]
            done.add(finished)
    raise AssertionError("a strongly connected component always has a cycle")


# -- drawing -------------------------------------------------------------------------------

_EDGE_STYLE = {
    "build": {"dot_style": "solid", "color": "#1f4e79", "dash": ""},
    "run": {"dot_style": "dashed", "color": "#7f7f7f", "dash": "5,4"},
    "build,run": {"dot_style": "bold", "color": "#8e3b00", "dash": ""},
    "broken": {"dot_style": "dotted", "color": "#c00000", "dash": "2,3"},
}


_LEGEND_TEXT = {"broken": "cycle broken"}


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_CHAR = 7.0  # average width of a 12px sans-serif character, enough to size the boxes
_BOX_H, _ROW_GAP, _COL_GAP, _MARGIN, _LEGEND = 34.0, 14.0, 70.0, 20.0, 30.0


def _order_rows(g: Graph, waves: list[list[str]]) -> list[list[str]]:
    """Rows within each column, by the barycenter heuristic of layered (Sugiyama) drawing:
    sweeps right then left, each node moving to the mean row of its neighbours in the
    columns already placed; ties and loners keep their order, so the result is deterministic."""
    column = {n: i for i, wave in enumerate(waves) for n in wave}
    ordered = [list(wave) for wave in waves]
    row = {n: float(r) for wave in ordered for r, n in enumerate(wave)}
    neighbours = {n: [*g.graph.predecessors(n), *g.graph.successors(n)] for n in g.graph}
    sweeps = [range(1, len(ordered)), range(len(ordered) - 2, -1, -1)] * 2
    for sweep in sweeps:
        for i in sweep:

            def key(n: str, i: int = i, right: bool = sweep.step > 0) -> tuple[float, str]:
                rows = [
                    row[m] for m in neighbours[n] if (column[m] < i if right else column[m] > i)
                ]
                return (sum(rows) / len(rows) if rows else row[n], n)

            ordered[i].sort(key=key)
            for r, n in enumerate(ordered[i]):
                row[n] = float(r)
    return ordered


def _draw(g: Graph) -> str:
    """A layered drawing: one column per build wave, rows ordered to shorten edges."""
    waves, broken = g.build_order()
    ordered = _order_rows(g, waves)
    column = {n: i for i, wave in enumerate(ordered) for n in wave}
    cut = set(broken)

    def label_width(n: str) -> float:
        version = str(g.graph.nodes[n].get("version", ""))
        return max(len(n), len(version)) * _CHAR + 16

    widths = [max(map(label_width, wave)) for wave in ordered]
    xs: list[float] = []
    x = _MARGIN
    for w in widths:
        xs.append(x)
        x += w + _COL_GAP
    width = max(x - _COL_GAP + _MARGIN, 880.0)  # room for the legend
    rows = max((len(w) for w in ordered), default=0)
    height = _MARGIN + _LEGEND + rows * (_BOX_H + _ROW_GAP) + _MARGIN

    box: dict[str, tuple[float, float, float]] = {}
    for i, wave in enumerate(ordered):
        for r, n in enumerate(wave):
            box[n] = (xs[i], _MARGIN + _LEGEND + r * (_BOX_H + _ROW_GAP), widths[i])

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, Arial, sans-serif">',
        "<title>wheelstock dependency graph</title>",
        "<defs>",
    ]
    for legend, style in _EDGE_STYLE.items():
        out.append(
            f'<marker id="arrow-{legend.replace(",", "-")}" viewBox="0 0 10 10" refX="10" '
            f'refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{style["color"]}"/></marker>'
        )
    out.append("</defs>")
    out.append('<rect width="100%" height="100%" fill="white"/>')
    legend_x = _MARGIN
    for legend, style in _EDGE_STYLE.items():
        y = _MARGIN
        dash = f' stroke-dasharray="{style["dash"]}"' if style["dash"] else ""
        out.append(
            f'<line x1="{legend_x}" y1="{y}" x2="{legend_x + 30}" y2="{y}" '
            f'stroke="{style["color"]}" stroke-width="1.5"{dash}/>'
            f'<text x="{legend_x + 36}" y="{y + 4}" font-size="11">'
            f"{escape(_LEGEND_TEXT.get(legend, legend))}</text>"
        )
        legend_x += 120
    out.append(
        f'<text x="{legend_x}" y="{_MARGIN + 4}" font-size="11" fill="#555">'
        "arrows point from dependency to dependent; columns are build waves</text>"
    )
    if not box:
        out.append(
            f'<text x="{_MARGIN}" y="{_MARGIN + _LEGEND + 14}" font-size="12">'
            "no enrolled projects</text>"
        )

    out.append('<g class="edges" fill="none">')
    for u, v, kinds in g._sorted_edges():
        joined = ",".join(kinds)
        # A build edge dropped to break a cycle stands out: that build needs a bootstrap.
        look = "broken" if (u, v) in cut else joined
        style = _EDGE_STYLE[look]
        ux, uy, uw = box[u]
        vx, vy, vw = box[v]
        y1, y2 = uy + _BOX_H / 2, vy + _BOX_H / 2
        if column[u] < column[v]:  # the usual case: out of u's right side, into v's left
            x1, x2 = ux + uw, vx
            c1 = x1 + max((x2 - x1) / 2, 40.0)
            c2 = x2 - max((x2 - x1) / 2, 40.0)
        elif column[u] == column[v]:  # a run edge within a wave: an arc in the gap on the right
            x1, x2 = ux + uw, vx + vw
            c1 = c2 = x1 + min(20.0 + abs(y2 - y1) / 4, _COL_GAP - 10)
        else:  # a run edge or a broken build edge pointing back: left side into right side
            x1, x2 = ux, vx + vw
            c1 = x1 - max((x1 - x2) / 2, 40.0)
            c2 = x2 + max((x1 - x2) / 2, 40.0)
        dash = f' stroke-dasharray="{style["dash"]}"' if style["dash"] else ""
        mark = ", cycle broken here" if look == "broken" else ""
        out.append(
            f'<path d="M{x1:.1f},{y1:.1f} C{c1:.1f},{y1:.1f} {c2:.1f},{y2:.1f} '
            f'{x2:.1f},{y2:.1f}" stroke="{style["color"]}" stroke-width="1.5"{dash} '
            f'marker-end="url(#arrow-{look.replace(",", "-")})">'
            f"<title>{escape(f'{u} -> {v} ({joined}{mark})')}</title></path>"
        )
    out.append("</g>")
    out.append('<g class="nodes">')
    for n in sorted(box):
        x0, y0, w = box[n]
        version = str(g.graph.nodes[n].get("version", ""))
        out.append(
            f'<g class="node" id={quoteattr("node-" + n)}>'
            f"<title>{escape(f'{n} {version}')}</title>"
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{w:.1f}" height="{_BOX_H:.0f}" rx="5" '
            f'fill="#f5f8fc" stroke="#1f4e79"/>'
            f'<text x="{x0 + w / 2:.1f}" y="{y0 + 14:.1f}" font-size="12" '
            f'text-anchor="middle" font-weight="bold">{escape(n)}</text>'
            f'<text x="{x0 + w / 2:.1f}" y="{y0 + 27:.1f}" font-size="10" '
            f'text-anchor="middle" fill="#555">{escape(version)}</text></g>'
        )
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
