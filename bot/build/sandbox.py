"""The sandbox around project code: bubblewrap, no network, resource limits, a process cgroup."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bot.errors import BuildError

INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap) or pass --unsafe-no-sandbox"
)

# The host a build sees: the system's programs, libraries and headers and its configuration,
# read-only, and nothing else (an allow-list, not a deny-list: a network namespace does not cut
# the Unix sockets of the host's services, and a file only root may read is readable by a
# build that root runs, wherever it sits). Interpreters elsewhere are added one by one.
SYSTEM_DIRS = ("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Inside /etc, what holds secrets rather than configuration.
HIDDEN_DIRS = ("/etc/ssh", "/etc/ssl/private", "/etc/letsencrypt", "/etc/sudoers.d")
_HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/shadow-", "/etc/gshadow-")
# tmpfs pages escape RLIMIT_AS, so each tmpfs gets a size; hidden ones need none at all.
_HIDDEN_TMPFS_BYTES = 1 << 20


class SandboxUnavailable(BuildError):
    """bubblewrap is missing or cannot make namespaces here; builds refuse to start."""


@dataclass(frozen=True)
class ResourceLimits:
    """Limits on the whole process tree of one build (installer, backend, its compilers)."""

    cpu_seconds: int = 3600  # per process (RLIMIT_CPU); the wall time limit is the builder's
    memory_bytes: int = 8 << 30  # address space per process (RLIMIT_AS)
    processes: int = 512  # a pids cgroup where one can be made, else RLIMIT_NPROC
    file_bytes: int = 4 << 30  # largest file a build may write (RLIMIT_FSIZE)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Sandbox:
    """How project code runs: inside bwrap (``bwrap`` set) or, if the operator says so, bare."""

    bwrap: str | None
    version: str | None = None
    limits: ResourceLimits = field(default_factory=ResourceLimits)
    hidden: tuple[str, ...] = ()  # the state directory, the operator's home: never visible

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None

    def prefix(self, *, writable: Sequence[str], readable: Sequence[str] = ()) -> list[str]:
        """The bwrap arguments that come before ``--chdir DIR -- COMMAND``; [] when bare.

        Mounts are applied in order: the host read-only, then the hidden places covered, then
        what the build must read (an interpreter under a home directory) and what it may write.
        """
        if self.bwrap is None:
            return []
        args = [self.bwrap]
        bound: list[Path] = []
        for system in SYSTEM_DIRS:
            path = Path(system)
            if path.is_symlink():  # merged /usr: /bin -> usr/bin
                args += ["--symlink", os.readlink(path), system]
            elif path.is_dir():
                args += ["--ro-bind", system, system]
                bound.append(path)
        scratch = str(min(self.limits.file_bytes, self.limits.memory_bytes))
        args += ["--dev", "/dev", "--proc", "/proc"]
        args += ["--size", scratch, "--tmpfs", "/tmp", "--size", scratch, "--tmpfs", "/dev/shm"]
        for shown in readable:
            args += ["--ro-bind", shown, shown]
            bound.append(Path(shown))
        # What must stay unseen even where it lies under something shown (the state directory
        # inside an interpreter's prefix, say); not what a readable path lies within.
        for hidden in (*HIDDEN_DIRS, *self.hidden):
            where = Path(hidden)
            if (
                where.is_dir()
                and not where.is_symlink()
                and any(where.is_relative_to(b) for b in bound)
                and not any(Path(r).is_relative_to(where) for r in readable)
            ):
                args += ["--size", str(_HIDDEN_TMPFS_BYTES), "--tmpfs", hidden]
        for hidden in _HIDDEN_FILES:
            if Path(hidden).exists():
                args += ["--ro-bind", "/dev/null", hidden]
        for tree in writable:
            args += ["--bind", tree, tree]
        # Own user, pid, network (loopback only, not the host's), ipc, uts and cgroup
        # namespaces; the sandbox dies with its parent and cannot reach the terminal. Run by
        # root, bwrap would keep every capability inside its namespaces, enough to unmount the
        # tmpfs over a hidden directory or to remount: none are kept.
        args += ["--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        return args

    def describe(self) -> dict[str, object]:
        """What provenance and the log say about the isolation a build had."""
        return {
            "sandbox": "bubblewrap" if self.bwrap else "none (--unsafe-no-sandbox)",
            "bwrap": self.version,
            "network": "none" if self.bwrap else "host",
            "limits": self.limits.as_dict(),
        }


def find_sandbox(
    *,
    unsafe: bool = False,
    limits: ResourceLimits | None = None,
    hidden: Sequence[Path] = (),
    path: str | None = None,
) -> Sandbox:
    """A working bwrap, proven by running it; without one, SandboxUnavailable (one line).

    ``unsafe`` (--unsafe-no-sandbox) gives a bare sandbox instead; the limits still apply.
    """
    chosen = limits or ResourceLimits()
    hide = tuple(str(p.resolve()) for p in hidden)
    if unsafe:
        return Sandbox(None, None, chosen, hide)
    bwrap = shutil.which("bwrap", path=path)
    if bwrap is None:
        raise SandboxUnavailable(f"builds need a sandbox and bwrap is not on PATH: {INSTALL_HINT}")
    probe = [*Sandbox(bwrap).prefix(writable=()), "--", "true"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
        version = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run {bwrap}: {exc}; {INSTALL_HINT}") from exc
    if done.returncode != 0:
        why = " ".join(done.stderr.split()) or f"exit {done.returncode}"
        raise SandboxUnavailable(
            f"bwrap cannot make a sandbox here ({why}; user namespaces may be off): {INSTALL_HINT}"
        )
    return Sandbox(bwrap, version[-1] if version else None, chosen, hide)


# Runs first in the build's process tree, as `python -I -S -c LAUNCHER SPEC -- ARGV`: it joins
# the pids cgroup, sets the rlimits and execs ARGV, so every descendant inherits both. Done in a
# process of its own rather than preexec_fn, which is unsafe in a process with threads.
LAUNCHER = """\
import json, os, resource, sys
spec = json.loads(sys.argv[1])
if spec["cgroup"]:
    with open(spec["cgroup"], "w") as procs:
        procs.write(str(os.getpid()))
