"""Attacks on the sandbox: each test is a hostile sdist and asserts the safe outcome.

A test here fails while the hole it names is open. The hostile code runs where the project's
code runs for real: an in-tree PEP 517 backend (build_wheel, get_requires_for_build_wheel), a
build requirement pip builds from an sdist, or a file of the built wheel (.pth) that lands in
the import check's venv.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_builder import file_member, write_tar

from bot.build.release import build_release
from bot.build.sandbox import ResourceLimits, Sandbox
from bot.build.targets import host_interpreter
from bot.builder import BuildResult, build_wheel

SECRET = "operator-secret-9c2e"

# The backend: runs attack(report) inside build_wheel and get_requires(report) inside
# get_requires_for_build_wheel, then writes a valid pure wheel (RECORD with hashes) whose
# demo/__init__.py holds the report, so a test also sees from the inside what happened.
BACKEND_BODY = """
import base64, hashlib, os, zipfile

def _record_line(name, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (name, digest, len(data))

def get_requires_for_build_wheel(config_settings=None):
    return get_requires([])

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    report = []
    try:
        attack(report)
    except BaseException as exc:
        report.append("attack raised " + repr(exc))
    dist = "demo-1.0"
    meta = "Metadata-Version: 2.1\\nName: demo\\nVersion: 1.0\\n" + "".join(
        "Requires-Dist: %s\\n" % r for r in CONFIG["requires_dist"])
    files = {"demo/__init__.py": ("REPORT = %r\\n" % (report,)).encode()}
    for name, text in CONFIG["files"].items():
        files[name] = base64.b64decode(text[4:]) if text.startswith("b64:") else text.encode()
    files[dist + ".dist-info/METADATA"] = meta.encode()
    files[dist + ".dist-info/WHEEL"] = (b"Wheel-Version: 1.0\\nGenerator: stub\\n"
                                        b"Root-Is-Purelib: true\\nTag: py3-none-any\\n")
    filename = dist + "-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
            record.append(_record_line(name, data))
        record.append(dist + ".dist-info/RECORD,,")
        zf.writestr(dist + ".dist-info/RECORD", "\\n".join(record) + "\\n")
    return filename
"""


def backend(
    attack: str = "pass",
    *,
    get_requires: str = "return []",
    files: Mapping[str, str] | None = None,
    requires_dist: Sequence[str] = (),
    **config: Any,
) -> str:
    settings = {"files": dict(files or {}), "requires_dist": list(requires_dist), **config}
    return (
        f"CONFIG = {settings!r}\n"
        + BACKEND_BODY
        + "\ndef attack(report):\n"
        + textwrap.indent(textwrap.dedent(attack), "    ")
        + "\n\ndef get_requires(report):\n"
        + textwrap.indent(textwrap.dedent(get_requires), "    ")
        + "\n"
    )


def pyproject(requires: Sequence[str] = ()) -> str:
    return (
        "[build-system]\n"
        f"requires = {json.dumps(list(requires))}\n"
        'build-backend = "stub_backend"\n'
        'backend-path = ["."]\n'
    )


def sdist(tmp_path: Path, backend_code: str, requires: Sequence[str] = ()) -> Path:
    return write_tar(
        tmp_path / "demo-1.0.tar.gz",
        [
            file_member("demo-1.0/pyproject.toml", pyproject(requires)),
            file_member("demo-1.0/stub_backend.py", backend_code),
        ],
    )


def build(
    tmp_path: Path,
    sandbox: Sandbox,
    backend_code: str,
    *,
    requires: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> BuildResult:
    return build_wheel(
        sdist(tmp_path, backend_code, requires),
        tmp_path / "out",
        project="demo",
        version="1.0",
        sandbox=sandbox,
        temp_root=tmp_path,
        timeout=60,
        environ={"PATH": os.environ["PATH"]} if environ is None else environ,
    )


def report_of(result: BuildResult) -> str:
    """What the backend saw from the inside (demo/__init__.py of the wheel), or the log."""
    if not result.wheels:
        return result.log
    with zipfile.ZipFile(result.wheels[0]) as zf:
        return zf.read("demo/__init__.py").decode()


def processes_named(tag: str) -> list[int]:
    """Host processes whose command line holds ``tag``."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                if tag.encode() in f.read():
                    found.append(int(cmdline.split("/")[2]))
        except OSError:
            continue
    return [p for p in found if p != os.getpid()]


@pytest.fixture
def tag() -> Iterator[str]:
    """A name for processes a hostile build starts; any left over are killed afterwards."""
    name = f"wheelstock-review-{uuid.uuid4().hex[:8]}"
    yield name
    for pid in processes_named(name):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# --- 1. Capabilities: bwrap run by root leaves the sandbox all capabilities in its user ns ----

UMOUNT_HIDDEN = """\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
for target in (CONFIG["state"], "/etc/shadow"):
    report.append("umount %s: %d" % (target, libc.umount2(target.encode(), 2)))  # MNT_DETACH
try:
    report.append("state: " + open(CONFIG["state"] + "/state.db").read())
except OSError as exc:
    report.append("state: " + type(exc).__name__)
"""


def test_hook_cannot_unmount_the_tmpfs_over_hidden_state(
    box: Sandbox, tmp_path: Path, visible_dir: Path
) -> None:
    state = visible_dir / "state"
    state.mkdir()
    (state / "state.db").write_text(SECRET)
    hiding = Sandbox(box.bwrap, box.version, box.limits, (str(state),))
    result = build(tmp_path, hiding, backend(UMOUNT_HIDDEN, state=str(state)))
    assert result.ok, result.log
    report = report_of(result)
    assert SECRET not in report, report


REMOUNT_RW = """\
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND = 32, 4096
remounted = 0
for line in open("/proc/self/mounts").read().splitlines():
    # Clears MS_RDONLY on the sandbox's read-only bind of the host.
    target = line.split()[1].encode()
    remounted += libc.mount(b"none", target, None, MS_REMOUNT | MS_BIND, None) == 0
report.append("remounted %d" % remounted)
try:
    with open(CONFIG["outside"], "w") as f:
        f.write("escaped")
    report.append("wrote outside")
except OSError as exc:
    report.append("write: " + type(exc).__name__)
"""


def test_hook_cannot_remount_the_host_read_write(
    box: Sandbox, tmp_path: Path, visible_dir: Path
) -> None:
    outside = visible_dir / "escaped.txt"
    result = build(tmp_path, box, backend(REMOUNT_RW, outside=str(outside)))
    assert not outside.exists(), report_of(result)


# --- 2. Build requirements: pip builds sdists outside the sandbox, with network ---------------

EVIL_HELPER_BACKEND = """\
import os, subprocess
with open({marker!r}, "w") as f:
    f.write("ran on the host, outside the sandbox")
subprocess.Popen(["sh", "-c", "sleep 20", {tag!r}], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    raise RuntimeError("stop here")

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("stop here")
"""


def evil_helper_sdist(directory: Path, marker: Path, tag: str) -> Path:
    """An sdist of "evilhelper" on the (local) index; its backend marks that it ran."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_tar(
        directory / "evilhelper-1.0.tar.gz",
        [
            file_member(
                "evilhelper-1.0/pyproject.toml",
                '[build-system]\nrequires = []\nbuild-backend = "eh_backend"\n'
                'backend-path = ["."]\n',
            ),
            file_member(
                "evilhelper-1.0/eh_backend.py",
                EVIL_HELPER_BACKEND.format(marker=str(marker), tag=tag),
            ),
        ],
    )


def test_build_requirement_that_is_an_sdist_is_not_built_on_the_host(
    box: Sandbox, tmp_path: Path, visible_dir: Path, tag: str
) -> None:
    # The configured index (here a local find-links directory, as PIP_* configuration passes)
    # serves "evilhelper" only as an sdist, as anyone can upload one to PyPI.
    marker = visible_dir / "helper-ran.txt"
    links = evil_helper_sdist(tmp_path / "index", marker, tag).parent
    environ = {"PATH": os.environ["PATH"], "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links)}
    result = build(tmp_path, box, backend(), requires=["evilhelper"], environ=environ)
    leftover = processes_named(tag)
    assert not marker.exists(), result.log
    assert leftover == [], "a process of the build outlived it"


def test_host_side_leftovers_die_with_the_build_without_a_pids_cgroup(
    box: Sandbox,
    tmp_path: Path,
    visible_dir: Path,
    tag: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Where no pids cgroup can be made (cgroup v2 without a delegated pids controller, a
    # non-root bot), nothing kills what the driver's tree left behind outside bwrap: pip's
    # build of an sdist requirement (hole above), a hijacked interpreter. The session kill runs
    # only on timeout, and a setsid() child leaves the group anyway.
    import bot.builder

    @contextlib.contextmanager
    def no_cgroup(limit: int) -> Iterator[None]:
        yield None

    monkeypatch.setattr(bot.builder, "pids_cgroup", no_cgroup)
    marker = visible_dir / "helper-ran.txt"
    links = evil_helper_sdist(tmp_path / "index", marker, tag).parent
    environ = {"PATH": os.environ["PATH"], "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links)}
    result = build(tmp_path, box, backend(), requires=["evilhelper"], environ=environ)
    time.sleep(0.2)
    assert processes_named(tag) == [], result.log


PLANT_PIP_CONF = """\
home = os.environ["HOME"]
os.makedirs(os.path.join(home, ".config", "pip"), exist_ok=True)
with open(os.path.join(home, ".config", "pip", "pip.conf"), "w") as f:
    f.write("[global]\\nno-index = true\\nlog = %s\\n" % CONFIG["outside"])
return ["wheelstock-review-not-on-any-index"]
"""


def test_hook_cannot_configure_the_host_installer_through_home(
    box: Sandbox, tmp_path: Path, visible_dir: Path
) -> None:
    # HOME (and TMPDIR) are the hooks' writable home and also the trusted driver's: the pip
    # that installs the backend's requirements, outside the sandbox, reads a pip.conf the
    # get_requires_for_build_wheel hook left there (log=, find-links=, index-url=, no-binary=...).
    outside = visible_dir / "pip-wrote-this.log"
    code = backend(get_requires=PLANT_PIP_CONF, outside=str(outside))
    result = build(tmp_path, box, code)
    assert not outside.exists(), result.log


# --- 3. The import check: pip --python runs the venv's interpreter, with the wheel's .pth ------

PTH = "import os, subprocess; exec({code!r})\n"
PTH_CODE = """\
try:
    with open({marker!r}, "w") as f:
        f.write("ran on the host, outside the sandbox")
except OSError:
    pass
else:
    subprocess.Popen(["sh", "-c", "sleep 20", {tag!r}], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
"""


def test_wheel_pth_does_not_run_on_the_host_during_the_import_check(
    box: Sandbox, tmp_path: Path, visible_dir: Path, tag: str
) -> None:
    marker = visible_dir / "pth-ran.txt"
    pth = PTH.format(code=PTH_CODE.format(marker=str(marker), tag=tag))
    code = backend(files={"zz_review.pth": pth}, requires_dist=["wheelstock-review-dep"])
    release = build_release(
        sdist(tmp_path, code),
        tmp_path / "staged",
        project="demo",
        version="1.0",
        pythons=[host_interpreter()],
        sandbox=box,
        temp_root=tmp_path,
        timeout=60,
        environ={"PATH": os.environ["PATH"], "PIP_NO_INDEX": "1"},
    )
    leftover = processes_named(tag)
    assert not marker.exists(), release.log
    assert leftover == [], "a process started by the import check outlived it"


# --- 4. Secrets that are not under a hidden directory -----------------------------------------

READ_FILE = """\
try:
    report.append("read: " + open(CONFIG["path"]).read())
except OSError as exc:
    report.append("read: " + type(exc).__name__)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="only a build run by root can read root's files")
def test_hook_cannot_read_files_only_root_may_read(
    box: Sandbox, tmp_path: Path, visible_dir: Path
) -> None:
    # /etc/ssh/ssh_host_*_key, /etc/letsencrypt/.../privkey.pem, a signing key kept in /etc or
    # /opt: mode 0600, owner root. The sandbox's uid 0 is the host's root, so it may read them.
    key = visible_dir / "ssh_host_ed25519_key"
    key.write_text(SECRET)
    key.chmod(0o600)
    result = build(tmp_path, box, backend(READ_FILE, path=str(key)))
    assert result.ok, result.log
    assert SECRET not in report_of(result)


TOKEN = "cstoken0a1b2c3d4e5f"


def test_index_token_in_a_url_path_does_not_reach_the_hooks(box: Sandbox, tmp_path: Path) -> None:
    # Cloudsmith-style entitlement tokens live in the URL's path, not its userinfo; hooks have no
    # network, so they need no index configuration at all, but what they see can go into the
    # (published) wheel.
    environ = {
        "PATH": os.environ["PATH"],
        "PIP_INDEX_URL": f"https://dl.cloudsmith.io/{TOKEN}/acme/private/python/simple/",
    }
    result = build(tmp_path, box, backend("report.append(repr(dict(os.environ)))"), environ=environ)
    assert result.ok, result.log
    assert TOKEN not in report_of(result)


# --- 5. Unix sockets outside the hidden directories -------------------------------------------

CONNECT_UNIX = """\
import socket
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(CONFIG["socket"])
    s.sendall(b"hello from the sandbox")
    report.append("connected")
except OSError as exc:
    report.append("connect: " + type(exc).__name__)
finally:
    s.close()
"""


def test_hook_cannot_connect_to_a_unix_socket_outside_the_hidden_dirs(
    box: Sandbox, tmp_path: Path, visible_dir: Path
) -> None:
    # A network namespace does not cut path-bound Unix sockets, and connect() works through a
    # read-only mount. Real ones outside HIDDEN_DIRS: /var/snap/lxd/common/lxd/unix.socket
    # (root on the host), /var/spool/postfix/public/*, sockets of services under /opt or /srv...
    path = visible_dir / "service.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(0.2)
    accepted: list[bool] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            accepted.append(True)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        result = build(tmp_path, box, backend(CONNECT_UNIX, socket=str(path)))
    finally:
        stop.set()
        thread.join()
        server.close()
    assert accepted == [], report_of(result)


# --- 6. Resource limits -----------------------------------------------------------------------

FILL_SHM = """\
chunk = b"x" * (32 << 20)
written = 0
try:
    for i in range(32):
        with open("/dev/shm/fill-%d" % i, "wb") as f:
            f.write(chunk)
        written += 32
except OSError as exc:
    report.append("refused: " + type(exc).__name__)
report.append("in RAM: %d MiB" % written)
"""


def test_sandbox_tmpfs_cannot_hold_more_than_the_memory_limit(box: Sandbox, tmp_path: Path) -> None:
    # /tmp, /dev/shm and every hidden directory are tmpfs mounts without a size: their pages are
    # RAM that RLIMIT_AS never counts, up to half the host's memory each.
    limits = ResourceLimits(memory_bytes=384 << 20, file_bytes=64 << 20)
    result = build(tmp_path, Sandbox(box.bwrap, box.version, limits), backend(FILL_SHM))
    assert result.ok, result.log
    report = report_of(result)
    mib = int(report.split("in RAM: ")[1].split(" MiB")[0])
    assert mib <= 384, report


# --- 7. Held: what the hooks start dies with them ---------------------------------------------

DAEMONIZE = """\
import subprocess
subprocess.Popen(["sh", "-c", "sleep 20", CONFIG["tag"]], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sh", ["sh", "-c", "sleep 20", CONFIG["tag"]])
    os._exit(0)
report.append("daemonized")
"""


def test_daemon_started_by_a_hook_does_not_outlive_the_build(
    box: Sandbox, tmp_path: Path, tag: str
) -> None:
    result = build(tmp_path, box, backend(DAEMONIZE, tag=tag))
    assert result.ok, result.log
    assert "daemonized" in report_of(result)
    time.sleep(0.2)
    assert processes_named(tag) == []


TOUCH_CONTROL = """\
work = os.path.dirname(os.path.dirname(os.getcwd()))
# (work/ itself, outside the bound subdirectories, is the sandbox's own tmpfs when work is
# under /tmp; what is written there never reaches the host.)
for name in ("env/bin/python", "env/wheelstock-review", "control/result.json",
             "control/reports/zz.json"):
    path = os.path.join(work, name)
    try:
        with open(path, "w") as f:
            f.write("{}")
        report.append("wrote " + name)
    except OSError as exc:
        report.append("refused %s: %s" % (name, type(exc).__name__))
"""


def test_hook_cannot_write_the_frontends_env_result_or_reports(
    box: Sandbox, tmp_path: Path
) -> None:
    # Held (regression): only src, out, tmp and home are writable.
    result = build(tmp_path, box, backend(TOUCH_CONTROL))
    assert result.ok, result.log
    report = report_of(result)
    assert "wrote" not in report, report


# --- 8. What a wheel claims: "pure" with native code ------------------------------------------


def _some_elf() -> bytes:
    import _json  # an extension module: a real ELF shared object

    path = getattr(_json, "__file__", None)
    if path is None:
        pytest.skip("_json is built into this interpreter")
    return Path(path).read_bytes()


def test_pure_tagged_wheel_with_an_elf_inside_is_refused(box: Sandbox, tmp_path: Path) -> None:
    # py3-none-any skips auditwheel entirely; the ELF in it is never audited, yet the wheel
    # is staged as runnable everywhere.
    native = "b64:" + base64.b64encode(_some_elf()).decode()
    code = backend(files={"demo/_speedups.cpython-311-x86_64-linux-gnu.so": native})
    release = build_release(
        sdist(tmp_path, code),
        tmp_path / "staged",
        project="demo",
        version="1.0",
        pythons=[host_interpreter()],
        sandbox=box,
        temp_root=tmp_path,
        timeout=60,
        environ={"PATH": os.environ["PATH"]},
    )
    assert not release.ok, release.log
    assert not list((tmp_path / "staged").glob("*.whl"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
