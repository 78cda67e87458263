"""pip and uv through our superset page: what upstream has and we did not build still resolves."""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot import index, serve

from projects import assemble_wheel, fixture_sdist
from support import UpstreamServer, clean_env

pytestmark = pytest.mark.slow


@dataclass
class Indexes:
    upstream: str
    ours: str
    tmp: Path



@pytest.fixture(scope="module")
def flit_core(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flit_core's wheel from the configured index, so the loopback upstream can build sdists."""
    into = tmp_path_factory.mktemp("flit")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary", ":all:", "--no-deps",
         "-d", str(into), "flit_core>=3.9,<4"],
        check=True,
    )  # fmt: skip
    (wheel,) = into.glob("flit_core-*.whl")
    return wheel


@pytest.fixture
def indexes(tmp_path: Path, flit_core: Path) -> Iterator[Indexes]:
    """Upstream: demo 1.0 and 1.1 sdists, a cp312 wheel of 1.1; ours: only a cp311 wheel of 1.1."""
    with UpstreamServer(tmp_path / "upstream") as upstream:
        upstream.add_file("flit-core", flit_core)
        upstream.add_file("demo", fixture_sdist(tmp_path / "s10", "demo", "1.0"))
        upstream.add_file("demo", fixture_sdist(tmp_path / "s11", "demo", "1.1"))
        cp312 = assemble_wheel(
            tmp_path / "w312", "demo", "1.1", tag="cp312-cp312-manylinux_2_17_x86_64",
            body="BUILT = 'upstream'\n",
        )  # fmt: skip
        upstream.add_file("demo", cp312)
        root = tmp_path / "index"
        ours = assemble_wheel(
            tmp_path / "w311", "demo", "1.1", tag="cp311-cp311-manylinux_2_17_x86_64",
            body="BUILT = 'wheelstock'\n",
        )  # fmt: skip
        index.publish(root, "demo", [ours])
        index.refresh(root, {"demo": upstream.dist_files("demo")})
        server = serve.make_server(root, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            yield Indexes(upstream.url, f"http://127.0.0.1:{port}/simple/", tmp_path)
        finally:
            server.shutdown()
            server.server_close()


def uv() -> str:
    return shutil.which("uv") or str(Path(sys.executable).parent / "uv")


def python_312() -> str | None:
    found = sorted(glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12"))
    for candidate in [shutil.which("python3.12"), *found]:
        if candidate and subprocess.run([candidate, "-c", ""], capture_output=True).returncode == 0:
            return candidate
    return None


def built(venv: Path) -> str:
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import demo; print(getattr(demo, 'BUILT', 'sdist'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def uv_install(
    ix: Indexes, python: str, *args: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    venv = ix.tmp / f"venv-{len(list(ix.tmp.glob('venv-*')))}"
    env = clean_env()
    subprocess.run([uv(), "venv", "-q", "--python", python, str(venv)], check=True, env=env)
    done = subprocess.run(
        [uv(), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-cache",
         "--index-url", ix.upstream, "--extra-index-url", ix.ours, *args],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    return done, venv


def test_uv_takes_our_wheel_for_our_python(indexes: Indexes) -> None:
    done, venv = uv_install(indexes, sys.executable, "demo==1.1")
    assert done.returncode == 0, done.stderr
    assert built(venv) == "wheelstock"


def test_uv_builds_the_upstream_sdist_with_no_binary(indexes: Indexes) -> None:
    done, venv = uv_install(indexes, sys.executable, "--no-binary", "demo", "demo==1.1")
    assert done.returncode == 0, done.stderr
    assert built(venv) == "sdist"


def test_uv_finds_upstreams_wheel_for_a_python_we_built_nothing_for(indexes: Indexes) -> None:
    other = python_312()
    if other is None:
        pytest.skip("no Python 3.12 on this machine")
    done, venv = uv_install(indexes, other, "--only-binary", ":all:", "demo==1.1")
    assert done.returncode == 0, done.stderr
    assert built(venv) == "upstream"


@pytest.mark.parametrize("pip", ["machine", "newest"])
def test_pip_sees_the_same_through_our_page_alone(indexes: Indexes, pip: str) -> None:
    # Only our index: what pip resolves must come from the superset page, upstream's URLs
    # included (1.0 exists only upstream, as an sdist built with flit_core from upstream).
    venv = indexes.tmp / f"venv-pip-{pip}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = clean_env()
    if pip == "newest":
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True
        )  # the configured index, as an operator's machine would
    for spec, expected in (("demo==1.1", "wheelstock"), ("demo==1.0", "sdist")):
        done = subprocess.run(
            [python, "-m", "pip", "install", "--no-cache-dir", "--index-url", indexes.ours,
             "--extra-index-url", indexes.upstream, spec],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert built(venv) == expected
