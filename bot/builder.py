"""Build one verified sdist into wheels with the project's own [build-system], isolated.

A little over the ~500 lines a module here aims for: one build is one sequence (unpack,
probe the interpreter, install the build requirements outside the sandbox, run the hooks
inside it, collect and check the wheels) whose steps share the log and the limits, and
reads best in one place; the sandbox, the limits, the repair and the import check have
modules of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from bot import __version__, dists
from bot.build.extract import ExtractionRefused, Limits, extract_sdist
from bot.build.sandbox import Sandbox, find_sandbox, limited, pids_cgroup, process_limit_note
from bot.errors import BuildError, DistributionError, one_line

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
import json, platform, sys
from importlib.metadata import PackageNotFoundError, version
try:
    build = version("build")
except PackageNotFoundError:
    build = None
print(json.dumps({
    "python": platform.python_implementation() + " " + platform.python_version(),
    "version": "%d.%d" % sys.version_info[:2],
    "platform": platform.platform(),
    "build": build,
    "prefix": sys.prefix,
    "base_prefix": sys.base_prefix,
}))
"""


DRIVER = Path(__file__).resolve().parent / "build" / "driver.py"

# What a hook that reached for the network says when there is none (it has its own empty
# network namespace), so the log can say why in one line instead of leaving a stack trace.
_NETWORK_ERRORS = (
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Name or service not known",
    "No address associated with hostname",
    "nodename nor servname provided",
    "getaddrinfo failed",
)


@dataclass(frozen=True)
class BuildResult:
    """What one build produced: accepted wheels, or why there are none, and how it ran."""

    ok: bool
    wheels: tuple[Path, ...]
    log: str
    reason: str | None
    environment: Mapping[str, str] = field(default_factory=dict)
    # Exactly what the isolated environment installed: name, version, sha256, url.
    requirements: tuple[Mapping[str, Any], ...] = ()
    sandbox: Mapping[str, Any] = field(default_factory=dict)


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
            returncode = _wait(proc, timeout)
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


