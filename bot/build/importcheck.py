"""The import check: each built wheel installed into a fresh venv and imported in the sandbox.

A wheel that installs but cannot be imported (a missing shared library, a module left out)
never reaches staging. The venv is a copy of one cached base venv per interpreter; the
wheel's dependencies are installed first, from wheels only.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import installer
from installer.destinations import SchemeDictionaryDestination
from installer.exceptions import InstallerError
from installer.sources import WheelFile
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bot.build.repair import Checked, Sandboxed, _exit_text, _last_line, _step, run_plain
from bot.errors import one_line

# The import check's own lines, told apart from whatever the project prints while importing.
_MARK = "wheelstock-import:"


# Runs in the target venv, in the sandbox. Module names come as argv, never pasted into the code,
# because they are read from the (untrusted) wheel.
_IMPORT_SCRIPT = f"""\
import importlib, sys, traceback
for name in sys.argv[1:]:
    print({_MARK!r}, "importing", name, file=sys.stderr, flush=True)
    try:
        importlib.import_module(name)
    except BaseException as exc:
        traceback.print_exc()
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        print({_MARK!r}, "failed", name, last, file=sys.stderr, flush=True)
        sys.exit(1)
print({_MARK!r}, "ok", file=sys.stderr, flush=True)
"""


# Asked of the fresh venv's interpreter (trusted: the operator's Python) once per check: where
# installer must write, and the PEP 508 marker values that decide which Requires-Dist apply.
# Mirrors packaging.markers.default_environment, which the bare venv cannot import.
_PROBE = """\
import json, os, platform, sys, sysconfig
impl = sys.implementation.version
iver = f"{impl.major}.{impl.minor}.{impl.micro}"
if impl.releaselevel != "final":
    iver += impl.releaselevel[0] + str(impl.serial)
