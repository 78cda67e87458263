"""Tests for bot.graph: edges by kind, markers, extras, cycles, build waves, impact, exports."""

from __future__ import annotations

import gc
import io
import itertools
import json
import random
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import networkx as nx
import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

import bot.graph
from bot.errors import WheelstockError
from bot.graph import Graph, GraphError, Requirements, Target, build_graph

SVG = "{http://www.w3.org/2000/svg}"


def req(
    project: str, run: tuple[str, ...] = (), build: tuple[str, ...] = (), version: str = "1.0"
) -> Requirements:
    return Requirements(project=project, version=version, run=run, build=build)


def kinds(graph: Graph, dep: str, node: str) -> set[str]:
    return set(graph.graph.edges[dep, node]["kinds"])


# -- edges, names, markers ---------------------------------------------------------------------


def test_run_build_and_both_edges() -> None:
    g = build_graph(
        [
            req("app", run=("lib>=1.0", "both"), build=("setuptools>=61", "both")),
            req("lib", build=("setuptools",)),
            req("both"),
            req("setuptools"),
        ]
    )
    assert sorted(g.graph.nodes) == ["app", "both", "lib", "setuptools"]
    assert g.graph.nodes["app"]["version"] == "1.0"
    assert kinds(g, "lib", "app") == {"run"}
    assert kinds(g, "setuptools", "app") == {"build"}
    assert kinds(g, "both", "app") == {"run", "build"}
    assert g.edges("run") == [("both", "app"), ("lib", "app")]
    assert g.edges("build") == [("both", "app"), ("setuptools", "app"), ("setuptools", "lib")]
    assert g.edges() == [
        ("both", "app"),
        ("lib", "app"),
        ("setuptools", "app"),
        ("setuptools", "lib"),
    ]
    assert g.missing == {}
    assert g.invalid == []


def test_names_are_canonicalised_on_both_ends() -> None:
    g = build_graph([req("Zope.Interface"), req("app", run=("zope_interface (>=5)",))])
    assert g.edges() == [("zope-interface", "app")]


def test_self_requirement_makes_no_edge() -> None:
    g = build_graph([req("app", run=("app>=1",), build=("App",))])
    assert g.edges() == []
    assert g.missing == {}


def test_marker_for_another_python() -> None:
    reqs = [req("app", run=('old; python_version < "3.8"',)), req("old")]
    assert build_graph(reqs).edges() == []
    assert build_graph(reqs, Target(pythons=("3.7", "3.11"))).edges() == [("old", "app")]


def test_python_full_version_defaults_to_point_zero() -> None:
    reqs = [req("app", run=('fix; python_full_version < "3.11.2"',)), req("fix")]
    assert build_graph(reqs, Target(pythons=("3.11",))).edges() == [("fix", "app")]
    assert build_graph(reqs, Target(pythons=("3.11.4",))).edges() == []


@pytest.mark.parametrize(
    "marker",
    [
        'sys_platform == "win32"',
        'platform_system == "Windows"',
        'os_name == "nt"',
        'platform_machine == "AMD64"',
    ],
)
def test_windows_only_requirement(marker: str) -> None:
    reqs = [req("app", run=(f"colorama; {marker}",)), req("colorama")]
    assert build_graph(reqs).edges() == []
    both = Target(platforms=("linux", "win32"))
    assert build_graph(reqs, both).edges() == [("colorama", "app")]


def test_cpython_environment() -> None:
    reqs = [
        req(
            "app",
            run=(
                'cp; implementation_name == "cpython"'
                ' and platform_python_implementation == "CPython"',
                'pp; implementation_name == "pypy"',
                'mac; sys_platform == "darwin" and platform_system == "Darwin"',
            ),
        ),
        req("cp"),
        req("pp"),
        req("mac"),
    ]
    assert build_graph(reqs).edges() == [("cp", "app")]
    assert build_graph(reqs, Target(platforms=("darwin",))).edges() == [
        ("cp", "app"),
        ("mac", "app"),
    ]


