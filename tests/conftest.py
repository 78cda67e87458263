"""Shared fixtures: a wheelstock command line bound to one state dir, registry and upstream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.cli import main

from support import UpstreamServer

TEMPLATE = Path(__file__).resolve().parent.parent / "feedstock-template"


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
