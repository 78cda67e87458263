"""Build one verified sdist into wheels with the project's own [build-system], isolated."""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

from bot import __version__
from bot.errors import BuildError

Runner = Callable[..., subprocess.CompletedProcess[str]]

BUILDER = f"wheelstock {__version__}"

# Variables the build may see (Trust rules: no credentials, scrubbed environment). PIP_* and UV_*
# pass too, by prefix, because the isolated environment's installer needs the configured index,
# but never one that carries or finds credentials (_is_withheld), and URLs lose their userinfo.
_PASSED_VARIABLES = frozenset(
    {"PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE"}
)
_PASSED_PREFIXES = ("PIP_", "UV_")
_CREDENTIAL_WORDS = (
    "TOKEN",
    "PASSWORD",
    "USERNAME",
    "AUTH",
    "KEYRING",
    "CREDENTIAL",
    "SECRET",
    "CLIENT_CERT",
)
# Configuration files may hold credentials (and name the operator's real HOME); publishing
# settings say nothing about where packages come from.
_WITHHELD_VARIABLES = frozenset({"PIP_CONFIG_FILE", "UV_CONFIG_FILE"})
_WITHHELD_PREFIXES = ("UV_PUBLISH_",)
# The authority of every URL in a value: after "scheme://", up to the path, query, fragment or
# the whitespace that separates list items.
_URL_AUTHORITY = re.compile(r"(?<=://)[^/?#\s]*")

# ZIP (and so every wheel) cannot store times before 1980; backends fail on an earlier
# SOURCE_DATE_EPOCH, so it is clamped to this.
_ZIP_EPOCH = 315532800

# Asked of the interpreter that builds, so provenance names what really ran, not this process.
_PROBE = """\
import json, platform
from importlib.metadata import PackageNotFoundError, version
try:
    build = version("build")
except PackageNotFoundError:
    build = None
print(json.dumps({
    "python": platform.python_implementation() + " " + platform.python_version(),
    "platform": platform.platform(),
    "build": build,
}))
"""


@dataclass(frozen=True)
class BuildResult:
    """What one build produced: accepted wheels, or why there are none, and how it ran."""

    ok: bool
    wheels: tuple[Path, ...]
    log: str
    reason: str | None
    environment: Mapping[str, str] = field(default_factory=dict)


class _Rejected(Exception):
    """Internal: the project's sdist or build is not acceptable; becomes BuildResult(ok=False)."""


def run_in_own_session(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    **_ignored: Any,
) -> subprocess.CompletedProcess[str]:
    """Like subprocess.run capturing combined text output, but a timeout kills the whole tree.

    subprocess.run kills only its direct child on timeout, which would leave pypa/build's backend
    and installer processes running past the time limit. Output goes to a file rather than a pipe
    so that a descendant which escaped the process group cannot block reading it.
    """
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            list(args),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            raise subprocess.TimeoutExpired(
                proc.args, timeout or 0.0, output=_read_text(out)
            ) from None
        except BaseException:
            _kill_group(proc.pid)
            proc.wait()
            raise
        # No group kill here: the leader is reaped, so its id may already belong to someone else.
        return subprocess.CompletedProcess(proc.args, returncode, stdout=_read_text(out))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _read_text(stream: Any) -> str:
    stream.seek(0)
    data: bytes = stream.read()
    return data.decode("utf-8", errors="replace")


