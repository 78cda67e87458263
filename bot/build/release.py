"""One release built for each target Python: build, compare, repair, import-check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bot.build.extract import Limits
from bot.build.importcheck import import_check as import_check_wheel
from bot.build.provenance import differing_members
from bot.build.repair import is_pure, repair
from bot.build.sandbox import Sandbox, limited, pids_cgroup
from bot.build.targets import Interpreter
from bot.builder import BuildResult, Runner, build_wheel, run_in_own_session, scrubbed_env

Sandboxed = Callable[[Sequence[str], Path, Mapping[str, str]], subprocess.CompletedProcess[str]]


def sandboxed_runner(
    box: Sandbox,
    *,
    writable: Sequence[Path],
    readable: Sequence[str] = (),
    timeout: float = 900.0,
    runner: Runner = run_in_own_session,
) -> Sandboxed:
    """Runs a command that touches project code inside ``box``, under its limits."""

    def run(
        argv: Sequence[str], cwd: Path, env: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        # This interpreter too, since auditwheel and the launcher run from it.
        needed = [p for p in (sys.base_prefix, sys.prefix, *readable) if p and Path(p).exists()]
        wrapped = list(argv)
        if box.isolated:
            prefix = box.prefix(writable=[str(w) for w in writable], readable=needed)
            wrapped = [*prefix, "--chdir", str(cwd), "--", *argv]
        with pids_cgroup(box.limits.processes) as cgroup:
            return runner(
                limited(wrapped, box.limits, cgroup),
                cwd=str(cwd),
                env=dict(env),
                timeout=timeout,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                check=False,
            )

    return run


@dataclass(frozen=True)
class ReleaseBuild:
    """A release built for each target Python: checked wheels, or why there are none."""

    ok: bool
    wheels: tuple[Path, ...]
    log: str
    reason: str | None
    results: tuple[BuildResult, ...]
    pythons: tuple[str, ...]  # the versions it was built for
    missing: Mapping[str, str]  # versions asked for that this machine lacks, and why
    reproducible: Mapping[str, Any] | None
    started: datetime
    finished: datetime
    policies: Mapping[str, str | None] = field(default_factory=dict)


def build_release(
    sdist: Path,
    out_dir: Path,
    *,
    project: str,
    version: str,
    pythons: Sequence[Interpreter],
    missing: Mapping[str, str] | None = None,
    sandbox: Sandbox,
    import_check: bool = True,
    reproducible: bool = False,
    runner: Runner = run_in_own_session,
    timeout: float = 900.0,
    environ: Mapping[str, str] | None = None,
    temp_root: Path | None = None,
    limits: Limits | None = None,
    frontends: Path | None = None,
) -> ReleaseBuild:
    """Build, repair and import-check ``sdist`` for each Python; a pure project builds once.

    With ``reproducible`` every build is made twice in fresh sandboxes (same SOURCE_DATE_EPOCH)
    and the wheels compared byte for byte. Wheels reach ``out_dir`` only if every step passed.
    """
    started = datetime.now(UTC)
    log: list[str] = []
    results: list[BuildResult] = []
    accepted: list[Path] = []
    built_for: list[str] = []
    policies: dict[str, str | None] = {}
    comparisons: dict[str, list[str]] = {}
    source_env = os.environ if environ is None else environ

    def done(ok: bool, reason: str | None) -> ReleaseBuild:
        if reason is not None:
            log.append(f"[wheelstock] not ok: {reason}\n")
        if not ok:
            for wheel in accepted:
                wheel.unlink(missing_ok=True)
        summary = None
        if reproducible:
            summary = {
                "identical": not any(comparisons.values()),
                "differences": {k: v for k, v in comparisons.items() if v},
                "compared": sorted(comparisons),
            }
        return ReleaseBuild(
            ok,
            tuple(accepted) if ok else (),
            "".join(log),
            reason,
            tuple(results),
            tuple(built_for),
            dict(missing or {}),
            summary,
            started,
            datetime.now(UTC),
            policies,
        )

    for version_missing, why in (missing or {}).items():
        log.append(f"[wheelstock] Python {version_missing} is not available here: {why}\n")
    if not pythons:
        return done(False, "none of the Pythons to build for is available on this machine")
    build_args: dict[str, Any] = {
        "project": project,
        "version": version,
        "runner": runner,
        "timeout": timeout,
        "environ": environ,
        "temp_root": temp_root,
        "sandbox": sandbox,
        "limits": limits,
        "frontends": frontends,
    }
    for interpreter in pythons:
        stage = Path(tempfile.mkdtemp(prefix="wheelstock-release-", dir=temp_root)).resolve()
        try:
            log.append(f"[wheelstock] --- Python {interpreter.version} ({interpreter.path})\n")
            first = build_wheel(sdist, stage / "built", python=interpreter.path, **build_args)
            results.append(first)
            log.append(first.log)
            if not first.ok:
                return done(False, f"Python {interpreter.version}: {first.reason}")
            if reproducible:
                log.append("[wheelstock] building again in a fresh sandbox to compare\n")
                again = build_wheel(sdist, stage / "again", python=interpreter.path, **build_args)
                log.append(again.log)
                if not again.ok:
                    return done(
                        False, f"Python {interpreter.version}, second build: {again.reason}"
                    )
                theirs = {w.name: w for w in again.wheels}
                for wheel in first.wheels:
                    other = theirs.get(wheel.name)
                    comparisons[wheel.name] = (
                        differing_members(wheel, other) if other else ["<wheel missing>"]
                    )
                    verdict = (
                        "identical"
                        if not comparisons[wheel.name]
                        else ("differs: " + ", ".join(comparisons[wheel.name][:10]))
                    )
                    log.append(f"[wheelstock] reproducible check of {wheel.name}: {verdict}\n")
            env = scrubbed_env(
                source_env, home=_fresh(stage / "home"), tmp=_fresh(stage / "tmp"), epoch=0
            )
            run = sandboxed_runner(sandbox, writable=[stage], timeout=timeout, runner=runner)
            for wheel in first.wheels:
                checked = repair(wheel, _fresh(stage / "repaired"), run=run, env=env)
                log.append(checked.log)
                if not checked.ok or checked.wheel is None:
                    return done(False, checked.reason or f"cannot repair {wheel.name}")
                final = checked.wheel
                policies[final.name] = checked.policy
                if import_check:
                    base = str(Path(interpreter.path).resolve().parent.parent)
                    # Only the check's own venv is writable: the wheel it checks (and stages
                    # next) must not change under the code it imports.
                    check_run = sandboxed_runner(
                        sandbox,
                        writable=[stage / "venv"],
                        readable=[base],
                        timeout=timeout,
                        runner=runner,
                    )
                    imported = import_check_wheel(
                        final,
                        interpreter.path,
                        _fresh(stage / "venv"),
                        run=check_run,
                        env=env,
                        install_env=env,
                        # One base venv per interpreter, copied per check (outside the sandbox).
                        venv_cache=None if frontends is None else frontends / "import-check",
                    )
                    log.append(imported.log)
                    if not imported.ok:
                        return done(False, imported.reason or f"import check of {final.name}")
                else:
                    log.append("[wheelstock] import check off for this project\n")
                out_dir.mkdir(parents=True, exist_ok=True)
                target = out_dir / final.name
                shutil.move(final, target)
                accepted.append(target)
            built_for.append(interpreter.version)
            if all(is_pure(w) for w in first.wheels):
                log.append("[wheelstock] pure wheel: one build serves every Python\n")
                break
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return done(True, None)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
