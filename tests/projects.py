"""Small real projects and their sdists, made in a test's tmp_path."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

FLIT_PYPROJECT = """\
[build-system]
requires = {build_requires}
build-backend = "flit_core.buildapi"

[project]
name = "{name}"
version = "{version}"
description = "A wheelstock test fixture."
requires-python = ">=3.8"
dependencies = {dependencies}
"""


def make_project(
    root: Path,
    name: str,
    version: str,
    *,
    dependencies: tuple[str, ...] = (),
    build_requires: tuple[str, ...] = (),
    license: str | None = None,
    urls: tuple[tuple[str, str], ...] = (),
) -> Path:
    """A flit project whose module records its own version, so tests can see which one ran.

    `license` is a PEP 639 expression (License-Expression); `urls` become Project-URL fields.
    """
    module = name.replace("-", "_")
    project = root / f"{name}-{version}"
    (project / module).mkdir(parents=True)
    text = FLIT_PYPROJECT.format(
        name=name,
        version=version,
        dependencies=json.dumps(list(dependencies)),
        build_requires=json.dumps(["flit_core>=3.9", *build_requires]),
    )
    if license is not None:
        # [project] is the last table in FLIT_PYPROJECT, so the key lands in it.
        text += f"license = {json.dumps(license)}\n"
    if urls:
        text += "\n[project.urls]\n"
        text += "".join(f"{json.dumps(label)} = {json.dumps(url)}\n" for label, url in urls)
    (project / "pyproject.toml").write_text(text)
    (project / module / "__init__.py").write_text(
        f'"""Fixture {name}."""\n\n__version__ = "{version}"\n'
    )
    return project


def _build(project: Path, out: Path, kind: str) -> None:
    """Run the project's own backend (flit_core from the test environment), no isolation."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            f"--{kind}",
            "--no-isolation",
            "--skip-dependency-check",
            "--outdir",
            str(out),
            project,
        ],
        check=True,
        capture_output=True,
    )


def make_sdist(project: Path, out: Path) -> Path:
    """Build the project's sdist, as its maintainers would upload it."""
    _build(project, out, "sdist")
    (sdist,) = out.glob("*.tar.gz")  # callers give each sdist its own directory
    return sdist


def fixture_sdist(tmp: Path, name: str, version: str) -> Path:
    return make_sdist(make_project(tmp / "src", name, version), tmp / "dist" / version)


def make_wheel(project: Path, out: Path) -> Path:
    """Build the project's wheel without isolation (fast: flit_core is in the test env)."""
    _build(project, out, "wheel")
    (wheel,) = out.glob("*.whl")  # callers give each wheel its own directory
    return wheel


def assemble_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    requires_python: str | None = None,
    tag: str = "py3-none-any",
    body: str = "VALUE = 1\n",
    metadata_name: str | None = None,
) -> Path:
    """Assemble a valid wheel by hand (PEP 427): module, METADATA, WHEEL and a hashed RECORD."""
    dist = re.sub(r"[-_.]+", "_", name).lower()
    info = f"{dist}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {metadata_name or name}\nVersion: {version}\n"
    if requires_python is not None:
        metadata += f"Requires-Python: {requires_python}\n"
    members = {
        f"{dist}/__init__.py": body.encode(),
        f"{info}/METADATA": metadata.encode(),
        f"{info}/WHEEL": (
            f"Wheel-Version: 1.0\nGenerator: wheelstock-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"
        ).encode(),
    }
    record = ""
    for member, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{member},sha256={digest},{len(data)}\n"
    members[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{dist}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in members.items():
            # A fixed timestamp makes equal inputs produce byte-identical wheels.
            archive.writestr(zipfile.ZipInfo(member, (2024, 1, 1, 0, 0, 0)), data)
    return path