def _wait(proc: subprocess.Popen[bytes], timeout: float | None) -> int:
    """Wait for ``proc``, seeing its end at once (TimeoutExpired after ``timeout``).

    Popen.wait(timeout) polls with sleeps that grow to 50 ms, so every short step of a build
    (the probe, the import check, auditwheel) would end up to 50 ms late; a pidfd turns
    readable the moment the process exits.
    """
    if timeout is None or not hasattr(os, "pidfd_open"):
        return proc.wait(timeout=timeout)
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:  # an old kernel: poll as before
        return proc.wait(timeout=timeout)
    try:
        ready, _, _ = select.select([pidfd], [], [], timeout)
    finally:
        os.close(pidfd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


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
    sandbox: Sandbox | None = None,
    limits: Limits | None = None,
    frontends: Path | None = None,
) -> BuildResult:
    """Build wheels for `project` `version` from `sdist` into `out_dir`.

    A project whose sdist or build is unacceptable gives BuildResult(ok=False); BuildError is
    raised only when wheelstock itself asks for something impossible (missing sdist, bad version,
    no sandbox: SandboxUnavailable). `environ` is the environment to scrub (default os.environ);
    `temp_root` is where the temporary build tree goes (default: the system's temporary
    directory); `sandbox` how hooks run (default: bubblewrap, found on PATH); `limits` what
    unpacking allows; `frontends` where pypa/build is installed for Pythons that lack it.
    """
    if not sdist.is_file():
        raise BuildError(f"sdist not found: {sdist}")
    try:
        wanted_version = Version(version)
    except InvalidVersion as exc:
        raise BuildError(f"invalid version {version!r} for {project}") from exc
    wanted_name = canonicalize_name(project)
    source_env = os.environ if environ is None else environ
    box = sandbox if sandbox is not None else find_sandbox()

    log: list[str] = []
    environment: dict[str, str] = {"builder": BUILDER}
    installed: list[Mapping[str, Any]] = []

    def note(line: str) -> None:
        log.append(f"[wheelstock] {line}\n")

    def result(ok: bool, wheels: tuple[Path, ...], reason: str | None) -> BuildResult:
        if reason is not None:
            note(f"not ok: {reason}")
        return BuildResult(
            ok, wheels, "".join(log), reason, dict(environment), tuple(installed), box.describe()
        )

    work = Path(tempfile.mkdtemp(prefix="wheelstock-build-", dir=temp_root)).resolve()
    try:
        note(f"{BUILDER}: building {wanted_name} {wanted_version} from {sdist.name}")
        # Sources go one level down so that nothing the sdist names sits in the build's cwd.
        # What hooks may write (src, out, tmp, home) is apart from what the trusted frontend
        # keeps (its spec, result and install reports in control/, the isolated env): a hook
        # that could rewrite the env's interpreter or the result would run code, or lie,
        # outside the sandbox.
        src_root, home, tmp, tmp_out, control = (
            work / d for d in ("src", "home", "tmp", "out", "control")
        )
        for d in (src_root, home, tmp, tmp_out, control):
            d.mkdir()
        reports = control / "reports"
        reports.mkdir()
        try:
            epoch = extract_sdist(sdist, src_root, limits or Limits())
            srcdir = _source_dir(src_root)
        except ExtractionRefused as exc:
            return result(False, (), str(exc))
        except _Rejected as exc:
            return result(False, (), str(exc))

        env = scrubbed_env(source_env, home=home, tmp=tmp, epoch=epoch)
        note(f"environment passed to the build: {', '.join(sorted(env))}")
        # The frontend's pip reads its configuration and cache under HOME: one the hooks
        # cannot write (theirs is home/, given to them by the driver).
        frontend_env = {**env, "HOME": str(work / "frontend-home")}
        (work / "frontend-home").mkdir()
        if frontends is not None:
            frontend_env["PIP_CACHE_DIR"] = str(frontends / "pip-cache")
        run_kwargs: dict[str, Any] = {
            "cwd": str(work),
            "env": env,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "text": True,
            "timeout": timeout,
            "check": False,
        }

        try:
            info = _probe(python, runner, run_kwargs, log)
            frontend = python
            if not info.get("build"):
                if frontends is None:
                    return result(False, (), f"pypa/build is not installed for {python}")
                frontend = _frontend(python, str(info["version"]), frontends, runner, log)
        except _Rejected as exc:
            return result(False, (), str(exc))
        environment.update(
            {
                "python": str(info["python"]),
                "platform": str(info["platform"]),
                "build": str(info.get("build") or _frontend_build_version()),
            }
        )

        note(
            "sandbox: "
            + (f"bubblewrap {box.version}, no network" if box.isolated else "NONE (unsafe)")
            + f"; limits {box.limits.as_dict()}"
        )
        spec = {
            "srcdir": str(srcdir),
            "outdir": str(tmp_out),
            "envdir": str(work / "env"),
            "result": str(control / "result.json"),
            "reports": str(reports),
            "prefix": box.prefix(writable=()),
            "readable": [str(info["base_prefix"]), str(info["prefix"]), str(work / "env")],
            "writable": [str(src_root), str(tmp_out), str(tmp), str(home)],
            "hook_home": str(home),
        }
        (control / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        with pids_cgroup(box.limits.processes) as cgroup:
            note(process_limit_note(cgroup))
            cmd = limited(
                [frontend, "-I", str(DRIVER), str(control / "spec.json")], box.limits, cgroup
            )
            note(f"running pypa/build with {frontend}; each backend hook runs in the sandbox")
            try:
                proc = runner(cmd, **{**run_kwargs, "env": frontend_env})
            except subprocess.TimeoutExpired as exc:
                log.append(_as_text(exc.output))
                return result(False, (), f"timed out after {timeout:g} s")
            except OSError as exc:
                return result(False, (), f"cannot run {python}: {one_line(exc)}")
        output = _as_text(proc.stdout) + _as_text(proc.stderr)
        log.append(output)
        outcome = _driver_result(control / "result.json")
        installed.extend(outcome.get("requirements") or ())
        if proc.returncode != 0:
            reason = f"build failed (exit {proc.returncode})"
            if outcome.get("error"):
                reason += f": {outcome['error']}"
            if box.isolated and any(s in output for s in _NETWORK_ERRORS):
                reason += ": it tried to use the network, which backend hooks do not have"
            return result(False, (), reason)

        produced = sorted(tmp_out.iterdir())
        # A link here could make the host read, hash and publish one of its own files.
        odd = [p.name for p in produced if p.is_symlink() or not p.is_file()]
        if odd:
            return result(False, (), f"build left other than plain files: {', '.join(odd)}")
        built = [p for p in produced if p.name.endswith(".whl")]
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


# Probe answers by interpreter file (real path, mtime, size): a tick building many projects
# asks each Python once. Only an answer that names pypa/build is kept.
_PROBED: dict[tuple[str, int, int], dict[str, Any]] = {}


def _probe(
    python: str, runner: Runner, run_kwargs: Mapping[str, Any], log: list[str]
) -> dict[str, Any]:
    key = None
    with contextlib.suppress(OSError):
        real = os.path.realpath(python)
        stat = os.stat(real)
        key = (f"{python}\0{real}", stat.st_mtime_ns, stat.st_size)
    if key is not None and key in _PROBED:
        return dict(_PROBED[key])
    # -I: cwd and PYTHON* variables must not change which frontend code runs.
    try:
        probe = runner([python, "-I", "-c", _PROBE], **run_kwargs)
        # Last line only: stderr is merged in and may carry warnings before the answer.
        lines = (probe.stdout or "").strip().splitlines()
        info = json.loads(lines[-1]) if probe.returncode == 0 and lines else None
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise _Rejected(f"cannot run {python}: {one_line(exc)}") from exc
    if not isinstance(info, dict):
        log.append(probe.stdout or "")
        raise _Rejected(f"cannot run {python} (exit {probe.returncode})")
    info.setdefault("version", "")
    info.setdefault("prefix", "")
    info.setdefault("base_prefix", "")
    if key is not None and info.get("build"):
        _PROBED[key] = dict(info)
    return info


def _frontend_build_version() -> str:
    try:
        return importlib.metadata.version("build")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _frontend(python: str, version: str, frontends: Path, runner: Runner, log: list[str]) -> str:
    """A venv of ``python`` with pypa/build (this process's version), made once and kept.

    The frontend is wheelstock's code, not the project's, so it is installed with network and
    without the sandbox, from the configured index and from wheels only.
    """
    wanted = _frontend_build_version()
    digest = hashlib.sha256(os.path.realpath(python).encode()).hexdigest()[:12]
    venv = frontends / f"{version}-{digest}-build-{wanted}"
    frontend = venv / "bin" / "python"
    if frontend.exists():
        return str(frontend)
    log.append(f"[wheelstock] installing pypa/build {wanted} for {python} into {venv}\n")
    partial = venv.with_name(venv.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [python, "-I", "-m", "venv", str(partial)],
        [
            str(partial / "bin" / "python"),
            "-I",
            "-m",
            "pip",
            "install",
            "--quiet",
            "--only-binary",
            ":all:",
            f"build=={wanted}",
        ],
    ]
    for step in steps:
        try:
            done = runner(
                step,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise _Rejected(f"cannot install pypa/build for {python}: {one_line(exc)}") from exc
        log.append(_as_text(done.stdout))
        if done.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise _Rejected(f"cannot install pypa/build for {python} (exit {done.returncode})")
    # Made beside its final name and renamed when complete, so a killed install never leaves
    # a half venv that looks finished. Its scripts keep the old path in their shebangs, but the
    # driver only runs bin/python, which finds its prefix from pyvenv.cfg wherever it is.
    partial.rename(venv)
    return str(frontend)


def _driver_result(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _source_dir(src_root: Path) -> Path:
    entries = list(src_root.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or entries[0].is_symlink():
        found = ", ".join(sorted(e.name for e in entries)) or "nothing"
        raise _Rejected(f"sdist must hold one top-level directory, found: {found}")
    srcdir = entries[0]
    if not (srcdir / "pyproject.toml").is_file() and not (srcdir / "setup.py").is_file():
        raise _Rejected(f"sdist directory {srcdir.name} has no pyproject.toml or setup.py")
    return srcdir


def scrubbed_env(
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
        dists.check_wheel(wheel, name, version)
    except DistributionError as exc:
        raise _Rejected(str(exc)) from exc


def _as_text(output: str | bytes | None) -> str:
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output