def test_target_per_project() -> None:
    reqs = [
        req("a", run=('w; sys_platform == "win32"',)),
        req("b", run=('w; sys_platform == "win32"',)),
        req("w"),
    ]
    g = build_graph(reqs, {"A": Target(platforms=("win32",)), "not-enrolled": Target()})
    assert g.edges() == [("w", "a")]  # b falls back to the default linux target


def test_build_requirement_markers() -> None:
    reqs = [
        req("app", build=('cython; python_version >= "3.12"', 'wheel; python_version < "3"')),
        req("cython"),
        req("wheel"),
    ]
    assert build_graph(reqs).edges("build") == []
    assert build_graph(reqs, Target(pythons=("3.12",))).edges("build") == [("cython", "app")]


# -- extras ----------------------------------------------------------------------------------

EXTRA_REGISTRY = [
    req("app", run=("lib",)),
    req("lib", run=('fast; extra == "speed"', 'sphinx; extra == "docs"')),
    req("fast", run=('jit[gpu]; extra == "accel"',)),
    req("jit", run=('cuda; extra == "gpu"', 'llvm; extra == "cpu"')),
    req("sphinx"),
    req("cuda"),
    req("llvm"),
]


def test_extras_not_requested_make_no_edges() -> None:
    g = build_graph(EXTRA_REGISTRY)
    assert g.edges() == [("lib", "app")]
    assert g.missing == {}


def test_extras_requested_by_argument() -> None:
    g = build_graph(EXTRA_REGISTRY, extras={"LIB": ["Docs"], "ghost": ["x"]})
    assert g.edges() == [("lib", "app"), ("sphinx", "lib")]


def test_extras_argument_must_hold_sequences() -> None:
    with pytest.raises(GraphError, match="extras of lib must be a sequence of names"):
        build_graph(EXTRA_REGISTRY, extras={"lib": "docs"})


def test_extras_requested_by_a_dependent_propagate() -> None:
    registry = [
        *EXTRA_REGISTRY[1:],
        req("app", run=("lib[speed]",)),
        req("user", run=("fast[accel]",)),
    ]
    g = build_graph(registry)
    # app -> lib[speed] -> fast; user -> fast[accel] -> jit[gpu] -> cuda, but not jit's cpu.
    assert g.edges() == [
        ("cuda", "jit"),
        ("fast", "lib"),
        ("fast", "user"),
        ("jit", "fast"),
        ("lib", "app"),
    ]


def test_extra_requested_through_a_chain() -> None:
    registry = [
        req("a", run=("b[x]",)),
        req("b", run=('c[y]; extra == "x"',)),
        req("c", run=('d; extra == "y"', 'e; extra == "z"')),
        req("d"),
        req("e"),
    ]
    assert build_graph(registry).edges() == [("b", "a"), ("c", "b"), ("d", "c")]


def test_extra_requested_by_a_build_requirement() -> None:
    registry = [req("a", build=("b[x]",)), req("b", run=('c; extra == "x"',)), req("c")]
    g = build_graph(registry)
    assert g.edges("build") == [("b", "a")]
    assert g.edges("run") == [("c", "b")]


def test_self_referencing_extra() -> None:
    # `pkg[all]` listing `pkg[a,b]` is how many projects spell an "all" extra.
    registry = [
        req("pkg", run=('pkg[a,b]; extra == "all"', 'x; extra == "a"', 'y; extra == "b"')),
        req("x"),
        req("y"),
    ]
    assert build_graph(registry).edges() == []
    assert build_graph(registry, extras={"pkg": ["all"]}).edges() == [("x", "pkg"), ("y", "pkg")]


def test_extra_marker_combined_with_environment() -> None:
    registry = [
        req("lib", run=('win; extra == "gui" and sys_platform == "win32"',)),
        req("win"),
    ]
    assert build_graph(registry, extras={"lib": ["gui"]}).edges() == []
    on_windows = Target(platforms=("win32",))
    assert build_graph(registry, on_windows, extras={"lib": ["gui"]}).edges() == [("win", "lib")]