print(json.dumps({"paths": sysconfig.get_paths(), "markers": {
    "implementation_name": sys.implementation.name,
    "implementation_version": iver,
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}}))
"""


_MODULE_SUFFIXES = (".py", ".pyc", ".so", ".pyd")


# The wheel comes out of the project's backend: its RECORD is read whole, so it is bounded (a
# RECORD of 100,000 files is about 10 MB).
_TEXT_LIMIT = 32 * 1024 * 1024


# The scheme paths installer writes to (sysconfig's; "headers" is derived), relative in the cache.
_SCHEME_KEYS = ("purelib", "platlib", "scripts", "data")


def _is_dotted_name(name: str) -> bool:
    """Whether name is an importable dotted module name (each part an identifier)."""
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _prefer_public(names: Iterable[str]) -> tuple[str, ...]:
    """Sorted unique names, without the private ones when a public one is there."""
    # `_foo` beside `foo` is usually foo's private extension, imported by foo and sometimes not
    # importable on its own; a wheel of only private modules still gets them checked.
    unique = sorted(set(names))
    public = [n for n in unique if not n.startswith("_")]
    return tuple(public or unique)


def _module_name(filename: str) -> str | None:
    """The module a file at some directory level defines, or None for data files."""
    if not filename.endswith(_MODULE_SUFFIXES):
        return None
    # demo.py, demo.pyc, demo.cpython-311-x86_64-linux-gnu.so, demo.abi3.so: all module "demo".
    stem, _, rest = filename.partition(".")
    if rest in ("so", "pyd") and stem.startswith("lib"):
        # libfoo.so without an ABI tag is a shared library shipped beside the modules, not one.
        return None
    return stem if stem.isidentifier() else None


def _installed_paths(members: Iterable[str]) -> list[PurePosixPath]:
    """Members as they land in site-packages: root files and .data/purelib|platlib contents."""
    paths: list[PurePosixPath] = []
    for member in members:
        path = PurePosixPath(member)
        if not path.parts or ".." in path.parts or path.is_absolute():
            continue
        top = path.parts[0]
        if top.endswith(".data"):
            # name-1.0.data/purelib/pkg/... installs as pkg/...; scripts, headers, data do not
            # land on sys.path.
            if len(path.parts) > 2 and path.parts[1] in ("purelib", "platlib"):
                paths.append(PurePosixPath(*path.parts[2:]))
            continue
        if top.endswith(".dist-info"):
            continue
        paths.append(path)
    return paths


def _modules_from_paths(paths: Sequence[PurePosixPath]) -> tuple[str, ...]:
    """The outermost regular modules and packages of an installed file list."""
    # A directory is a regular package when it holds an __init__ module (.py, .pyc, or compiled,
    # as Cython makes it). Directories without one are PEP 420 namespace portions: importing the
    # bare namespace runs none of the project's code, so the check descends to the first regular
    # packages or modules inside (google/cloud/foo/__init__.py gives "google.cloud.foo").
    packages = {
        p.parent.parts for p in paths if len(p.parts) > 1 and _module_name(p.name) == "__init__"
    }
    found: set[str] = set()
    for path in paths:
        parts = path.parts
        if "__pycache__" in parts:
            continue
        # Walk down from the root; stop at the first regular package, or at a module file.
        for depth in range(1, len(parts) + 1):
            prefix = parts[:depth]
            if depth == len(parts):
                module = _module_name(parts[-1])
                if module is not None and module != "__init__":
                    found.add(".".join((*parts[:-1], module)))
                break
            if not prefix[-1].isidentifier():
                break
            if prefix in packages:
                found.add(".".join(prefix))
                break
    return _prefer_public(found)


def _read_text(archive: zipfile.ZipFile, member: str) -> str:
    """A dist-info text member, refusing one that inflates past _TEXT_LIMIT."""
    with archive.open(member) as handle:
        data = handle.read(_TEXT_LIMIT + 1)
    if len(data) > _TEXT_LIMIT:
        raise ValueError(f"{member} is larger than {_TEXT_LIMIT} bytes")
    return data.decode("utf-8", "replace")


def top_level_modules(wheel: Path) -> tuple[str, ...]:
    """The modules to import for a wheel: top_level.txt's names, else those its RECORD installs."""
    with zipfile.ZipFile(wheel) as archive:
        members = archive.namelist()
        listed = [
            m
            for m in members
            if len(PurePosixPath(m).parts) == 2
            and PurePosixPath(m).parts[0].endswith(".dist-info")
            and PurePosixPath(m).name in ("top_level.txt", "RECORD")
        ]
        texts = {PurePosixPath(m).name: _read_text(archive, m) for m in listed}
    # setuptools writes top_level.txt; its lines may be stale or hostile, so only dotted names
    # count, and a file with none falls through to RECORD.
    declared = [
        line.strip().replace("/", ".") for line in texts.get("top_level.txt", "").splitlines()
    ]
    names = _prefer_public(n for n in declared if _is_dotted_name(n))
    if names:
        return names
    # RECORD rather than the zip listing: it is what installer writes, so what will be on disk.
    record_paths = [line.split(",", 1)[0] for line in texts.get("RECORD", "").splitlines()]
    return _modules_from_paths(_installed_paths([p for p in record_paths if p]))


def _runtime_requirements(source: WheelFile, markers: Mapping[str, str]) -> list[str]:
    """The wheel's Requires-Dist that apply to the target interpreter, markers dropped."""
    metadata = email.parser.Parser().parsestr(source.read_dist_info("METADATA"), headersonly=True)
    wanted: list[str] = []
    for text in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(str(text))
        # extra "": no extras are installed, so only unconditional requirements count.
        if requirement.marker is not None and not requirement.marker.evaluate(
            {**markers, "extra": ""}
        ):
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


