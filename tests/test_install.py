"""wheelstock as an operator gets it: the built wheel in a fresh venv, a registry, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from projects import fixture_sdist
from support import UpstreamServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
NAME = "wsinstalled"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with wheelstock's wheel (not an editable install) and its dependencies."""
    tmp = tmp_path_factory.mktemp("installed")
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(dist), str(ROOT)],
        check=True,
    )
    (wheel,) = dist.glob("wheelstock-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], check=True
    )
    return venv


def test_installed_wheel_ships_the_whole_template(installed: Path) -> None:
    # Hidden files (.gitattributes, .github/) are part of the template and easy to lose.
    probe = "import bot.feedstock as f; print(f.default_template())"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(installed / "bin" / "python"), "-I", "-c", probe],
        cwd=installed,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    shipped = Path(done.stdout.strip())
    assert shipped.is_relative_to(installed), shipped  # not the checkout's copy
    source = ROOT / "feedstock-template"

    def files(root: Path) -> set[str]:
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}

    assert files(shipped) == files(source)
    for name in files(source):
        assert (shipped / name).read_bytes() == (source / name).read_bytes(), name


def test_tick_in_an_empty_directory_with_only_a_registry(installed: Path, tmp_path: Path) -> None:
    operator = tmp_path / "operator"
    (operator / "registry").mkdir(parents=True)
    (operator / "registry" / f"{NAME}.yaml").write_text(
        f"project: {NAME}\nmaintainers:\n  - alice\nconsent: https://example.org/{NAME}/1\n"
    )
    with UpstreamServer(tmp_path / "upstream") as upstream:
        upstream.add_file(NAME, fixture_sdist(tmp_path, NAME, "1.0"))
        unwanted = ("PYTHONPATH", "WHEELSTOCK_STATE_DIR")
        env = {k: v for k, v in os.environ.items() if k not in unwanted}
        env["PATH"] = f"{installed / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
        done = subprocess.run(
            [str(installed / "bin" / "wheelstock"), "tick", "--upstream", upstream.url],
            cwd=operator,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Traceback" not in output
    assert f"created {NAME}-feedstock at 1.0" in output
    assert f"built {NAME} 1.0" in output
    # Everything the tick made is under the working directory's default state dir.
    assert sorted(p.name for p in operator.iterdir()) == [".wheelstock", "registry"]
    assert list((operator / ".wheelstock" / "staging" / NAME).glob("*/*.whl"))
