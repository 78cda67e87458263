"""Shared fixtures: a wheelstock command line bound to one state dir, registry and upstream."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.build.sandbox import HIDDEN_DIRS, Sandbox, SandboxUnavailable, find_sandbox
from bot.cli import main

from support import UpstreamServer

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "feedstock-template"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Workspace:
    """One bot installation in tmp_path: state dir, registry, template, loopback upstream."""

    root: Path
    upstream: UpstreamServer
    capsys: pytest.CaptureFixture[str]

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    def enrol(self, project: str, *maintainers: str) -> Path:
        self.registry.mkdir(exist_ok=True)
        path = self.registry / f"{project}.yaml"
        handles = "".join(f"  - {m}\n" for m in maintainers)
        path.write_text(
            f"project: {project}\nmaintainers:\n{handles}consent: https://example.org/{project}/1\n"
        )
        return path

    def run(self, *args: str, upstream: str | None = None) -> Result:
        self.capsys.readouterr()
        code = main(
            [
                *args,
                "--state-dir",
                str(self.state),
                "--registry",
                str(self.registry),
                "--template",
                str(TEMPLATE),
                "--upstream",
                upstream or self.upstream.url,
            ]
        )
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Workspace]:
    with UpstreamServer(tmp_path / "upstream") as upstream:
        yield Workspace(tmp_path, upstream, capsys)


@pytest.fixture(params=["json", "html"])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UpstreamServer]:
    """A loopback upstream, once in each mode (PEP 691 JSON and PEP 503 HTML)."""
    with UpstreamServer(tmp_path / "upstream", mode=request.param) as running:
        yield running


@pytest.fixture(scope="module")
def box() -> Sandbox:
    try:
        return find_sandbox()
    except SandboxUnavailable as exc:  # CI installs bubblewrap; a developer may not have it
        pytest.skip(str(exc))


@pytest.fixture
def visible_dir() -> Iterator[Path]:
    """A directory the sandbox's read-only view of the host shows (unlike /tmp or /root)."""
    covered = ("/tmp", *HIDDEN_DIRS)
    for parent in (ROOT, Path("/var/cache"), Path("/opt")):
        if any(parent.is_relative_to(c) for c in covered) or not os.access(parent, os.W_OK):
            continue
        path = parent / f".wheelstock-sandbox-test-{uuid.uuid4().hex[:8]}"
        path.mkdir()
        yield path
        shutil.rmtree(path)
        return
    pytest.skip("no writable directory that the sandbox would show")