def test_extra_names_are_normalised() -> None:
    # PEP 685: extra names compare after normalisation on both sides.
    registry = [
        req("a", run=("b[Dev_Tools]",)),
        req("b", run=('c; extra == "dev.tools"',)),
        req("c"),
    ]
    assert build_graph(registry).edges("run") == [("b", "a"), ("c", "b")]


# -- missing and invalid ---------------------------------------------------------------------


def test_missing_by_kind() -> None:
    g = build_graph(
        [
            req(
                "app",
                run=("lib", "Requests>=2", 'tomli; python_version < "3.11"'),
                build=("hatchling",),
            ),
            req("lib", run=('ghost; extra == "never"',)),
        ]
    )
    assert g.edges() == [("lib", "app")]
    assert g.missing == {"app": {"run": {"requests"}, "build": {"hatchling"}}}


def test_missing_through_requested_extra() -> None:
    g = build_graph([req("lib", run=('ghost; extra == "x"',))], extras={"lib": ["x"]})
    assert g.missing == {"lib": {"run": {"ghost"}}}


def test_invalid_strings_are_recorded_not_raised() -> None:
    bad = [
        "not a requirement",
        "lib >=",
        "lib; python_version <",
        'lib; extras == "x"',  # parses, but `extras` is no core-metadata marker variable
        "",
    ]
    g = build_graph([req("app", run=(*bad, "lib"), build=("-x",)), req("lib")])
    assert g.edges() == [("lib", "app")]
    assert g.invalid == sorted([("app", s) for s in bad] + [("app", "-x")])


def test_duplicate_project_is_an_error() -> None:
    with pytest.raises(GraphError, match="foo-bar is enrolled twice"):
        build_graph([req("foo-bar"), req("Foo_Bar")])


def test_graph_error_is_a_wheelstock_error() -> None:
    assert issubclass(GraphError, WheelstockError)


def test_bare_string_requirements_are_refused() -> None:
    with pytest.raises(GraphError, match="run requirements must be a sequence"):
        Requirements(project="app", version="1", run="lib", build=())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pythons": ()}, "at least one python"),
        ({"pythons": ("three",)}, "'three' is not like 3.12"),
        ({"platforms": ("freebsd",)}, "'freebsd' is not one of darwin, linux, win32"),
    ],
)
def test_bad_target(kwargs: dict[str, tuple[str, ...]], message: str) -> None:
    with pytest.raises(GraphError, match=message):
        Target(**kwargs)


def test_collector_state_is_restored() -> None:
    assert gc.isenabled()
    build_graph([req("a", run=("b",)), req("b")])
    assert gc.isenabled()
    with pytest.raises(GraphError):
        build_graph([req("a"), req("a")])
    assert gc.isenabled()
    gc.disable()
    try:
        build_graph([req("a")])
        assert not gc.isenabled()
    finally:
        gc.enable()


# -- the fast parser agrees with packaging ------------------------------------------------------


def _reference(text: str) -> tuple[str, frozenset[str], str] | None:
    try:
        parsed = Requirement(text)
    except InvalidRequirement:
        return None
    extras = frozenset(canonicalize_name(x) for x in parsed.extras)
    return canonicalize_name(parsed.name), extras, str(parsed.marker or "")


def _ours(got: bot.graph._Parsed | None) -> tuple[str, frozenset[str], str] | None:
    return None if got is None else (got.name, got.extras, got.marker_key)


