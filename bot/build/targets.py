"""Target Pythons: which ones the operator has, and which ones upstream already covers."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from packaging import tags
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from bot.registry import PLATFORMS, PYTHON_RE

# The same shape as bot.builder.Runner, spelled here so that builder may import this module.
Runner = Callable[..., subprocess.CompletedProcess[str]]

# Printed by each candidate; a shim or wrapper answers with the interpreter it finally ran.
_PROBE = (
    "import json, platform, sys; print(json.dumps({"
    "'version': list(sys.version_info[:2]), 'full_version': platform.python_version(), "
    "'implementation': sys.implementation.name, 'executable': sys.executable}))"
)


@dataclass(frozen=True)
class Interpreter:
    """One Python that was run and answered as the version it was wanted for."""

    version: str
    path: str
    implementation: str
    full_version: str


def parse_python_option(text: str) -> tuple[str, str]:
    """Parse `3.12=/path/to/python` into ("3.12", "/path/to/python"); ValueError otherwise."""
    version, sep, path = text.partition("=")
    if not sep:
        raise ValueError(f"expected VERSION=PATH like 3.12=/usr/bin/python3.12, got {text!r}")
    version = version.strip()
    if not PYTHON_RE.match(version):
        raise ValueError(f"{version!r} is not a Python version like '3.12' (in {text!r})")
    if not path.strip():
        raise ValueError(f"no interpreter path after '=' in {text!r}")
    return version, path


def host_interpreter() -> Interpreter:
    """The interpreter running wheelstock, from sys without running anything."""
    return Interpreter(
        version=f"{sys.version_info.major}.{sys.version_info.minor}",
        path=sys.executable,
        implementation=sys.implementation.name,
        full_version=platform.python_version(),
    )


def find_pythons(
    wanted: Sequence[str],
    configured: Mapping[str, str] | None = None,
    *,
    path: str | None = None,
    runner: Runner = subprocess.run,
    timeout: float = 10.0,
) -> tuple[dict[str, Interpreter], dict[str, str]]:
    """Find a working CPython for each wanted version: (found by version, missing version->reason).

    A version in `configured` is looked for only there, so a broken configured path is reported
    rather than silently replaced by whatever PATH has; others are `python3.X` on `path` (default:
    PATH). Every candidate is run, because pyenv shims exist on PATH for versions that are not
    installed and exit 127. Non-CPython interpreters count as missing: targets are CPython tags.
    Both dicts keep the order of `wanted`, duplicates dropped.
    """
    configured = configured or {}
    found: dict[str, Interpreter] = {}
    missing: dict[str, str] = {}
    for version in dict.fromkeys(wanted):
        if not PYTHON_RE.match(version):
            raise ValueError(f"{version!r} is not a Python version like '3.12'")
        if version in configured:
            candidate, origin = configured[version], f"configured {configured[version]}"
        else:
            located = shutil.which(f"python{version}", path=path)
            if located is None:
                missing[version] = f"no python{version} on PATH"
                continue
            candidate, origin = located, f"python{version} on PATH ({located})"
        answer = _probe(candidate, version, runner, timeout)
        if isinstance(answer, Interpreter):
            found[version] = answer
        else:
            missing[version] = f"{origin}: {answer}"
    return found, missing


def _probe(candidate: str, version: str, runner: Runner, timeout: float) -> Interpreter | str:
    """Run one candidate; the Interpreter it is, or why it is not the wanted one."""
    try:
        proc = runner(
            [candidate, "-I", "-c", _PROBE],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"did not answer within {timeout:g} s"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run: {_one_line(str(exc))}"
    output = (proc.stdout or "").strip()
    if proc.returncode != 0:
        return f"exit {proc.returncode}: {_one_line(output) or 'no output'}"
    info = _parse_probe(output)
    if info is None:
        return f"did not answer like a Python: {_one_line(output) or 'no output'}"
    major, minor = info["version"]
    if f"{major}.{minor}" != version:
        return f"is Python {info['full_version']}, not {version}"
    if info["implementation"] != "cpython":
        return f"is {info['implementation']} {info['full_version']}, not CPython"
    executable = info["executable"]
    # The path that answered: a shim's real interpreter, which later runs need not go through.
    answered = executable if os.path.isabs(executable) else os.path.abspath(candidate)
    return Interpreter(version, answered, info["implementation"], info["full_version"])


def _parse_probe(output: str) -> dict[str, Any] | None:
    # Last line only: warnings from site or a wrapper may come first on the merged stream.
    lines = output.splitlines()
    try:
        info = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    if not isinstance(info, dict):
        return None
    version = info.get("version")
    if not (
        isinstance(version, list)
        and len(version) == 2
        and all(isinstance(v, int) for v in version)
        and all(isinstance(info.get(k), str) for k in ("full_version", "implementation"))
        and isinstance(info.get("executable"), str)
    ):
        return None
    return info


def _one_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


@dataclass(frozen=True)
class Coverage:
    """Whether upstream's wheels for a release already serve every target this builder makes."""

    covered: bool
    reason: str | None
    missing: tuple[str, ...]