def build_wheel(
    sdist: Path,
    out_dir: Path,
    *,
    project: str,
    version: str,
    runner: Runner = run_in_own_session,
    python: str = sys.executable,
    timeout: float = 900.0,
    environ: Mapping[str, str] | None = None,
    temp_root: Path | None = None,
) -> BuildResult:
    """Build wheels for `project` `version` from `sdist` into `out_dir`.

    A project whose sdist or build is unacceptable gives BuildResult(ok=False); BuildError is
    raised only when wheelstock itself asks for something impossible (missing sdist, bad version).
    `environ` is the environment to scrub (default os.environ); `temp_root` is where the temporary
    build tree goes (default: the system's temporary directory).
    """
    if not sdist.is_file():
        raise BuildError(f"sdist not found: {sdist}")
    try:
        wanted_version = Version(version)
    except InvalidVersion as exc:
        raise BuildError(f"invalid version {version!r} for {project}") from exc
    wanted_name = canonicalize_name(project)
    source_env = os.environ if environ is None else environ

    log: list[str] = []
    environment: dict[str, str] = {"builder": BUILDER}

    def note(line: str) -> None:
        log.append(f"[wheelstock] {line}\n")

    def result(ok: bool, wheels: tuple[Path, ...], reason: str | None) -> BuildResult:
        if reason is not None:
            note(f"not ok: {reason}")
        return BuildResult(ok, wheels, "".join(log), reason, dict(environment))

    work = Path(tempfile.mkdtemp(prefix="wheelstock-build-", dir=temp_root))
    try:
        note(f"{BUILDER}: building {wanted_name} {wanted_version} from {sdist.name}")
        # Sources go one level down so that nothing the sdist names sits in the build's cwd.
        src_root, home, tmp, tmp_out = (work / d for d in ("src", "home", "tmp", "out"))
        for d in (src_root, home, tmp, tmp_out):
            d.mkdir()
        try:
            epoch = _extract(sdist, src_root)
            srcdir = _source_dir(src_root)
        except _Rejected as exc:
            return result(False, (), str(exc))

        env = _scrubbed_env(source_env, home=home, tmp=tmp, epoch=epoch)
        note(f"environment passed to the build: {', '.join(sorted(env))}")
        run_kwargs: dict[str, Any] = {
            "cwd": str(work),
            "env": env,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "text": True,
            "timeout": timeout,
            "check": False,
        }

        # -I: cwd and PYTHON* variables must not change which frontend code runs.
        try:
            probe = runner([python, "-I", "-c", _PROBE], **run_kwargs)
            # Last line only: stderr is merged in and may carry warnings before the answer.
            lines = (probe.stdout or "").strip().splitlines()
            info = json.loads(lines[-1]) if probe.returncode == 0 and lines else None
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            return result(False, (), f"cannot run {python}: {_one_line(exc)}")
        if not isinstance(info, dict):
            log.append(probe.stdout or "")
            return result(False, (), f"cannot run {python} (exit {probe.returncode})")
        if not info.get("build"):
            return result(False, (), f"pypa/build is not installed for {python}")
        environment.update(
            {
                "python": str(info["python"]),
                "platform": str(info["platform"]),
                "build": str(info["build"]),
            }
        )

        cmd = [python, "-I", "-m", "build", "--wheel", "--outdir", str(tmp_out), str(srcdir)]
        note("running: " + " ".join(cmd))
        try:
            proc = runner(cmd, **run_kwargs)
        except subprocess.TimeoutExpired as exc:
            log.append(_as_text(exc.output))
            return result(False, (), f"timed out after {timeout:g} s")
        except OSError as exc:
            return result(False, (), f"cannot run {python}: {_one_line(exc)}")
        log.append(_as_text(proc.stdout))
        if proc.stderr:
            log.append(_as_text(proc.stderr))
        if proc.returncode != 0:
            return result(False, (), f"build failed (exit {proc.returncode})")

        built = sorted(p for p in tmp_out.iterdir() if p.name.endswith(".whl"))
        if not built:
            return result(False, (), "build produced no wheel")
        try:
            for wheel in built:
                _check_wheel(wheel, wanted_name, wanted_version)
        except _Rejected as exc:
            return result(False, (), str(exc))

        out_dir.mkdir(parents=True, exist_ok=True)
        accepted = []
        for wheel in built:
            target = out_dir / wheel.name
            shutil.move(wheel, target)
            accepted.append(target)
            note(f"accepted {wheel.name}")
        return result(True, tuple(accepted), None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(sdist: Path, dest: Path) -> int:
    """Extract `sdist` into `dest` refusing anything that could land outside; return its epoch."""
    name = sdist.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return _extract_tar(sdist, dest)
    if name.endswith(".zip"):
        return _extract_zip(sdist, dest)
    raise _Rejected(f"unsupported sdist format: {sdist.name}")


def _unsafe_name(name: str) -> bool:
    # tarfile's "data" filter strips a leading "/" instead of refusing it, and no honest sdist
    # holds an absolute path or "..", so both are refused outright before anything is written.
    path = PurePosixPath(name.replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts


def _extract_tar(sdist: Path, dest: Path) -> int:
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if _unsafe_name(member.name):
                    raise _Rejected(f"unsafe path in sdist: {member.name}")
            # The "data" filter (PEP 706) refuses links leaving dest, absolute link targets,
            # devices and FIFOs, and drops setuid bits.
            tar.extractall(dest, filter="data")
    except tarfile.FilterError as exc:
        raise _Rejected(f"unsafe path in sdist: {_one_line(exc)}") from exc
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _Rejected(f"cannot read sdist {sdist.name}: {_one_line(exc)}") from exc
    return int(max((m.mtime for m in members), default=0))


def _extract_zip(sdist: Path, dest: Path) -> int:
    root = dest.resolve()
    try:
        with zipfile.ZipFile(sdist) as zf:
            infos = zf.infolist()
            for info in infos:
                target = (root / info.filename).resolve()
                if _unsafe_name(info.filename) or not target.is_relative_to(root):
                    raise _Rejected(f"unsafe path in sdist: {info.filename}")
            # zipfile writes symlink entries as plain files, so no link can point outside.
            zf.extractall(root)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _Rejected(f"cannot read sdist {sdist.name}: {_one_line(exc)}") from exc
    return max((calendar.timegm((*i.date_time, 0, 0, 0)) for i in infos), default=0)


def _source_dir(src_root: Path) -> Path:
    entries = list(src_root.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        found = ", ".join(sorted(e.name for e in entries)) or "nothing"
        raise _Rejected(f"sdist must hold one top-level directory, found: {found}")
    srcdir = entries[0]
    if not (srcdir / "pyproject.toml").is_file() and not (srcdir / "setup.py").is_file():
        raise _Rejected(f"sdist directory {srcdir.name} has no pyproject.toml or setup.py")
    return srcdir


def _scrubbed_env(
    environ: Mapping[str, str], *, home: Path, tmp: Path, epoch: int
) -> dict[str, str]:
    env = {k: v for k, v in environ.items() if k in _PASSED_VARIABLES}
    for key, value in environ.items():
        if key.startswith(_PASSED_PREFIXES) and not _is_withheld(key):
            if key == "PIP_PROXY" and "://" not in value:
                # pip also takes a proxy as [user:passwd@]host:port, with no scheme.
                env[key] = _without_userinfo("proxy://" + value).removeprefix("proxy://")
            else:
                env[key] = _without_userinfo(value)
    env.setdefault("PATH", os.defpath)
    # HOME moves, so pip no longer finds the user's pip.conf, and PIP_CONFIG_FILE is withheld:
    # user-level pip configuration is deliberately not given to untrusted builds (it may hold
    # credentials). The machine-wide configuration (/etc/pip.conf, /etc/xdg/pip/pip.conf) is still
    # read by pip, and PIP_* variables still pass, so an index configured there still applies.
    env["HOME"] = str(home)
    env["TMPDIR"] = str(tmp)
    # An operator's SOURCE_DATE_EPOCH wins; otherwise the sdist's newest file time, so the same
    # sdist gives the same timestamps everywhere (reproducible-builds.org).
    with contextlib.suppress(KeyError, ValueError):
        epoch = int(environ["SOURCE_DATE_EPOCH"])
    env["SOURCE_DATE_EPOCH"] = str(max(epoch, _ZIP_EPOCH))
    return env


def _is_withheld(name: str) -> bool:
    upper = name.upper()
    return (
        upper in _WITHHELD_VARIABLES
        or upper.startswith(_WITHHELD_PREFIXES)
        or any(word in upper for word in _CREDENTIAL_WORDS)
    )


def _without_userinfo(value: str) -> str:
    """`value` with the user:password@ part of every URL in it removed.

    Works on single URLs and on lists (space- or comma-separated, `name=url` items) alike, since
    every URL's authority starts after "://". Everything up to the authority's last "@" goes, so a
    raw "@" in a password takes the rest of it along.
    """
    return _URL_AUTHORITY.sub(lambda m: m.group().rpartition("@")[2], value)


def _check_wheel(wheel: Path, name: str, version: Version) -> None:
    """Refuse a wheel that is not `name` `version`, by its filename and by its METADATA."""
    try:
        wheel_name, wheel_version, _, _ = parse_wheel_filename(wheel.name)
    except (InvalidWheelFilename, InvalidVersion) as exc:
        raise _Rejected(f"invalid wheel filename {wheel.name}: {_one_line(exc)}") from exc
    if wheel_name != name or wheel_version != version:
        raise _Rejected(f"wheel {wheel.name} does not match project {name} {version}")
    try:
        with zipfile.ZipFile(wheel) as zf:
            metadata = [
                n for n in zf.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
            ]
            if len(metadata) != 1:
                raise _Rejected(f"wheel {wheel.name} has {len(metadata)} .dist-info/METADATA files")
            headers = BytesHeaderParser().parsebytes(zf.read(metadata[0]))
    except (zipfile.BadZipFile, OSError) as exc:
        raise _Rejected(f"cannot read wheel {wheel.name}: {_one_line(exc)}") from exc
    meta_name, meta_version = headers.get("Name", ""), headers.get("Version", "")
    try:
        matches = canonicalize_name(meta_name) == name and Version(meta_version) == version
    except InvalidVersion:
        matches = False
    if not matches:
        raise _Rejected(
            f"wheel {wheel.name} METADATA says {meta_name} {meta_version}, "
            f"not project {name} {version}"
        )


def _as_text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
