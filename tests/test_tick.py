"""A tick's failure paths: each bad input gives one clear line and a non-zero exit."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bot import feedstock
from bot.cli import main
from bot.forge.local import LocalForge
from bot.state import State

from conftest import TEMPLATE, Workspace
from projects import fixture_sdist


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_malformed_registry_entry_is_reported_and_others_go_on(
    workspace: Workspace, tmp_path: Path
) -> None:
    bad = workspace.enrol("broken", "alice")
    bad.write_text("project: broken\nmaintainers: [alice\nconsent: x\n")
    workspace.enrol("fine", "alice")
    result = workspace.run("tick")
    assert result.code == 1
    errors = [line for line in result.out.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: {bad}:") and "invalid YAML" in errors[0]
    # The valid entry was still looked up upstream (and is unknown there).
    assert any("fine" in line and "not found" in line for line in errors[1:])


def test_project_unknown_upstream(workspace: Workspace) -> None:
    workspace.enrol("ghost", "alice")
    result = workspace.run("tick")
    assert result.code == 1
    line = one_error_line(result.out)
    assert line.startswith("error: ghost: ") and "'ghost' not found" in line
    assert workspace.upstream.url in line
    assert not (workspace.state / "forge" / "repos" / "ghost-feedstock.git").exists()


def test_unreachable_upstream(workspace: Workspace) -> None:
    workspace.enrol("demo", "alice")
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/simple/"
    result = workspace.run("tick", upstream=dead)
    assert result.code == 1
    line = one_error_line(result.out)
    assert "demo:" in line and "127.0.0.1" in line
    assert "tick: 1 projects" in result.out


def test_no_release_with_sdist(workspace: Workspace, tmp_path: Path) -> None:
    wheel_only = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel_only.write_bytes(b"not really a wheel")
    workspace.upstream.add_file("demo", wheel_only)
    workspace.enrol("demo", "alice")
    result = workspace.run("tick")
    assert result.code == 1
    assert "no final, non-yanked release of demo with an sdist" in one_error_line(result.out)


@pytest.mark.slow
def test_sdist_hash_mismatch_is_refused_and_not_retried(
    workspace: Workspace, tmp_path: Path
) -> None:
    sdist = fixture_sdist(tmp_path, "demo", "1.0")
    workspace.upstream.add_file("demo", sdist)
    workspace.enrol("demo", "alice")
    # Upstream now serves other bytes under the filename the feedstock pinned.
    served = workspace.upstream.root / "files" / "demo" / sdist.name
    original = served.read_bytes()
    served.write_bytes(original + b"tampered")

    first = workspace.run("tick")
    assert first.code == 1
    assert "created demo-feedstock at 1.0" in first.out
    assert "build of demo 1.0 failed: sha256 mismatch for demo-1.0.tar.gz" in first.out
    state = State(workspace.state)
    try:
        (build,) = state.builds()
        assert build.status == "failed" and "sha256 mismatch" in (build.reason or "")
        assert "sha256 mismatch" in build.log_path.read_text()
    finally:
        state.close()
    assert not (workspace.state / "staging").exists()
    assert not (workspace.state / "downloads" / "demo" / sdist.name).exists()
    assert "nothing awaits review" in workspace.run("review", "list").out

    # The same failure is not rebuilt until the feedstock changes, even once upstream is fixed.
    served.write_bytes(original)
    second = workspace.run("tick")
    assert "0 built, 0 failed" in second.out
    assert second.code == 0


@pytest.mark.slow
def test_approval_by_unlisted_handle_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    workspace.enrol("demo", "alice")
    assert workspace.run("tick").code == 0
    refused = workspace.run("review", "approve", "demo", "1.0", "--as", "mallory")
    assert refused.code == 1
    assert refused.err.strip().startswith("error: 'mallory' is not a maintainer of demo")
    assert refused.err.count("\n") == 1
    assert "demo 1.0  staged" in workspace.run("review", "list").out
    assert not (workspace.state / "index" / "files").exists()

    rejected = workspace.run("review", "reject", "demo", "1.0", "--as", "Alice", "--reason", "no")
    assert rejected.code == 0
    assert "demo 1.0  rejected" in workspace.run("review", "list", "--all").out
    again = workspace.run("review", "approve", "demo", "1.0", "--as", "alice")
    assert again.code == 1 and "no staged build of demo 1.0" in again.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("pr", "merge", "7"), "error: no pull request #7"),
        (("pr", "show", "1"), "error: no pull request #1"),
        (("review", "approve", "x", "1", "--as", "a"), "error: project 'x' is not enrolled"),
        (("review", "approve", "demo", "1", "--as", "alice"), "error: no staged build of demo 1"),
        (("review", "approve", "demo", "one", "--as", "alice"), "error: 'one' is not a valid"),
    ],
)
def test_bad_commands_give_one_line(
    workspace: Workspace, args: tuple[str, ...], message: str
) -> None:
    workspace.enrol("demo", "alice")
    result = workspace.run(*args)
    assert result.code == 1, args
    assert result.err.startswith(message) and result.err.count("\n") == 1, result.err


def test_broken_state_and_records_give_one_line(workspace: Workspace, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "statefile"
    not_a_dir.write_text("x")
    code = main(["review", "list", "--state-dir", str(not_a_dir)])
    assert code == 1
    workspace.state.mkdir()
    (workspace.state / "state.db").write_text("not a database, just text" * 100)
    result = workspace.run("review", "list")
    assert result.code == 1 and result.err.startswith(f"error: state directory {workspace.state}")
    (workspace.state / "state.db").unlink()
    pulls = workspace.state / "forge" / "pulls"
    pulls.mkdir(parents=True)
    (pulls / "000001.json").write_text("{not json")
    for args in (("pr", "list"), ("pr", "show", "1")):
        result = workspace.run(*args)
        assert result.code == 1
        assert result.err == f"error: {pulls / '000001.json'}: not a readable pull request record\n"


def test_serve_on_a_taken_port(workspace: Workspace) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = str(sock.getsockname()[1])
        result = workspace.run("serve", "--port", port)
    assert result.code == 1
    assert result.err.startswith(f"error: cannot serve on 127.0.0.1:{port}: ")
    with pytest.raises(SystemExit) as exit_info:
        workspace.run("serve", "--port", "99999")
    assert exit_info.value.code == 2  # argparse's usage error, one line on stderr


def test_console_entry_points(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "wheelstock"  # the console script pip installed
    for argv in ([sys.executable, "-m", "bot", "--version"], [str(script), "--version"]):
        done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("wheelstock ")
    missing = subprocess.run(
        [sys.executable, "-m", "bot", "registry", "lint"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert missing.returncode == 1
    assert missing.stderr == "error: registry: no such file or directory\n"


@pytest.mark.slow
def test_build_a_feedstock_checkout(workspace: Workspace, tmp_path: Path) -> None:
    """What the rendered CI workflow runs: `wheelstock build --feedstock . --out dist`."""
    sdist = fixture_sdist(tmp_path, "demo", "1.0")
    workspace.upstream.add_file("demo", sdist)
    workspace.enrol("demo", "alice")
    assert workspace.run("tick").code == 0
    repo = workspace.state / "forge" / "repos" / "demo-feedstock.git"
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "--quiet", str(repo), str(checkout)], check=True)
    workflow = (checkout / ".github" / "workflows" / "build.yml").read_text()
    assert "wheelstock build --feedstock . --out dist" in workflow

    out = tmp_path / "wheels"
    built = workspace.run("build", "--feedstock", str(checkout), "--out", str(out))
    assert built.code == 0, built.err
    assert [p.name for p in out.iterdir()] == ["demo-1.0-py3-none-any.whl"]

    served = workspace.upstream.root / "files" / "demo" / sdist.name
    served.write_bytes(b"other bytes")
    refused = workspace.run("build", "--feedstock", str(checkout), "--out", str(tmp_path / "x"))
    assert refused.code == 1
    assert refused.err.startswith("error: sha256 mismatch for demo-1.0.tar.gz")
    assert not (tmp_path / "x").exists()

    missing = workspace.run("build", "--feedstock", str(tmp_path / "nowhere"))
    assert missing.code == 1
    assert missing.err.startswith(f"error: {tmp_path / 'nowhere' / 'feedstock.yaml'}: cannot read")


@pytest.mark.slow
def test_tick_with_default_relative_state_dir(workspace: Workspace, tmp_path: Path) -> None:
    """The README's main job: `wheelstock tick` in a checkout, everything else defaulted."""
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    checkout = tmp_path / "checkout"
    (checkout / "registry").mkdir(parents=True)
    shutil.copytree(TEMPLATE, checkout / "feedstock-template")
    (checkout / "registry" / "demo.yaml").write_text(
        "project: demo\nmaintainers: [alice]\nconsent: https://example.org/demo/1\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "WHEELSTOCK_STATE_DIR"}
    # --upstream, not PIP_INDEX_URL: that would also steer the build backend's own install.
    script = Path(sys.executable).parent / "wheelstock"
    done = subprocess.run(
        [str(script), "tick", "--upstream", workspace.upstream.url],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"upstream: {workspace.upstream.url}" in done.stdout
    assert "created demo-feedstock at 1.0" in done.stdout and "1 built" in done.stdout
    assert (checkout / ".wheelstock" / "forge" / "repos" / "demo-feedstock.git").is_dir()
    assert (checkout / ".wheelstock" / "state.db").is_file()


def merge_a_change(workspace: Workspace, text: str) -> None:
    """A volunteer merges a PR that edits feedstock.yaml as given."""
    forge = LocalForge(workspace.state / "forge")
    branch = f"edit-{len(forge.pull_requests()) + 1}"
    forge.push_change("demo", branch, {"feedstock.yaml": text}, "edit")
    number = forge.open_pr("demo", branch, "edit", "").number
    assert workspace.run("pr", "merge", str(number)).code == 0


@pytest.mark.slow
def test_merged_feedstock_cannot_point_at_other_bytes(workspace: Workspace, tmp_path: Path) -> None:
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    workspace.enrol("demo", "alice")
    assert workspace.run("tick").code == 0
    forge = LocalForge(workspace.state / "forge")
    text = forge.read_file("demo", "feedstock.yaml")
    current = feedstock.parse(text)
    # A look-alike sdist hosted elsewhere, with its own (correct) hash pinned.
    evil = tmp_path / "evil" / "demo-1.0.tar.gz"
    evil.parent.mkdir()
    evil.write_bytes(b"look-alike")
    evil_sha = hashlib.sha256(b"look-alike").hexdigest()
    merge_a_change(
        workspace,
        text.replace(current.source.sha256, evil_sha).replace(
            current.source.url, "http://127.0.0.1:1/mirror/demo-1.0.tar.gz"
        ),
    )
    result = workspace.run("tick")
    assert result.code == 1
    assert (
        f"build of demo 1.0 failed: demo-1.0.tar.gz: the feedstock pins sha256 {evil_sha}, "
        f"upstream publishes {current.source.sha256}" in result.out
    )
    # A filename upstream never published is refused the same way.
    merge_a_change(workspace, text.replace("demo-1.0.tar.gz", "demo-1.0.zip"))
    assert "failed: upstream does not serve demo-1.0.zip" in workspace.run("tick").out
    assert "demo 1.0  staged" in workspace.run("review", "list").out  # only the first build


@pytest.mark.slow
def test_a_published_version_is_not_rebuilt(workspace: Workspace, tmp_path: Path) -> None:
    workspace.upstream.add_file("demo", fixture_sdist(tmp_path, "demo", "1.0"))
    workspace.enrol("demo", "alice")
    assert workspace.run("tick").code == 0
    assert workspace.run("review", "approve", "demo", "1.0", "--as", "alice").code == 0
    forge = LocalForge(workspace.state / "forge")
    merge_a_change(workspace, forge.read_file("demo", "feedstock.yaml") + "# a comment\n")
    result = workspace.run("tick")
    assert result.code == 0
    assert "demo 1.0 is already published;" in result.out and "0 built" in result.out
    assert "0 built" in workspace.run("tick").out
