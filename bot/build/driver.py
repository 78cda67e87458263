"""The build frontend process: pypa/build installs with network, hooks run in the sandbox.

Run by the target interpreter as ``python -I driver.py SPEC.json``; it imports nothing of
wheelstock (the target Python need not have it), only the standard library and pypa/build.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import build
import pyproject_hooks
from build import BuildBackendException, BuildException, ProjectBuilder
from build.env import DefaultIsolatedEnv
from packaging.requirements import InvalidRequirement, Requirement


def _existing(paths: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for path in paths:
        if path and os.path.exists(path) and path not in seen:
            seen.append(path)
    return seen


def sandboxed_runner(
    prefix: Sequence[str], readable: Sequence[str], writable: Sequence[str], home: str
) -> Any:
    """A pyproject_hooks runner that runs each hook inside bwrap (``prefix``), or bare."""
    # What a hook must read wherever it lives, also under a hidden home directory: this
    # interpreter, the hook launcher of pyproject_hooks, and the isolated environment.
    needed = [
        sys.base_prefix,
        sys.prefix,
        str(Path(pyproject_hooks.__file__).resolve().parent),
        *readable,
    ]

    def run(
        cmd: Sequence[str], cwd: str | None = None, extra_environ: Mapping[str, str] | None = None
    ) -> None:
        # Hooks have no network, so they get no installer settings (a token may sit in an index
        # URL's path), and a home of their own, not the one the frontend's pip reads its
        # configuration from.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_"))}
        env.update(extra_environ or {})
        env["HOME"] = home
        argv = list(cmd)
        if prefix:
            mounts: list[str] = []
            for path in _existing(needed):
                mounts += ["--ro-bind", path, path]
            for path in _existing(list(writable)):
                mounts += ["--bind", path, path]
            # The prefix ends with the namespace flags; mounts may come after them.
            argv = [*prefix, *mounts, "--chdir", cwd or os.getcwd(), "--", *argv]
        sys.stdout.flush()
        done = subprocess.run(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, list(cmd))

    return run


def _installed(report: Path) -> list[dict[str, Any]]:
    """What pip's installation report says it installed: name, version, sha256, URL."""
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = []
    for item in data.get("install", []):
        meta = item.get("metadata", {})
        info = item.get("download_info", {})
        hashes = info.get("archive_info", {}).get("hashes", {})
        digest = hashes.get("sha256")
        legacy = info.get("archive_info", {}).get("hash", "")
        if digest is None and legacy.startswith("sha256="):
            digest = legacy.removeprefix("sha256=")
        found.append(
            {
                "name": meta.get("name"),
                "version": meta.get("version"),
                "sha256": digest,
                "url": info.get("url"),
            }
        )
    return found


def main(spec_path: str) -> int:
    # pypa/build reports its steps (and a failed install's output) through logging.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result_path = Path(spec["result"])
    reports = Path(spec["reports"])
    result: dict[str, Any] = {"wheel": None, "requirements": [], "error": None, "stage": None}
    runner = sandboxed_runner(
        spec["prefix"], spec["readable"], spec["writable"], spec["hook_home"]
    )
    started = time.time()

    def install(env: DefaultIsolatedEnv, requirements: Sequence[str], step: str) -> None:
        if not requirements:
            return
        # Names from the configured index only: a URL or path would have the installer, which
        # runs outside the sandbox with network, fetch or read whatever the project names.
        for text in requirements:
            try:
                direct = Requirement(text).url
            except InvalidRequirement as exc:
                raise BuildException(f"invalid requirement {text!r} in {step}: {exc}") from exc
            if direct:
                raise BuildException(
                    f"{step} names {text!r}: build requirements must come from the index, "
                    "not a URL or path"
                )
        result["stage"] = f"installing {step}"
        print(f"[wheelstock] installing {step}: {', '.join(sorted(requirements))}", flush=True)
        # Read by pip as --report: the exact versions and hashes go into provenance.
        os.environ["PIP_REPORT"] = str(reports / f"{step.replace(' ', '-')}.json")
        # Wheels only: building a requirement from its sdist would run its code here, outside
        # the sandbox and with network.
        os.environ["PIP_ONLY_BINARY"] = ":all:"
        try:
            env.install(requirements)
        finally:
            os.environ.pop("PIP_REPORT", None)
            os.environ.pop("PIP_ONLY_BINARY", None)

    try:
        with DefaultIsolatedEnv(path=spec["envdir"]) as env:
            builder = ProjectBuilder.from_isolated_env(env, spec["srcdir"], runner=runner)
            install(env, sorted(builder.build_system_requires), "build-system requires")
            result["stage"] = "get_requires_for_build_wheel"
            extra = builder.get_requires_for_build("wheel")
            install(env, sorted(extra), "backend requires")
            result["stage"] = "build_wheel"
            print("[wheelstock] running the build_wheel hook in the sandbox", flush=True)
            wheel = builder.build("wheel", spec["outdir"])
            result["wheel"] = os.path.basename(wheel)
            print(f"Successfully built {result['wheel']}", flush=True)
            result["stage"] = None
    except BuildBackendException as exc:
        traceback.print_exception(exc.exception)
        result["error"] = f"the {result['stage']} hook failed"
    except subprocess.CalledProcessError as exc:
        result["error"] = f"{result['stage']} failed (exit {exc.returncode})"
    except OSError as exc:
        result["error"] = f"{result['stage']} failed: {exc}"
    except BuildException as exc:
        result["error"] = " ".join(str(exc).split())
    for report in sorted(reports.glob("*.json")):
        result["requirements"] += _installed(report)
    result["build"] = build.__version__
    result["seconds"] = round(time.time() - started, 3)
    result_path.write_text(json.dumps(result), encoding="utf-8")
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