def _install(
    wheel: Path, venv: Path, probe: Mapping[str, Any]
) -> tuple[str, list[str], str | None]:
    """Install the wheel into venv in this process: its name and requirements, or why not."""
    paths: Mapping[str, str] = probe["paths"]
    markers: Mapping[str, str] = probe["markers"]
    try:
        with WheelFile.open(wheel) as source:
            source.validate_record()
            requirements = _runtime_requirements(source, markers)
            # sysconfig has no "headers" path; pip's layout for a venv is used, kept inside it.
            headers = venv / "include" / "site" / f"python{markers['python_version']}"
            scheme = {
                "purelib": paths["purelib"],
                "platlib": paths["platlib"],
                "scripts": paths["scripts"],
                "data": paths["data"],
                "headers": str(headers / source.distribution),
            }
            destination = SchemeDictionaryDestination(
                scheme_dict=scheme,
                interpreter=str(venv / "bin" / "python"),
                script_kind="posix",
            )
            installer.install(source, destination, {"INSTALLER": b"wheelstock\n"})
    except InvalidRequirement as exc:
        return "", [], f"invalid Requires-Dist: {exc}"
    except (InstallerError, ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        return "", [], one_line(exc, limit=300)
    return canonicalize_name(source.distribution), requirements, None


def _make_venv(
    python: str, venv: Path, host: Sandboxed, env: Mapping[str, str]
) -> tuple[dict[str, Any] | None, str, str | None]:
    """Create a bare venv of python at venv and probe it: (probe, log, reason it failed)."""
    # --without-pip: a bare venv is ~30 ms, against seconds for one with pip (ensurepip); pip, when
    # dependencies need it, runs from this process's environment with --python.
    argv = [python, "-m", "venv", "--without-pip", str(venv)]
    done = host(argv, venv.parent, env)
    log = _step(argv, done)
    if done.returncode != 0:
        return None, log, f"cannot create a venv with {python}: {_last_line(done.stdout)}"
    venv_python = str(venv / "bin" / "python")
    done = host([venv_python, "-I", "-c", _PROBE], venv.parent, env)
    log += _step([venv_python, "-I", "-c", "<probe>"], done)
    try:
        probe = json.loads(_last_line(done.stdout))
        if done.returncode != 0 or not isinstance(probe, dict):
            raise ValueError(probe)
        paths = {key: Path(probe["paths"][key]) for key in _SCHEME_KEYS}
        markers = probe["markers"]
        if not isinstance(markers, dict):
            raise ValueError(markers)
    except (ValueError, KeyError, TypeError):
        return None, log, f"cannot inspect the venv of {python}: {_last_line(done.stdout)}"
    for key, where in paths.items():
        if not where.resolve().is_relative_to(venv.resolve()):
            return None, log, f"the venv's {key} path {where} lies outside it"
    return {"paths": {k: str(v) for k, v in paths.items()}, "markers": markers}, log, None


def _interpreter_key(python: str, env: Mapping[str, str]) -> str | None:
    """A name for the interpreter file python resolves to, changing when it is replaced."""
    found = shutil.which(python, path=env.get("PATH", os.defpath))
    if found is None:
        return None
    real = os.path.realpath(found)
    try:
        stat = os.stat(real)
    except OSError:
        return None
    identity = f"{real}\0{stat.st_mtime_ns}\0{stat.st_size}".encode()
    return hashlib.sha256(identity).hexdigest()[:16]


def _copy_venv(
    python: str, venv: Path, cache: Path, host: Sandboxed, env: Mapping[str, str]
) -> tuple[dict[str, Any] | None, str, str | None]:
    """A copy of the cached base venv of python at venv (made first if missing), and its probe."""
    # Creating and probing a venv is two interpreter start-ups (~45 ms); copying a bare one is
    # ~1 ms. A venv holds no path of its own that python reads: bin/python finds pyvenv.cfg
    # beside itself, so a copy is a venv where it lands.
    key = _interpreter_key(python, env)
    if key is None:
        return _make_venv(python, venv, host, env)
    entry = cache / key
    log = ""
    if not (entry / "probe.json").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=cache))
        probe, log, problem = _make_venv(python, staging / "venv", host, env)
        if probe is None:
            shutil.rmtree(staging, ignore_errors=True)
            return None, log, problem
        relative = {k: os.path.relpath(v, staging / "venv") for k, v in probe["paths"].items()}
        (staging / "probe.json").write_text(json.dumps({**probe, "paths": relative}))
        try:
            # Complete or absent: the entry appears by one rename, and a concurrent check that
            # made it first wins.
            os.rename(staging, entry)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    try:
        cached = json.loads((entry / "probe.json").read_text())
        probe = {
            "paths": {k: str(venv / cached["paths"][k]) for k in _SCHEME_KEYS},
            "markers": dict(cached["markers"]),
        }
        shutil.copytree(entry / "venv", venv, symlinks=True)
    except (OSError, ValueError, KeyError, TypeError):
        # An entry someone damaged: this check makes its own venv rather than fail.
        shutil.rmtree(venv, ignore_errors=True)
        return _make_venv(python, venv, host, env)
    log += f"venv: copied {entry / 'venv'} to {venv}\n"
    return probe, log, None