def _corpus() -> list[str]:
    names = ["foo", "Foo_Bar.baz", "a", "x-1.0", "-bad", "foo-", "ünï"]
    extras = ["", "[x]", "[X_y, z]", "[]", "[x,]", "[ x ]"]
    specs = [
        "",
        ">=1.0",
        " >= 1.0",
        ">=1,<2",
        ">=1,",
        "==1.*",
        "==1.0.*",
        "~=1",
        "~=1.2",
        "!=1.0a1",
        "<2.0.post1.dev3",
        "===1.0",
        "==1.0+local",
        "(>=1.0)",
        "( >=1 , <2 )",
        ">=",
        "==1.0.",
        ">=1.0rc1",
        ">=1.0-rc1",
        "==1.*.0",
    ]
    markers = [
        "",
        '; python_version < "3.8"',
        ';python_version<"3.8"',
        ' ; extra == "X_Y"',
        "; python_version <",
        ";",
        '; os_name == "nt" and (extra == "a" or extra == "b")',
        '; sys_platform == "a;b"',
        "; foo == 'x'",
    ]
    corpus = [f"{n}{e}{s}{m}" for n, e, s, m in itertools.product(names, extras, specs, markers)]
    corpus += ["foo @ https://example.org/foo.tar.gz", "foo\t>=1", "foo\u00a0>=1", " foo ", "foo\n"]
    return corpus


def test_fast_path_agrees_with_packaging() -> None:
    resolver = bot.graph._Resolver()
    fast = 0
    for text in _corpus():
        got = resolver.parse(text)
        assert _ours(got) == _reference(text), text
        fast += bot.graph._FAST.fullmatch(text) is not None
    assert fast > 1000  # the corpus does exercise the fast path, not only the fallback


def test_fast_path_on_random_spellings() -> None:
    rng = random.Random(7)
    alphabet = "aZ09._-[], <>=!~;()\"'*"
    resolver = bot.graph._Resolver()
    for _ in range(5000):
        text = "foo" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        got = resolver.parse(text)
        assert _ours(got) == _reference(text), text


# -- cycles, build order, depth ----------------------------------------------------------------


def cyclic() -> list[Requirements]:
    return [
        # run cycle b -> c -> d -> b (as dependency -> dependent edges: b needs d, ...)
        req("b", run=("d",)),
        req("c", run=("b",)),
        req("d", run=("c",)),
        # build cycle x <-> y plus the longer x -> y -> z -> x
        req("x", build=("y", "z")),
        req("y", build=("x",)),
        req("z", build=("y",)),
        req("w", build=("x",)),
    ]


def test_cycles_by_kind_rotated_and_sorted() -> None:
    g = build_graph(cyclic())
    assert g.cycles("run") == [["b", "c", "d"]]
    assert g.cycles("build") == [["x", "y"], ["x", "y", "z"]]
    assert g.cycles() == [["b", "c", "d"], ["x", "y"], ["x", "y", "z"]]
    assert build_graph([req("a", run=("b",)), req("b")]).cycles() == []


def test_unknown_kind_is_an_error() -> None:
    g = build_graph(cyclic())
    for call in (g.cycles, g.edges):
        with pytest.raises(GraphError, match="unknown edge kind 'test'"):
            call("test")


def test_build_order_ignores_run_edges() -> None:
    g = build_graph(
        [
            req("app", run=("lib",), build=("backend",)),
            req("lib", build=("backend",)),
            req("backend"),
            req("tool", run=("app",)),
        ]
    )
    waves, broken = g.build_order()
    assert waves == [["backend", "tool"], ["app", "lib"]]
    assert broken == []
    assert g.depth() == 1


def test_build_cycles_broken_deterministically() -> None:
    g = build_graph(cyclic())
    waves, broken = g.build_order()
    # The DFS from x (the smallest name) first closes x -> y -> x, whose last-sorting edge
    # is (y, x); what is left still holds x -> y -> z -> x, whose last-sorting edge is (z, x).
    assert broken == [("y", "x"), ("z", "x")]
    assert waves == [["b", "c", "d", "x"], ["w", "y"], ["z"]]
    assert g.depth() == 2
    for order in (reversed(cyclic()), sorted(cyclic(), key=lambda r: r.project)):
        assert build_graph(list(order)).build_order() == (waves, broken)


