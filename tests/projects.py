"""Small real projects and their sdists, made in a test's tmp_path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FLIT_PYPROJECT = """\
[build-system]
requires = ["flit_core>=3.9"]
build-backend = "flit_core.buildapi"

[project]
name = "{name}"
version = "{version}"
description = "A wheelstock test fixture."
requires-python = ">=3.8"
"""


def make_project(root: Path, name: str, version: str) -> Path:
    """A flit project whose module records its own version, so tests can see which one ran."""
    module = name.replace("-", "_")
    project = root / f"{name}-{version}"
    (project / module).mkdir(parents=True)
    (project / "pyproject.toml").write_text(FLIT_PYPROJECT.format(name=name, version=version))
    (project / module / "__init__.py").write_text(
        f'"""Fixture {name}."""\n\n__version__ = "{version}"\n'
    )
    return project


def make_sdist(project: Path, out: Path) -> Path:
    """Build the project's sdist with its own backend (flit_core from the test environment)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--sdist",
            "--no-isolation",
            "--outdir",
            str(out),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    (sdist,) = sorted(out.glob("*.tar.gz"), key=lambda p: p.stat().st_mtime)[-1:]
    return sdist


def fixture_sdist(tmp: Path, name: str, version: str) -> Path:
    return make_sdist(make_project(tmp / "src", name, version), tmp / "dist" / version)


def make_wheel(project: Path, out: Path) -> Path:
    """Build the project's wheel without isolation (fast: flit_core is in the test env)."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(project),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob(f"{project.name.rsplit('-', 1)[0]}-*.whl")
    return wheel
