"""The sandbox from outside: hostile builds leave no file, no connection, no secret behind."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_builder import IN_TREE_PYPROJECT, file_member, write_tar

from bot.build.sandbox import (
    ResourceLimits,
    Sandbox,
    SandboxUnavailable,
    find_sandbox,
    limited,
    pids_cgroup,
)
from bot.builder import build_wheel

SECRET = "operator-secret-4f1d"


class Listener:
    """A TCP listener on the host's 127.0.0.1 that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    running = Listener()
    yield running
    running.close()


# Every attempt is made and its outcome written into the wheel's module, so the test also sees
# from the inside what failed; the host-side checks are what count.
HOSTILE_SETUP = """\
import os, socket
from setuptools import setup

report = []
def attempt(what, action):
    try:
        action()
        report.append(what + ": done")
    except Exception as exc:
        report.append(what + ": " + type(exc).__name__)

def write_outside():
    with open({outside!r}, "w") as f:
        f.write("escaped")
def connect():
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
def read_state():
    report.append("state: " + open({state_file!r}).read())
def read_home():
    report.append("home: " + open({home_file!r}).read())
def read_root():
    report.append("root: " + repr(os.listdir("/root")))

for what, action in [("write", write_outside), ("connect", connect), ("state", read_state),
                     ("home", read_home), ("root", read_root)]:
    attempt(what, action)
with open("hostile.py", "w") as f:
    f.write("REPORT = %r\\n" % report)
setup(name="hostile", version="1.0", py_modules=["hostile"])
"""


def _hostile_sdist(tmp_path: Path, setup_py: str) -> Path:
    return write_tar(
        tmp_path / "hostile-1.0.tar.gz",
        [
            file_member("hostile-1.0/setup.py", setup_py),
            file_member(
                "hostile-1.0/pyproject.toml",
                '[build-system]\nrequires = ["setuptools"]\n'
                'build-backend = "setuptools.build_meta"\n',
            ),
        ],
    )


@pytest.mark.slow
def test_setup_py_cannot_write_outside_connect_or_read_secrets(
    box: Sandbox, tmp_path: Path, listener: Listener, visible_dir: Path
) -> None:
    state = visible_dir / "state"
    state.mkdir()
    (state / "state.db").write_text(SECRET)
    home = visible_dir / "home"
    home.mkdir()
    (home / ".pypirc").write_text(SECRET)
    outside = visible_dir / "escaped.txt"
    setup_py = HOSTILE_SETUP.format(
        outside=str(outside),
        port=listener.port,
        state_file=str(state / "state.db"),
        home_file=str(home / ".pypirc"),
    )
    sandbox = Sandbox(box.bwrap, box.version, box.limits, (str(state), str(home)))
    out = tmp_path / "out"
    result = build_wheel(
        _hostile_sdist(tmp_path, setup_py),
        out,
        project="hostile",
        version="1.0",
        sandbox=sandbox,
        temp_root=tmp_path,
    )
    assert result.ok, result.log
    # Host side: no file outside the build tree, no connection on the host's loopback.
    assert not outside.exists()
    assert listener.accepted == 0
    # And nothing of the hidden places reached the wheel; from inside, each attempt failed.
    with zipfile.ZipFile(result.wheels[0]) as zf:
        report = zf.read("hostile.py").decode()
    assert SECRET not in report
    for attempt in ("write", "connect", "state", "home"):
        assert f"{attempt}: done" not in report, report
    # /root is empty but for what the interpreters need (pyenv keeps them there).
    shown = report.split("root: ")[1].split("]")[0] + "]"
    needed = {
        Path(p).relative_to("/root").parts[0]
        for p in (sys.base_prefix, sys.prefix)
        if Path(p).is_relative_to("/root") and p != "/root"
    }
    assert set(ast.literal_eval(shown.strip("\"'"))) <= needed, report
    assert result.sandbox["network"] == "none"


def _in_tree_sdist(tmp_path: Path, backend: str) -> Path:
    return write_tar(
        tmp_path / "demo-1.0.tar.gz",
        [
            file_member("demo-1.0/pyproject.toml", IN_TREE_PYPROJECT),
            file_member("demo-1.0/stub_backend.py", backend),
        ],
    )


FORK_BOMB = """\
import os, time
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    children = 0
    try:
        while True:
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
    except OSError as exc:
        raise RuntimeError("fork refused after %d children: %s" % (children, exc))
"""


def _contained(
    box: Sandbox, tmp_path: Path, backend: str, limits: ResourceLimits, pattern: str
) -> int:
    """Build with a hostile backend under ``limits``; the count its refusal message gives."""
    result = build_wheel(
        _in_tree_sdist(tmp_path, backend),
        tmp_path / "out",
        project="demo",
        version="1.0",
        sandbox=Sandbox(box.bwrap, box.version, limits),
        temp_root=tmp_path,
        timeout=120,
    )
    assert not result.ok
    found = re.search(pattern, result.log)
    assert found is not None, result.log
    return int(found.group(1))


def test_endless_forking_is_stopped(box: Sandbox, tmp_path: Path) -> None:
    limits = ResourceLimits(processes=64)
    assert _contained(box, tmp_path, FORK_BOMB, limits, r"fork refused after (\d+) children") < 64


MEMORY_HOG = """\
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    hoard = []
    try:
        while True:
            hoard.append(bytearray(64 << 20))
    except MemoryError:
        raise RuntimeError("allocation refused after %d MiB" % (64 * len(hoard)))
"""


