"""Tests for bot.builder: real isolated builds, hostile sdists, timeouts, environment scrubbing."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bot import __version__
from bot.builder import DRIVER, BuildResult, build_wheel, run_in_own_session
from bot.errors import BuildError

SDIST_MTIME = 1_700_000_000


def make_flit_project(root: Path, name: str = "demo_pkg", version: str = "1.0") -> Path:
    """Write a minimal flit_core project under `root` and return its directory."""
    project = root / name
    project.mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(f"""\
            [build-system]
            requires = ["flit_core>=3.9,<4"]
            build-backend = "flit_core.buildapi"

            [project]
            name = "{name}"
            version = "{version}"
            description = "wheelstock test project"
            """)
    )
    (project / f"{name}.py").write_text('"""A test module."""\n')
    return project


def make_flit_sdist(root: Path, name: str = "demo_pkg", version: str = "1.0") -> Path:
    """Make a real sdist of a flit_core project with pypa/build (no isolation: no index needed)."""
    project = make_flit_project(root / "project", name, version)
    dist = root / "dist"
    # -x: the test environment's flit_core may be newer than the project's "<4"; the sdist is
    # only source, and the build under test installs the pinned range in its isolated env.
    cmd = [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-x", "--outdir", str(dist)]
    done = subprocess.run(cmd, cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (sdist,) = dist.glob("*.tar.gz")
    return sdist


# An in-tree backend (PEP 517 backend-path) with no requirements: a real isolated pypa/build run
# that needs no package index, writing a wheel whose filename and METADATA the test chooses.
STUB_BACKEND = """\
import os, zipfile

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    dist = "{dist}"
    filename = dist + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as zf:
        zf.writestr(dist + ".dist-info/METADATA",
                    "Metadata-Version: 2.1\\nName: {meta_name}\\nVersion: {meta_version}\\n")
        zf.writestr(dist + ".dist-info/WHEEL", "Wheel-Version: 1.0\\nGenerator: stub\\n"
                    "Root-Is-Purelib: true\\nTag: py3-none-any\\n")
        zf.writestr(dist + ".dist-info/RECORD", "")
    return filename
"""

FAILING_BACKEND = """\
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("boom: this backend refuses to build")
"""

IN_TREE_PYPROJECT = """\
[build-system]
requires = []
build-backend = "stub_backend"
backend-path = ["."]
"""


def stub_files(
    dist: str = "demo-1.0", meta_name: str = "demo", meta_version: str = "1.0"
) -> dict[str, str]:
    backend = STUB_BACKEND.format(dist=dist, meta_name=meta_name, meta_version=meta_version)
    return {"pyproject.toml": IN_TREE_PYPROJECT, "stub_backend.py": backend}


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """Write a .tar.gz by hand, so members can be anything tarfile can describe."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            info.mtime = SDIST_MTIME
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def file_member(name: str, text: str) -> tuple[tarfile.TarInfo, bytes]:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def tar_sdist(path: Path, files: Mapping[str, str], top: str = "demo-1.0") -> Path:
    return write_tar(path, [file_member(f"{top}/{name}", text) for name, text in files.items()])


def is_build(cmd: list[str]) -> bool:
    """Whether a runner call starts the build frontend (the driver, under the launcher)."""
    return str(DRIVER) in cmd


class Recorder:
    """A runner that records each call; the probe runs for real, the build answers `build`."""

    def __init__(self, build: Any = None) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.build = build

    def __call__(self, cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(cmd), kwargs))
        if not is_build(cmd):
            return subprocess.run(cmd, **kwargs)
        if isinstance(self.build, BaseException):
            raise self.build
        if self.build is not None:
            result: subprocess.CompletedProcess[str] = self.build
            return result
        return subprocess.CompletedProcess(cmd, 0, stdout="fake build wrote nothing\n")

    @property
    def build_calls(self) -> list[tuple[list[str], dict[str, Any]]]:
        return [call for call in self.calls if is_build(call[0])]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """Where build_wheel puts its temporary tree; every test checks it is empty afterwards."""
    root = tmp_path / "work"
    root.mkdir()
    return root