def test_breaking_a_tangle_leaves_a_dag_whatever_the_input_order() -> None:
    rng = random.Random(3)
    names = [f"p{i:02d}" for i in range(30)]
    registry = [req(n, build=tuple(rng.sample([m for m in names if m != n], 3))) for n in names]
    g = build_graph(registry)
    waves, broken = g.build_order()
    assert sorted(itertools.chain.from_iterable(waves)) == names
    remaining = nx.DiGraph(g.edges("build"))
    remaining.remove_edges_from(broken)
    assert nx.is_directed_acyclic_graph(remaining)
    full = nx.DiGraph(g.edges("build"))
    assert all(nx.has_path(full, v, u) for u, v in broken)  # each one closed a cycle
    position = {n: i for i, wave in enumerate(waves) for n in wave}
    assert all(position[u] < position[v] for u, v in remaining.edges)
    assert waves == [sorted(w) for w in waves]
    assert build_graph(list(reversed(registry))).build_order() == (waves, broken)


def test_depth_of_a_chain_and_of_nothing() -> None:
    chain = [req("a"), req("b", build=("a",)), req("c", build=("b",)), req("d", run=("c",))]
    assert build_graph(chain).depth() == 2
    assert build_graph([]).depth() == 0
    assert build_graph([]).build_order() == ([], [])


# -- impact ------------------------------------------------------------------------------------


def test_impact_by_kind() -> None:
    g = build_graph(
        [
            req("core"),
            req("lib", run=("core",)),
            req("plugin", build=("lib",)),
            req("backend", build=("core",)),
            req("app", run=("plugin",), build=("backend",)),
        ]
    )
    assert g.impact("Core") == {
        "run": {"lib"},
        "build": {"backend", "app"},
        "any": {"lib", "plugin", "backend", "app"},
    }
    assert g.impact("app") == {"run": set(), "build": set(), "any": set()}


def test_impact_on_a_cycle_excludes_the_node_itself() -> None:
    g = build_graph(cyclic())
    assert g.impact("b") == {"run": {"c", "d"}, "build": set(), "any": {"c", "d"}}


def test_impact_of_unknown_project() -> None:
    with pytest.raises(GraphError, match="nope is not an enrolled project"):
        build_graph([req("a")]).impact("nope")


# -- exports -----------------------------------------------------------------------------------


def sample() -> Graph:
    return build_graph(
        [
            req("app", run=("lib", "ghost"), build=("backend", "lib"), version="2.0"),
            req("lib", build=("backend",), version="1.1"),
            req("backend", version="70.0"),
            req("odd", version='1.0 "quoted" \\'),
        ]
    )


def test_export_json_round_trip() -> None:
    g = sample()
    text = g.export("json")
    data = json.loads(text)
    assert data["nodes"] == [
        {"id": "app", "version": "2.0"},
        {"id": "backend", "version": "70.0"},
        {"id": "lib", "version": "1.1"},
        {"id": "odd", "version": '1.0 "quoted" \\'},
    ]
    assert data["edges"] == [
        {"source": "backend", "target": "app", "kinds": ["build"]},
        {"source": "backend", "target": "lib", "kinds": ["build"]},
        {"source": "lib", "target": "app", "kinds": ["build", "run"]},
    ]
    assert data["missing"] == {"app": {"run": ["ghost"]}}
    back = nx.node_link_graph(data, edges="edges")
    assert sorted(back.edges) == g.edges()
    assert back.nodes["lib"]["version"] == "1.1"
    assert text == sample().export("json")


def test_export_graphml_is_read_by_networkx() -> None:
    text = sample().export("graphml")
    back = nx.read_graphml(io.BytesIO(text.encode()))
    assert sorted(back.edges) == sample().edges()
    assert back.edges["lib", "app"]["kinds"] == "build,run"
    assert back.nodes["app"]["version"] == "2.0"
    assert back.nodes["app"]["missing_run"] == "ghost"


def test_export_dot() -> None:
    text = sample().export("dot")
    assert text.startswith("digraph wheelstock {")
    assert text.rstrip().endswith("}")
    assert '"backend" -> "app" [label="build"' in text
    assert '"lib" -> "app" [label="build,run"' in text
    assert '"odd" [label="odd\\n1.0 \\"quoted\\" \\\\"];' in text
    assert text.count("->") == 3