def test_unbounded_allocation_is_refused(box: Sandbox, tmp_path: Path) -> None:
    limits = ResourceLimits(memory_bytes=1 << 30)
    mib = _contained(box, tmp_path, MEMORY_HOG, limits, r"allocation refused after (\d+) MiB")
    assert mib < 1024


NETWORK_BACKEND = """\
import urllib.request
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    urllib.request.urlopen("http://localhost.invalid-wheelstock-test:9/", timeout=5)
"""


def test_hook_that_needs_the_network_fails_with_a_clear_reason(
    box: Sandbox, tmp_path: Path
) -> None:
    result = build_wheel(
        _in_tree_sdist(tmp_path, NETWORK_BACKEND),
        tmp_path / "out",
        project="demo",
        version="1.0",
        sandbox=box,
        temp_root=tmp_path,
    )
    assert not result.ok
    assert result.reason is not None
    assert "tried to use the network" in result.reason, result.log


def test_missing_bwrap_refuses_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as info:
        find_sandbox(path=str(tmp_path))
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install bubblewrap" in message and "--unsafe-no-sandbox" in message


def test_bwrap_that_cannot_make_namespaces_refuses(tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="cannot make a sandbox here"):
        find_sandbox(path=str(tmp_path))


def test_unsafe_sandbox_is_bare_but_limited(tmp_path: Path) -> None:
    bare = find_sandbox(unsafe=True, path=str(tmp_path))
    assert not bare.isolated
    assert bare.prefix(writable=[str(tmp_path)]) == []
    assert bare.describe()["network"] == "host"
    # The launcher still applies the file size limit to what it runs.
    limits = ResourceLimits(file_bytes=1000)
    script = f"open({str(tmp_path / 'big')!r}, 'wb').write(b'x' * 5000)"
    with pids_cgroup(limits.processes) as cgroup:
        subprocess.run(limited([sys.executable, "-c", script], limits, cgroup), check=False)
    # The kernel stops the file at the limit (Python ignores SIGXFSZ, so the write is cut).
    assert (tmp_path / "big").stat().st_size == 1000


@pytest.mark.parametrize("launcher", ["prlimit", "python"])
def test_both_launchers_apply_every_limit_and_join_the_cgroup(
    tmp_path: Path, launcher: str
) -> None:
    tool = shutil.which("prlimit") if launcher == "prlimit" else ""
    if tool is None:
        pytest.skip("util-linux prlimit is not installed")
    limits = ResourceLimits(cpu_seconds=77, memory_bytes=3 << 30, processes=99, file_bytes=12345)
    script = textwrap.dedent("""\
        import json, resource
        names = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC")
        limits = {n: resource.getrlimit(getattr(resource, n))[0] for n in names}
        print(json.dumps({"limits": limits, "cgroup": open("/proc/self/cgroup").read()}))
        """)
    with pids_cgroup(limits.processes) as cgroup:
        argv = limited([sys.executable, "-I", "-c", script], limits, cgroup, prlimit=tool)
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
    seen = json.loads(done.stdout)
    assert seen["limits"]["RLIMIT_CPU"] == 77
    assert seen["limits"]["RLIMIT_AS"] == 3 << 30
    assert seen["limits"]["RLIMIT_FSIZE"] == 12345
    if cgroup is not None:
        assert cgroup.name in seen["cgroup"]
    if cgroup is None or os.geteuid() != 0:
        assert seen["limits"]["RLIMIT_NPROC"] == 99


def test_sandbox_sees_the_host_read_only(box: Sandbox, tmp_path: Path, visible_dir: Path) -> None:
    target = visible_dir / "host-file"
    target.write_text("original")
    writable = tmp_path / "tree"
    writable.mkdir()
    script = textwrap.dedent(f"""\
        import os
        for path in ({str(target)!r}, "/etc/wheelstock-test"):
            try:
                open(path, "w").write("changed")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, exc.errno)
        open({str(writable / "ok")!r}, "w").write("inside")
        print("refused" if not os.path.exists({str(visible_dir)!r}) else "visible", os.getpid())
        """)
    prefix = box.prefix(writable=[str(writable)], readable=[sys.base_prefix, sys.prefix])
    argv = [*prefix, "--", sys.executable, "-I", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "wrote" not in done.stdout, done.stdout
    assert target.read_text() == "original"
    assert not Path("/etc/wheelstock-test").exists()
    assert (writable / "ok").read_text() == "inside"
    # A fresh /proc in its own pid namespace: the sandboxed process is pid 1 or close to it.
    assert int(done.stdout.split()[-1]) < 10


def test_extraction_limits_reach_build_wheel(tmp_path: Path, box: Sandbox) -> None:
    from bot.build.extract import Limits

    sdist = _in_tree_sdist(tmp_path, FORK_BOMB)
    work = tmp_path / "work"
    work.mkdir()
    result = build_wheel(
        sdist,
        tmp_path / "out",
        project="demo",
        version="1.0",
        sandbox=box,
        temp_root=work,
        limits=Limits(max_members=1),
    )
    assert not result.ok
    assert result.reason is not None and "members" in result.reason
    assert list((tmp_path / "work").iterdir()) == []


def test_tar_fixture_is_real(tmp_path: Path) -> None:
    # The helpers above write real archives, not stand-ins.
    sdist = _in_tree_sdist(tmp_path, FORK_BOMB)
    with tarfile.open(sdist) as tar:
        assert sorted(tar.getnames()) == ["demo-1.0/pyproject.toml", "demo-1.0/stub_backend.py"]