def assert_cleaned(work: Path) -> None:
    assert list(work.iterdir()) == []


# --- real builds ------------------------------------------------------------------------------


@pytest.mark.slow
def test_flit_project_builds_isolated(tmp_path: Path, work: Path) -> None:
    sdist = make_flit_sdist(tmp_path, "demo_pkg", "1.0")
    out = tmp_path / "out"
    result = build_wheel(sdist, out, project="Demo-Pkg", version="1.0", temp_root=work)
    assert result.ok, result.log
    assert result.reason is None
    # flit_core 3.x tags its pure wheels py2.py3.
    assert [w.name for w in result.wheels] == ["demo_pkg-1.0-py2.py3-none-any.whl"]
    assert result.wheels[0].parent == out and result.wheels[0].is_file()
    with zipfile.ZipFile(result.wheels[0]) as zf:
        assert "demo_pkg.py" in zf.namelist()
    # The project's own [build-system] was installed in pypa/build's isolated environment.
    assert "flit_core>=3.9,<4" in result.log
    assert "Successfully built" in result.log
    assert result.environment["builder"] == f"wheelstock {__version__}"
    assert result.environment["python"].endswith(sys.version.split()[0])
    assert result.environment["build"]
    assert result.environment["platform"]
    assert_cleaned(work)


