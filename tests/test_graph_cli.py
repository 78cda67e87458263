"""The graph from real upstream metadata: commands, the metadata cache, and the tick's order."""

from __future__ import annotations

import json
from pathlib import Path
from xml.etree import ElementTree

from bot import feedstock
from bot.build.stage import in_build_order
from bot.context import Bot
from bot.feedstock import Source
from bot.forge.local import LocalForge
from bot.registry import load_directory
from bot.state import State
from bot.upstream import Upstream, make_client

from conftest import TEMPLATE, Workspace
from projects import make_project, make_sdist


def publish_upstream(ws: Workspace, tmp_path: Path) -> None:
    """base <- mid (run) <- app (run and build); app also needs an unenrolled name."""
    specs = {
        "base": ((), ()),
        "mid": (("base>=1",), ()),
        "app": (
            ("mid", "not-enrolled; python_version >= '3'", "win-only; sys_platform == 'win32'"),
            ("mid",),
        ),
    }
    for name, (deps, build) in specs.items():
        project = make_project(
            tmp_path / "src" / name, name, "1.0", dependencies=deps, build_requires=build
        )
        ws.upstream.add_file(name, make_sdist(project, tmp_path / "dist" / name))
        ws.enrol(name, "alice")


def test_graph_commands(workspace: Workspace, tmp_path: Path) -> None:
    publish_upstream(workspace, tmp_path)
    summary = workspace.run("graph")
    assert summary.code == 0, summary.err
    assert summary.out.splitlines() == [
        "nodes: 3",
        "edges: 2 (run 2, build 1)",
        "depth: 1",
        "cycles: 0",
    ]
    assert "reading the metadata of app 1.0" in summary.err
    fetched = sum(1 for _, path in workspace.upstream.requests if path.startswith("/files/"))
    assert fetched == 3

    again = workspace.run("graph", "order")
    assert again.out.splitlines() == ["wave 1: base, mid", "wave 2: app"]
    assert "reading the metadata" not in again.err  # cached by (project, version)
    assert sum(1 for _, p in workspace.upstream.requests if p.startswith("/files/")) == fetched

    impact = workspace.run("graph", "impact", "Base")
    assert impact.out.splitlines() == ["run: app, mid", "build: -", "any: app, mid"]
    missing = workspace.run("graph", "missing")
    assert missing.out.splitlines() == [
        "app needs build: flit-core; run: not-enrolled",
        "base needs build: flit-core",
        "mid needs build: flit-core",
    ]
    exported = json.loads(workspace.run("graph", "export", "--format", "json").out)
    assert {(e["source"], e["target"]) for e in exported["edges"]} == {
        ("base", "mid"),
        ("mid", "app"),
    }
    svg = tmp_path / "graph.svg"
    drawn = workspace.run("graph", "draw", str(svg), "--no-graphviz")
    assert drawn.code == 0 and ElementTree.parse(svg).getroot().tag.endswith("svg")
    unknown = workspace.run("graph", "impact", "nope")
    assert unknown.code == 1 and unknown.err.strip().endswith(
        "error: nope is not an enrolled project"
    )


def test_graph_with_a_project_missing_upstream(workspace: Workspace, tmp_path: Path) -> None:
    publish_upstream(workspace, tmp_path)
    workspace.enrol("ghost", "alice")
    result = workspace.run("graph")
    assert result.code == 1
    assert "nodes: 4" in result.out
    assert "error: ghost:" in result.err and "not found" in result.err


def test_tick_builds_in_build_order(workspace: Workspace, tmp_path: Path) -> None:
    """alpha needs zeta to build, so zeta builds first although alpha sorts first."""
    for name, build in (("alpha", ("zeta",)), ("zeta", ())):
        project = make_project(tmp_path / "src" / name, name, "1.0", build_requires=build)
        workspace.upstream.add_file(name, make_sdist(project, tmp_path / "dist" / name))
        workspace.enrol(name, "alice")
    state = State(workspace.state)
    forge = LocalForge(state.forge_dir)
    upstream = Upstream(workspace.upstream.url, make_client())
    entries = load_directory(workspace.registry).entries
    for entry in entries:
        (sdist,) = [f for f in upstream.project(entry.name).files]
        files = feedstock.render(
            TEMPLATE,
            project=entry.name,
            version="1.0",
            source=Source(sdist.filename, sdist.url, str(sdist.sha256)),
            maintainers=entry.maintainers,
            consent=entry.consent,
        )
        forge.create_feedstock(entry.name, files, "create")
    lines: list[str] = []
    bot = Bot(state, forge, upstream, workspace.registry, TEMPLATE, echo=lines.append)
    pending = [(entry, forge.head(entry.name)) for entry in entries]
    assert [e.name for e, _ in pending] == ["alpha", "zeta"]
    ordered = in_build_order(bot, pending)
    assert [e.name for e, _ in ordered] == ["zeta", "alpha"]
    state.close()