def test_export_unknown_format() -> None:
    with pytest.raises(GraphError, match="unknown export format 'yaml'"):
        sample().export("yaml")


# -- drawing -----------------------------------------------------------------------------------


def test_draw_svg_pure_python() -> None:
    g = build_graph([*cyclic(), *[req(f"more-{i}", build=("x",)) for i in range(3)]])
    svg = g.draw_svg(use_graphviz=False)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    for node in g.graph:
        assert node in texts
    edges = root.find(f"{SVG}g[@class='edges']")
    assert edges is not None
    paths = edges.findall(f"{SVG}path")
    assert len(paths) == g.graph.number_of_edges()
    titles = sorted(p.findtext(f"{SVG}title") or "" for p in paths)
    assert "y -> x (build, cycle broken here)" in titles
    assert "x -> y (build)" in titles
    assert svg == g.draw_svg(use_graphviz=False)


def test_draw_svg_escapes_text() -> None:
    root = ET.fromstring(sample().draw_svg(use_graphviz=False))
    assert '1.0 "quoted" \\' in [t.text for t in root.iter(f"{SVG}text")]


def test_draw_svg_of_nothing() -> None:
    root = ET.fromstring(build_graph([]).draw_svg(use_graphviz=False))
    assert "no enrolled projects" in [t.text for t in root.iter(f"{SVG}text")]


def test_draw_svg_falls_back_without_graphviz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    g = sample()
    assert g.draw_svg() == g.draw_svg(use_graphviz=False)
    with pytest.raises(GraphError, match="Graphviz is not installed"):
        g.draw_svg(use_graphviz=True)


def fake_dot(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "dot"
    script.write_text(f"#!{sys.executable}\nimport sys\n{body}\n")
    script.chmod(0o755)
    return script


def test_draw_svg_runs_graphviz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = fake_dot(
        tmp_path,
        "assert sys.argv[1:] == ['-Tsvg']\n"
        "src = sys.stdin.read()\n"
        "svg = '<svg xmlns=\"http://www.w3.org/2000/svg\"><text>%d</text></svg>'\n"
        "print(svg % src.count('->'))",
    )
    monkeypatch.setattr(shutil, "which", lambda name: str(script))
    root = ET.fromstring(sample().draw_svg())
    assert [t.text for t in root.iter(f"{SVG}text")] == ["3"]


def test_draw_svg_graphviz_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = fake_dot(
        tmp_path, "sys.stderr.write('Error: syntax error in line 1\\nmore\\n')\nsys.exit(1)"
    )
    monkeypatch.setattr(shutil, "which", lambda name: str(script))
    with pytest.raises(GraphError, match=r"^dot -Tsvg failed: Error: syntax error in line 1$"):
        sample().draw_svg(use_graphviz=True)


def test_draw_svg_graphviz_not_runnable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: str(tmp_path / "gone"))
    with pytest.raises(GraphError, match="could not run"):
        sample().draw_svg()


# -- determinism -------------------------------------------------------------------------------


def test_outputs_do_not_depend_on_input_order() -> None:
    registry = [*cyclic(), *EXTRA_REGISTRY[1:], req("app", run=("lib[speed,docs]", "ghost"))]
    first = build_graph(registry)
    shuffled = registry[:]
    random.Random(5).shuffle(shuffled)
    second = build_graph(shuffled)
    for fmt in ("json", "graphml", "dot"):
        assert first.export(fmt) == second.export(fmt)
    assert first.cycles() == second.cycles()
    assert first.build_order() == second.build_order()
    assert first.draw_svg(use_graphviz=False) == second.draw_svg(use_graphviz=False)


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is optional")
def test_draw_svg_with_real_graphviz() -> None:
    g = sample()
    root = ET.fromstring(g.draw_svg(use_graphviz=True))
    assert root.tag == f"{SVG}svg"
    titles = {t.text for t in root.iter(f"{SVG}title")}
    assert {"backend->app", "lib->app", "backend->lib"} <= titles
    assert set(g.graph) <= titles