for name, value in spec["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
os.execvp(sys.argv[3], sys.argv[3:])
"""


def _pids_controllers() -> Iterator[tuple[Path, str]]:
    """Where a pids cgroup could be made: (parent directory, file holding the limit)."""
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists():
        yield v1, "pids.max"
    for v2 in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        controllers = v2 / "cgroup.subtree_control"
        with contextlib.suppress(OSError):
            if "pids" in controllers.read_text().split():
                yield v2, "pids.max"


@contextlib.contextmanager
def pids_cgroup(limit: int) -> Iterator[Path | None]:
    """A fresh pids cgroup holding at most ``limit`` tasks, removed afterwards; None if none.

    RLIMIT_NPROC does not bind root (the kernel exempts it), so a build run by root is held
    by a cgroup where the machine lets one be made.
    """
    made: Path | None = None
    for parent, limit_file in _pids_controllers():
        candidate = parent / f"wheelstock-{uuid.uuid4().hex[:12]}"
        try:
            candidate.mkdir()
        except OSError:
            continue
        try:
            (candidate / limit_file).write_text(str(limit))
        except OSError:
            with contextlib.suppress(OSError):
                candidate.rmdir()
            continue
        made = candidate
        break
    try:
        yield made
    finally:
        if made is not None:
            _remove_cgroup(made)


def _remove_cgroup(group: Path) -> None:
    # Tasks that outlived the build (already killed by the caller) may take a moment to leave.
    for _ in range(200):
        try:
            group.rmdir()
            return
        except OSError:
            for pid in _tasks(group):
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
            time.sleep(0.01)


def _tasks(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def limited(
    argv: Sequence[str],
    limits: ResourceLimits,
    cgroup: Path | None,
    *,
    prlimit: str | None = None,
) -> list[str]:
    """``argv`` started under a launcher that applies ``limits`` (and joins ``cgroup``).

    util-linux's prlimit (with sh to join the cgroup) starts in a millisecond or two; without
    it, a Python launcher does the same in about ten. ``prlimit`` names the binary ("" for the
    Python launcher); by default it is looked up on PATH.
    """
    rlimits = {
        "RLIMIT_CPU": limits.cpu_seconds,
        "RLIMIT_AS": limits.memory_bytes,
        "RLIMIT_FSIZE": limits.file_bytes,
    }
    if cgroup is None or os.geteuid() != 0:
        rlimits["RLIMIT_NPROC"] = limits.processes
    procs = None if cgroup is None else str(cgroup / "cgroup.procs")
    tool = shutil.which("prlimit") if prlimit is None else prlimit
    shell = shutil.which("sh")
    if tool and (procs is None or shell):
        options = [f"--{_PRLIMIT_OPTIONS[name]}={value}" for name, value in rlimits.items()]
        command = [tool, *options, "--", *argv]
        if procs is None:
            return command
        # sh writes its own pid, then becomes prlimit, which becomes argv: one process, joined.
        join = 'echo $$ > "$0" && exec "$@"'
        return [str(shell), "-c", join, procs, *command]
    spec = {"cgroup": procs, "rlimits": rlimits}
    return [sys.executable, "-I", "-S", "-c", LAUNCHER, json.dumps(spec), "--", *argv]


_PRLIMIT_OPTIONS = {
    "RLIMIT_CPU": "cpu",
    "RLIMIT_AS": "as",
    "RLIMIT_FSIZE": "fsize",
    "RLIMIT_NPROC": "nproc",
}


def process_limit_note(cgroup: Path | None) -> str:
    """How the process limit is enforced, for the log (root without a cgroup is not held)."""
    if cgroup is not None:
        return f"processes limited by the pids cgroup {cgroup.name}"
    if os.geteuid() == 0:
        return "processes not limited: running as root and no pids cgroup could be made"
    return "processes limited by RLIMIT_NPROC"
