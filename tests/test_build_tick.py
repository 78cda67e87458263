"""What a tick builds and what it leaves alone: upstream's wheels, failed sdists, no sandbox."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from test_builder import FAILING_BACKEND, IN_TREE_PYPROJECT, tar_sdist

from bot import registry
from bot.build import stage
from bot.context import Bot
from bot.forge.local import LocalForge
from bot.state import State
from bot.upstream import Upstream, make_client

from conftest import TEMPLATE, Workspace
from projects import assemble_wheel, fixture_sdist


def test_release_with_a_pure_wheel_upstream_is_not_built(
    workspace: Workspace, tmp_path: Path
) -> None:
    workspace.enrol("demo", "alice")
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    workspace.upstream.add_file("demo", assemble_wheel(tmp_path / "w", "demo", "1.0"))
    result = workspace.run("tick")
    assert result.code == 0, result.out + result.err
    assert "demo 1.0: not built: upstream ships a pure wheel (demo-1.0-py3-none-any.whl)" in (
        result.out
    )
    assert "0 built, 0 failed" in result.out
    status = workspace.run("status")
    assert "1.0 skipped" in status.out and "upstream ships a pure wheel" in status.out
    # The next tick does not look again: the head has its recorded outcome.
    again = workspace.run("tick")
    assert "not built" not in again.out


def test_wheels_for_another_python_only_do_not_stop_the_build(
    workspace: Workspace, tmp_path: Path
) -> None:
    path = workspace.enrol("demo", "alice")
    path.write_text(path.read_text() + 'build:\n  pythons: ["3.99"]\n')
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    workspace.upstream.add_file(
        "demo",
        assemble_wheel(tmp_path / "w", "demo", "1.0", tag="cp312-cp312-manylinux_2_17_x86_64"),
    )
    result = workspace.run("tick")
    # 3.99 is not covered by a cp312 wheel, so it is built, and fails for want of a Python.
    assert "upstream ships" not in result.out
    assert "Python 3.99 is not available here" in result.out
    assert "none of the Pythons to build for is available" in result.out


def _failing_sdist(tmp_path: Path) -> Path:
    files = {"pyproject.toml": IN_TREE_PYPROJECT, "stub_backend.py": FAILING_BACKEND}
    return tar_sdist(tmp_path / "demo-1.0.tar.gz", files)


def test_a_failed_sdist_is_not_rebuilt_until_asked(workspace: Workspace, tmp_path: Path) -> None:
    workspace.enrol("demo", "alice")
    workspace.upstream.add_file("demo", _failing_sdist(tmp_path))
    first = workspace.run("tick")
    assert first.code == 1
    assert "build of demo 1.0 failed: Python 3." in first.out
    assert "build failed (exit 1)" in first.out
    # An unrelated change to the feedstock: a new head with the same sdist.
    forge = LocalForge(workspace.state / "forge")
    forge.push_change("demo", "notes", {"NOTES.md": "a volunteer's note\n"}, "Add notes")
    pr = forge.open_pr("demo", "notes", "Add notes", "")
    forge.merge_pr(pr.number, "volunteer")
    second = workspace.run("tick")
    assert "0 built, 0 failed" in second.out
    assert "demo-1.0.tar.gz already failed with wheelstock" in second.out
    assert "not rebuilt until `@wheelstock rebuild`" in second.out
    # @wheelstock rebuild forgets the failure: the next tick builds the sdist again.
    bot = tick_bot(workspace)
    try:
        build = bot.state.build_for("demo", forge.head("demo"))
        assert build is not None and build.status == "failed"
        reply = stage.rebuild(bot, registry.load_directory(workspace.registry).get("demo"))
    finally:
        bot.state.close()
    assert reply.startswith("rebuilding 1.0")
    third = workspace.run("tick")
    assert "build of demo 1.0 failed: Python 3." in third.out


def tick_bot(workspace: Workspace) -> Bot:
    state = State(workspace.state)
    return Bot(
        state=state,
        forge=LocalForge(state.forge_dir),
        upstream=Upstream(workspace.upstream.url, make_client()),
        registry_dir=workspace.registry,
        template_dir=TEMPLATE,
    )


def path_without_bwrap(tmp_path: Path) -> str:
    """A PATH with git (the local forge needs it) and no bwrap."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = shutil.which("git")
    assert git is not None
    (bin_dir / "git").symlink_to(git)
    return str(bin_dir)


def test_no_bwrap_is_said_once_and_builds_wait(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("a", "b"):
        workspace.enrol(f"demo-{name}", "alice")
        workspace.upstream.add_file(
            f"demo-{name}", fixture_sdist(tmp_path / name, f"demo-{name}", "1.0")
        )
    path = os.environ.get("PATH", os.defpath)
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    result = workspace.run("tick")
    assert result.code == 1
    lines = [line for line in result.out.splitlines() if "bwrap" in line]
    assert len(lines) == 1, result.out
    assert lines[0].startswith("error: build: builds need a sandbox and bwrap is not on PATH")
    assert "apt-get install bubblewrap" in lines[0] and "--unsafe-no-sandbox" in lines[0]
    assert "(2 builds waiting)" in lines[0]
    assert "Traceback" not in result.out + result.err
    # Nothing was recorded: with bwrap back, the next tick builds both.
    monkeypatch.setenv("PATH", path)
    again = workspace.run("tick")
    assert "2 built" in again.out, again.out


@pytest.mark.slow
def test_provenance_is_a_slsa_statement(workspace: Workspace, tmp_path: Path) -> None:
    workspace.enrol("demo", "alice")
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    result = workspace.run("tick", "--verify-reproducible")
    assert result.code == 0, result.out
    assert "reproducible: identical" in result.out
    (path,) = (workspace.state / "builds" / "demo").glob("*/provenance.json")
    record = json.loads(path.read_text())
    assert record["_type"] == "https://in-toto.io/Statement/v1"
    assert record["predicateType"] == "https://slsa.dev/provenance/v1"
    (subject,) = record["subject"]
    staged = next((workspace.state / "staging" / "demo").glob("*/*.whl"))
    assert subject == {
        "name": staged.name,
        "digest": {"sha256": hashlib.sha256(staged.read_bytes()).hexdigest()},
    }
    deps = record["predicate"]["buildDefinition"]["resolvedDependencies"]
    names = [d.get("name") for d in deps]
    assert names[:2] == ["feedstock", "demo-1.0.tar.gz"]
    assert any(d.get("name", "").startswith("flit") and d.get("digest") for d in deps[2:])
    run = record["predicate"]["runDetails"]
    assert run["builder"]["version"]["bwrap"]
    assert run["byproducts"][0]["annotations"]["identical"] is True
    sandbox = record["predicate"]["buildDefinition"]["internalParameters"]["sandbox"]
    assert sandbox["network"] == "none"


def test_unsafe_no_sandbox_builds_without_bwrap_and_says_so(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.enrol("demo", "alice")
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    monkeypatch.setenv("PATH", path_without_bwrap(tmp_path))
    result = workspace.run("tick", "--unsafe-no-sandbox")
    assert result.code == 0, result.out
    assert result.out.count("--unsafe-no-sandbox: project code runs with") == 1
    assert "1 built" in result.out
    (path,) = (workspace.state / "builds" / "demo").glob("*/provenance.json")
    record = json.loads(path.read_text())
    sandbox = record["predicate"]["buildDefinition"]["internalParameters"]["sandbox"]
    assert sandbox["sandbox"] == "none (--unsafe-no-sandbox)" and sandbox["network"] == "host"