def _import_reason(output: str | None, returncode: int, modules: Sequence[str]) -> str:
    """One line for a failed import: the module and the last line of its traceback."""
    attempted = modules[0]
    for line in (output or "").splitlines():
        if not line.startswith(_MARK):
            continue
        words = line[len(_MARK) :].split(maxsplit=2)
        if len(words) >= 2 and words[0] == "importing":
            attempted = words[1]
        elif len(words) == 3 and words[0] == "failed":
            return f"import of {words[1]} failed: {words[2]}"
    # No failure line: the import crashed (a segfaulting extension) or exited on its own.
    return f"import of {attempted} failed: {_exit_text(returncode)}"


def import_check(
    wheel: Path,
    python: str,
    workdir: Path,
    *,
    run: Sandboxed,
    env: Mapping[str, str],
    install_env: Mapping[str, str] | None = None,
    host: Sandboxed = run_plain,
    venv_cache: Path | None = None,
) -> Checked:
    """Install the wheel in a fresh venv of python and import its top-level modules through run."""
    try:
        modules = top_level_modules(wheel)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        return Checked(False, None, f"cannot read {wheel.name}: {one_line(exc, limit=300)}", "")
    if not modules:
        note = f"{wheel.name} has no importable module: nothing to import\n"
        return Checked(True, wheel, None, note)

    # Host steps (venv, probe, pip) run the operator's interpreter and pip, not the project's code;
    # they get the network configuration (install_env), the import only the sandbox's env.
    host_env = env if install_env is None else install_env
    workdir.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="import-check-", dir=workdir))
    venv = base / "venv"
    log = ""

    def fail(reason: str) -> Checked:
        return Checked(False, None, reason, log)

    if venv_cache is None:
        probe, made, problem = _make_venv(python, venv, host, host_env)
    else:
        probe, made, problem = _copy_venv(python, venv, venv_cache, host, host_env)
    log += made
    if probe is None:
        return fail(problem or f"cannot create a venv with {python}")
    venv_python = str(venv / "bin" / "python")

    try:
        with WheelFile.open(wheel) as source:
            own = canonicalize_name(source.distribution)
            requirements = _runtime_requirements(source, probe["markers"])
    except InvalidRequirement as exc:
        return fail(f"cannot install {wheel.name}: invalid Requires-Dist: {exc}")
    except (InstallerError, ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        return fail(f"cannot install {wheel.name}: {one_line(exc, limit=300)}")

    if requirements:
        # The dependencies go in before the wheel: pip --python runs pip under the venv's
        # interpreter, which would run a .pth file of the project's wheel outside the sandbox.
        # --only-binary :all: is a trust rule too: an sdist among the dependencies would run
        # its build backend here, outside the sandbox, with network.
        argv = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            venv_python,
            "install",
            "--only-binary",
            ":all:",
            "--no-input",
            "--disable-pip-version-check",
            *requirements,
        ]
        done = host(argv, base, host_env)
        log += _step(argv, done)
        if done.returncode != 0:
            wanted = ", ".join(requirements)
            return fail(
                f"cannot install the dependencies of {own} as wheels ({wanted}): "
                f"{_last_line(done.stdout)}"
            )

    _, _, problem = _install(wheel, venv, probe)
    if problem is not None:
        log += f"installer: {problem}\n"
        return fail(f"cannot install {wheel.name}: {problem}")
    log += f"installer: installed {wheel.name} into {venv}\n"

    # -I: the venv's site-packages only; no PYTHON* variables, user site or cwd on sys.path.
    argv = [venv_python, "-I", "-c", _IMPORT_SCRIPT, *modules]
    done = run(argv, base, env)
    log += _step([venv_python, "-I", "-c", "<import check>", *modules], done)
    if done.returncode != 0 or f"{_MARK} ok" not in (done.stdout or ""):
        return fail(_import_reason(done.stdout, done.returncode, modules))
    return Checked(True, wheel, None, log)


__all__ = ["import_check", "top_level_modules"]