def test_in_tree_backend_builds_and_wheel_moves_to_out_dir(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    out = tmp_path / "deep" / "out"
    result = build_wheel(sdist, out, project="demo", version="1.0", temp_root=work)
    assert result.ok, result.log
    assert result.wheels == (out / "demo-1.0-py3-none-any.whl",)
    assert result.wheels[0].is_file()
    assert set(result.environment) == {"python", "platform", "build", "builder"}
    assert "[wheelstock] accepted demo-1.0-py3-none-any.whl" in result.log
    assert_cleaned(work)


def test_zip_sdist_builds(tmp_path: Path, work: Path) -> None:
    sdist = tmp_path / "demo-1.0.zip"
    with zipfile.ZipFile(sdist, "w") as zf:
        for name, text in stub_files().items():
            zf.writestr(f"demo-1.0/{name}", text)
    result = build_wheel(sdist, tmp_path / "out", project="demo", version="1.0", temp_root=work)
    assert result.ok, result.log
    assert [w.name for w in result.wheels] == ["demo-1.0-py3-none-any.whl"]
    assert_cleaned(work)


def test_failing_backend_is_not_ok_with_failure_in_log(tmp_path: Path, work: Path) -> None:
    files = {"pyproject.toml": IN_TREE_PYPROJECT, "stub_backend.py": FAILING_BACKEND}
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", files)
    out = tmp_path / "out"
    result = build_wheel(sdist, out, project="demo", version="1.0", temp_root=work)
    assert not result.ok
    assert result.wheels == ()
    assert result.reason is not None and result.reason.startswith("build failed (exit ")
    assert "boom: this backend refuses to build" in result.log
    assert not out.exists()
    assert_cleaned(work)


@pytest.mark.parametrize(
    ("project", "version", "files", "reason_part"),
    [
        ("other", "1.0", stub_files(), "not of other 1.0"),
        ("demo", "2.0", stub_files(), "not of demo 2.0"),
        # Filename right, METADATA naming another project: the filename alone is not trusted.
        ("demo", "1.0", stub_files(meta_name="evil"), "METADATA says evil 1.0"),
        ("demo", "1.0", stub_files(meta_version="9.9"), "METADATA says demo 9.9"),
        ("demo", "1.0", stub_files(dist="demo-1.0-x-y"), "is not a wheel filename"),
    ],
)
def test_wheel_not_matching_project_is_refused(
    tmp_path: Path, work: Path, project: str, version: str, files: dict[str, str], reason_part: str
) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", files)
    out = tmp_path / "out"
    result = build_wheel(sdist, out, project=project, version=version, temp_root=work)
    assert not result.ok
    assert result.reason is not None and reason_part in result.reason
    assert result.wheels == ()
    assert not out.exists()  # nothing of a refused build is handed on
    assert_cleaned(work)


def test_version_compared_as_versions_not_strings(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    result = build_wheel(sdist, tmp_path / "out", project="DEMO", version="1.0.0", temp_root=work)
    assert result.ok, result.log
    assert_cleaned(work)


def test_build_writing_no_wheel_is_not_ok(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    runner = Recorder()  # the "build" exits 0 and writes nothing
    result = build_wheel(
        sdist, tmp_path / "out", project="demo", version="1.0", runner=runner, temp_root=work
    )
    assert not result.ok
    assert result.reason == "build produced no wheel"
    assert "fake build wrote nothing" in result.log
    assert_cleaned(work)


# --- hostile or broken sdists: refused before anything runs -----------------------------------


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE
    info.linkname = target
    return info, None


def device(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 1, 3
    return info, None


@pytest.mark.parametrize(
    "evil",
    [
        pytest.param(lambda tmp: file_member("demo-1.0/../../evil", "pwned"), id="dotdot"),
        pytest.param(lambda tmp: file_member(str(tmp / "evil"), "pwned"), id="absolute"),
        pytest.param(lambda tmp: symlink("demo-1.0/passwd", "/etc/passwd"), id="symlink-abs"),
        pytest.param(lambda tmp: symlink("demo-1.0/up", "../../../.."), id="symlink-out"),
        pytest.param(lambda tmp: hardlink("demo-1.0/passwd", "/etc/passwd"), id="hardlink"),
        pytest.param(lambda tmp: device("demo-1.0/null"), id="device"),
    ],
)
def test_unsafe_tar_member_is_refused_without_running(
    tmp_path: Path, work: Path, evil: Any
) -> None:
    good = [file_member(f"demo-1.0/{n}", t) for n, t in stub_files().items()]
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [*good, evil(tmp_path)])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    runner = Recorder()
    out = tmp_path / "out"
    result = build_wheel(sdist, out, project="demo", version="1.0", runner=runner, temp_root=work)
    assert not result.ok
    assert result.reason is not None and result.reason.startswith("unsafe path in sdist: ")
    assert runner.calls == []
    # Nothing appeared anywhere under tmp_path (the temporary tree is inside it, and removed).
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert_cleaned(work)


def test_unsafe_zip_member_is_refused_without_running(tmp_path: Path, work: Path) -> None:
    sdist = tmp_path / "demo-1.0.zip"
    with zipfile.ZipFile(sdist, "w") as zf:
        for name, text in stub_files().items():
            zf.writestr(f"demo-1.0/{name}", text)
        zf.writestr("demo-1.0/../../evil", "pwned")
    runner = Recorder()
    result = build_wheel(
        sdist, tmp_path / "out", project="demo", version="1.0", runner=runner, temp_root=work
    )
    assert not result.ok
    assert result.reason == "unsafe path in sdist: demo-1.0/../../evil"
    assert runner.calls == []
    assert not (tmp_path / "evil").exists()
    assert_cleaned(work)


@pytest.mark.parametrize(
    ("members", "reason_part"),
    [
        ({"a/pyproject.toml": "", "b/setup.py": ""}, "one top-level directory, found: a, b"),
        ({"pyproject.toml": ""}, "one top-level directory, found: pyproject.toml"),
        ({"demo-1.0/README": ""}, "demo-1.0 has no pyproject.toml or setup.py"),
    ],
)
def test_badly_shaped_sdist_is_refused_without_running(
    tmp_path: Path, work: Path, members: dict[str, str], reason_part: str
) -> None:
    sdist = write_tar(tmp_path / "demo-1.0.tar.gz", [file_member(n, t) for n, t in members.items()])
    runner = Recorder()
    result = build_wheel(
        sdist, tmp_path / "out", project="demo", version="1.0", runner=runner, temp_root=work
    )
    assert not result.ok
    assert result.reason is not None and reason_part in result.reason
    assert runner.calls == []
    assert_cleaned(work)


@pytest.mark.parametrize(
    ("filename", "content", "reason_part"),
    [
        ("demo-1.0.tar.gz", b"not a tarball", "cannot read sdist demo-1.0.tar.gz"),
        ("demo-1.0.zip", b"not a zip", "cannot read sdist demo-1.0.zip"),
        ("demo-1.0.tar.bz2", b"", "unsupported sdist format: demo-1.0.tar.bz2"),
    ],
)
def test_unreadable_sdist_is_not_ok(
    tmp_path: Path, work: Path, filename: str, content: bytes, reason_part: str
) -> None:
    sdist = tmp_path / filename
    sdist.write_bytes(content)
    runner = Recorder()
    result = build_wheel(
        sdist, tmp_path / "out", project="demo", version="1.0", runner=runner, temp_root=work
    )
    assert not result.ok
    assert result.reason is not None and reason_part in result.reason
    assert runner.calls == []
    assert_cleaned(work)


# --- wheelstock's own misuse: BuildError ---------------------------------------------------------


def test_missing_sdist_raises(tmp_path: Path, work: Path) -> None:
    with pytest.raises(BuildError, match="sdist not found"):
        build_wheel(tmp_path / "nope.tar.gz", tmp_path / "out", project="demo", version="1.0")


def test_invalid_version_raises(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    with pytest.raises(BuildError, match="invalid version 'not a version'"):
        build_wheel(sdist, tmp_path / "out", project="demo", version="not a version")


# --- time limit ----------------------------------------------------------------------------------


def test_timeout_is_not_ok_and_keeps_partial_log(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    runner = Recorder(build=subprocess.TimeoutExpired(["build"], 5, output=b"partial output\n"))
    result = build_wheel(
        sdist,
        tmp_path / "out",
        project="demo",
        version="1.0",
        runner=runner,
        timeout=5,
        temp_root=work,
    )
    assert not result.ok
    assert result.reason == "timed out after 5 s"
    assert "partial output" in result.log
    assert runner.build_calls[0][1]["timeout"] == 5
    assert_cleaned(work)


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="needs pidfd_open (Linux)")
def test_run_in_own_session_kills_grandchildren_on_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    at = repr(str(pidfile))
    # The child starts a grandchild, waits until it has written its pid, then hangs: the shape
    # of pypa/build waiting on a backend subprocess.
    script = textwrap.dedent(f"""\
        import os, subprocess, sys, time
        subprocess.Popen([sys.executable, "-c",
            "import os, time; open({at}, 'w').write(str(os.getpid())); time.sleep(600)"])
        while not os.path.exists({at}) or not open({at}).read():
            time.sleep(0.01)
        print("grandchild started", flush=True)
        time.sleep(600)
        """)
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_in_own_session([sys.executable, "-c", script], timeout=3)
    assert "grandchild started" in info.value.output
    grandchild = int(pidfile.read_text())
    try:
        pidfd = os.pidfd_open(grandchild)
    except ProcessLookupError:
        return  # already gone and reaped
    try:
        # A pidfd turns readable when its process has exited; the bound only keeps a broken
        # kill from hanging the suite.
        readable, _, _ = select.select([pidfd], [], [], 60)
    finally:
        os.close(pidfd)
    assert readable == [pidfd]


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_run_in_own_session_returns_combined_output(
    tmp_path: Path, timeout: float | None
) -> None:
    # With a timeout the end is seen through a pidfd; the exit status must be the same.
    script = "import sys; print('out'); sys.stdout.flush(); print('err', file=sys.stderr); exit(3)"
    done = run_in_own_session(
        [sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ), timeout=timeout
    )
    assert done.returncode == 3
    assert done.stdout.split() == ["out", "err"]


# --- scrubbed environment ----------------------------------------------------------------------


def run_recorded(
    tmp_path: Path, work: Path, environ: dict[str, str]
) -> tuple[BuildResult, dict[str, str], str]:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    runner = Recorder()
    result = build_wheel(
        sdist,
        tmp_path / "out",
        project="demo",
        version="1.0",
        runner=runner,
        environ=environ,
        temp_root=work,
    )
    ((_cmd, kwargs),) = runner.build_calls
    return result, kwargs["env"], kwargs["cwd"]


def test_environment_is_scrubbed(tmp_path: Path, work: Path) -> None:
    environ = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path / "real-home"),
        "SECRET_TOKEN": "s3cr3t",
        "GITHUB_TOKEN": "ghp_x",
        "PYTHONPATH": "/somewhere",
        "PIP_INDEX_URL": "https://index.invalid/simple/",
        "UV_INDEX_URL": "https://index.invalid/simple/",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "LANG": "C.UTF-8",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
    }
    result, env, cwd = run_recorded(tmp_path, work, environ)
    assert "s3cr3t" not in env.values() and "ghp_x" not in env.values()
    assert set(env) == {
        "PATH",
        "LANG",
        "SSL_CERT_FILE",
        "PIP_INDEX_URL",
        "UV_INDEX_URL",
        "PIP_DISABLE_PIP_VERSION_CHECK",
        "HOME",
        "TMPDIR",
        "SOURCE_DATE_EPOCH",
    }
    assert env["PIP_INDEX_URL"] == "https://index.invalid/simple/"
    assert env["PIP_DISABLE_PIP_VERSION_CHECK"] == "1"
    # HOME and TMPDIR are fresh directories inside the (now removed) temporary tree.
    for key in ("HOME", "TMPDIR"):
        assert env[key] != environ["HOME"]
        assert Path(env[key]).parent == Path(cwd)
        assert Path(cwd).parent == work
    # No epoch given: the sdist's newest member time, for reproducible wheels.
    assert env["SOURCE_DATE_EPOCH"] == str(SDIST_MTIME)
    # The log names what was passed, never the values.
    assert "SECRET_TOKEN" not in result.log and "ghp_x" not in result.log
    assert_cleaned(work)


CREDENTIAL_VARIABLES = {
    "UV_PUBLISH_TOKEN": "pypi-AgEtoken",
    "UV_PUBLISH_PASSWORD": "pw-publish",
    "UV_PUBLISH_USERNAME": "publisher",
    "UV_INDEX_PRIVATE_PASSWORD": "pw-index",
    "UV_INDEX_PRIVATE_USERNAME": "index-user",
    "UV_KEYRING_PROVIDER": "subprocess",
    "PIP_KEYRING_PROVIDER": "import",
    "PIP_CLIENT_CERT": "/home/operator/client.pem",
    "UV_GITHUB_TOKEN": "ghp_y",
    "PIP_AUTH_HEADER": "Bearer abc",
    "PIP_SECRET": "hush",
    "UV_CREDENTIALS_FILE": "/home/operator/creds",
    "pip_token": "lower-case-token",
}


def test_credential_variables_never_reach_the_build(tmp_path: Path, work: Path) -> None:
    environ = {"PATH": os.defpath, "UV_INDEX_URL": "https://index.invalid/simple/"}
    environ.update(CREDENTIAL_VARIABLES)
    result, env, _ = run_recorded(tmp_path, work, environ)
    assert not set(CREDENTIAL_VARIABLES) & set(env)
    assert not set(CREDENTIAL_VARIABLES.values()) & set(env.values())
    assert env["UV_INDEX_URL"] == "https://index.invalid/simple/"
    for name in CREDENTIAL_VARIABLES:
        assert name not in result.log


def test_userinfo_is_stripped_from_index_urls(tmp_path: Path, work: Path) -> None:
    environ = {
        "PATH": os.defpath,
        "PIP_INDEX_URL": "https://user:s3cret@index.invalid/simple/",
        "PIP_EXTRA_INDEX_URL": (
            "https://a.invalid/simple/  https://tok3n@b.invalid/simple/\thttp://u:p%40ss@c.invalid"
        ),
        "PIP_FIND_LINKS": "file:///srv/w https://x:y@links.invalid/a//b@c/?q=a@b",
        "UV_INDEX": "private=https://name:pw-in-uv@private.invalid/simple/",
        "UV_DEFAULT_INDEX": "https://only-user@default.invalid/simple/",
        "UV_FIND_LINKS": "https://one.invalid,https://k:v@two.invalid/w/,https://g:h@3.invalid",
        # A raw "@" in the password: everything up to the last "@" of the authority goes.
        "UV_EXTRA_INDEX_URL": "https://user:p@ss@extra.invalid/simple/",
        "PIP_PROXY": "proxy-user:proxy-pw@proxy.invalid:3128",
        "PIP_TRUSTED_HOST": "index.invalid",
    }
    _, env, _ = run_recorded(tmp_path, work, environ)
    assert env["PIP_INDEX_URL"] == "https://index.invalid/simple/"
    assert env["PIP_EXTRA_INDEX_URL"] == (
        "https://a.invalid/simple/  https://b.invalid/simple/\thttp://c.invalid"
    )
    # Only the authority is userinfo; an "@" further on is the URL's own.
    assert env["PIP_FIND_LINKS"] == "file:///srv/w https://links.invalid/a//b@c/?q=a@b"
    assert env["UV_INDEX"] == "private=https://private.invalid/simple/"
    assert env["UV_DEFAULT_INDEX"] == "https://default.invalid/simple/"
    assert env["UV_FIND_LINKS"] == "https://one.invalid,https://two.invalid/w/,https://3.invalid"
    assert env["UV_EXTRA_INDEX_URL"] == "https://extra.invalid/simple/"
    # pip's scheme-less proxy form, [user:passwd@]host:port, loses its userinfo too.
    assert env["PIP_PROXY"] == "proxy.invalid:3128"
    assert env["PIP_TRUSTED_HOST"] == "index.invalid"
    secrets = ("s3cret", "tok3n", "p%40ss", "x:y", "pw-in-uv", "only-user", "k:v", "g:h", "p@ss")
    for secret in (*secrets, "proxy-pw"):
        assert not [v for v in env.values() if secret in v], secret


def test_operator_source_date_epoch_wins_and_is_clamped_to_zip_range(
    tmp_path: Path, work: Path
) -> None:
    _, env, _ = run_recorded(tmp_path, work, {"PATH": os.defpath, "SOURCE_DATE_EPOCH": "1234"})
    assert env["SOURCE_DATE_EPOCH"] == "315532800"


def test_pip_and_uv_config_files_are_not_given_to_the_build(tmp_path: Path, work: Path) -> None:
    # User-level configuration may hold credentials and reveals the real HOME; neither the
    # moved HOME's absence nor an explicit PIP_CONFIG_FILE brings it back.
    home = tmp_path / "home"
    config = home / ".config" / "pip" / "pip.conf"
    config.parent.mkdir(parents=True)
    config.write_text("[global]\nindex-url = https://user:s3cret@index.invalid/simple/\n")
    _, env, _ = run_recorded(tmp_path, work, {"PATH": os.defpath, "HOME": str(home)})
    assert "PIP_CONFIG_FILE" not in env
    assert env["HOME"] != str(home)

    explicit = {
        "PATH": os.defpath,
        "HOME": str(home),
        "PIP_CONFIG_FILE": str(config),
        "UV_CONFIG_FILE": str(home / "uv.toml"),
    }
    (tmp_path / "again").mkdir()
    _, env, _ = run_recorded(tmp_path / "again", work, explicit)
    assert "PIP_CONFIG_FILE" not in env and "UV_CONFIG_FILE" not in env
    assert not [v for v in env.values() if str(home) in v]


def test_probe_reports_missing_build_frontend(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())

    def no_build(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        answer = '{"python": "CPython 3.11.0", "platform": "x", "build": null}\n'
        return subprocess.CompletedProcess(cmd, 0, stdout=answer)

    calls: list[list[str]] = []
    result = build_wheel(
        sdist,
        tmp_path / "out",
        project="demo",
        version="1.0",
        runner=no_build,
        python="/opt/python/bin/python3",
        temp_root=work,
    )
    assert not result.ok
    assert result.reason == "pypa/build is not installed for /opt/python/bin/python3"
    assert len(calls) == 1  # the build itself was never attempted
    assert_cleaned(work)


def test_missing_interpreter_is_not_ok(tmp_path: Path, work: Path) -> None:
    sdist = tar_sdist(tmp_path / "demo-1.0.tar.gz", stub_files())
    missing = str(tmp_path / "no-such-python")
    result = build_wheel(
        sdist, tmp_path / "out", project="demo", version="1.0", python=missing, temp_root=work
    )
    assert not result.ok
    assert result.reason is not None and result.reason.startswith(f"cannot run {missing}")
    assert_cleaned(work)