def upstream_coverage(
    wheel_filenames: Iterable[str],
    pythons: Sequence[str],
    platforms: Sequence[str] = (),
    *,
    machine: str | None = None,
    platform_tags: Sequence[str] | None = None,
    host_platform: str | None = None,
) -> Coverage:
    """Decide whether upstream's wheels for one release make building it pointless.

    A pure wheel (pyN-none-any for the targets' major) covers everything. Otherwise each target
    CPython X.Y is covered when some upstream wheel has a tag a CPython X.Y on this host accepts
    (packaging.tags, so cp38-abi3 covers every later CPython). Only the host platform
    (`host_platform`, default sys.platform; tags `platform_tags`, default this host's) is
    judged, since it is the only one this builder produces wheels for; `platforms` (sys_platform
    values, empty meaning the host) that leave out the host give covered=True with nothing to
    build here. `reason` says what upstream ships, also for a partial cover; None when it ships
    nothing usable. `pythons` must not be empty: the caller passes the host's version if the
    entry names none. Non-wheel and invalid filenames are ignored.
    """
    targets = tuple(dict.fromkeys(pythons))
    if not targets:
        raise ValueError("no target Pythons; pass the host's version when the entry names none")
    for version in targets:
        if not PYTHON_RE.match(version):
            raise ValueError(f"{version!r} is not a Python version like '3.12'")
    wheels = _parse_wheels(wheel_filenames)

    for name, wheel_tags in wheels:
        if _is_pure_for(wheel_tags, targets):
            return Coverage(True, f"upstream ships a pure wheel ({name})", ())

    host = host_platform or (sys.platform if sys.platform in PLATFORMS else "linux")
    if platforms and host not in platforms:
        return Coverage(
            True, f"targets {', '.join(platforms)} only; this builder makes {host} wheels", ()
        )

    arch = machine or platform.machine()
    # linux_* wheels are left out: the upstream index refuses them (PEP 513) and what we publish
    # is repaired to manylinux/musllinux, so a linux_* wheel says nothing about other machines.
    plats = [
        p
        for p in (tags.platform_tags() if platform_tags is None else platform_tags)
        if not p.startswith("linux_")
    ]
    served: list[str] = []
    missing: list[str] = []
    for version in targets:
        accepted = _accepted_tags(version, plats)
        if any(wheel_tags & accepted for _, wheel_tags in wheels):
            served.append(version)
        else:
            missing.append(version)

    where = f"({host} {arch})"
    if not served:
        return Coverage(False, None, tuple(missing))
    ships = f"upstream ships wheels for {_cp(served)} {where}"
    if not missing:
        return Coverage(True, ships, ())
    return Coverage(False, f"{ships}, not {_cp(missing)}", tuple(missing))


def _parse_wheels(filenames: Iterable[str]) -> list[tuple[str, frozenset[tags.Tag]]]:
    wheels = []
    for filename in filenames:
        name = PurePosixPath(filename).name
        if not name.endswith(".whl"):
            continue
        try:
            wheel_tags = parse_wheel_filename(name)[3]
        except InvalidWheelFilename:
            continue
        wheels.append((name, wheel_tags))
    return wheels


def _is_pure_for(wheel_tags: frozenset[tags.Tag], targets: Sequence[str]) -> bool:
    # py3-none-any, or py2.py3-none-any (expanded to two tags): an interpreter tag of the bare
    # major runs on every minor of it, so one such wheel serves every target and platform.
    majors = {f"py{v.split('.')[0]}" for v in targets}
    pure = {t.interpreter for t in wheel_tags if t.abi == "none" and t.platform == "any"}
    return majors <= pure


def _accepted_tags(version: str, plats: Sequence[str]) -> frozenset[tags.Tag]:
    major, minor = (int(part) for part in version.split("."))
    cp = f"cp{major}{minor}"
    # abis and interpreter are explicit: packaging's defaults come from the running interpreter
    # (its debug or free-threaded ABI, its own cpXY for -none-any), not from the target.
    return frozenset(
        [
            *tags.cpython_tags(python_version=(major, minor), abis=[cp], platforms=plats),
            *tags.compatible_tags(python_version=(major, minor), interpreter=cp, platforms=plats),
        ]
    )


def _cp(versions: Iterable[str]) -> str:
    return ", ".join("cp" + v.replace(".", "") for v in versions)
