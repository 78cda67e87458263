"""Which index pip on this machine uses: PIP_INDEX_URL, pip's configuration, pip's own default.
The bot's default upstream comes from here, so no registry host is written down anywhere."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections.abc import Callable, Mapping

from bot.errors import UpstreamError


def parse_pip_config_list(text: str) -> dict[str, str]:
    """Parse `pip config list` output (`section.key='value'` lines) into a mapping."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        key, sep, value = raw.strip().partition("=")
        if not sep or not key:
            continue
        # pip prints values with repr(), so they come back through literal_eval.
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        values[key.strip()] = str(parsed)
    return values


def pip_config_list(python: str | None = None) -> dict[str, str]:
    """Run `python -m pip config list`; an empty mapping if pip can't be run."""
    command = [python or sys.executable, "-m", "pip", "config", "list"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    if result.returncode != 0:
        return {}
    return parse_pip_config_list(result.stdout)


def _pip_builtin_index() -> str | None:
    # Asked of pip itself so that no registry host is written down here; pip's internals may move,
    # so any failure just means "unknown".
    try:
        module = importlib.import_module("pip._internal.models.index")
        url = module.PyPI.simple_url
    except Exception:
        return None
    return url if isinstance(url, str) and url else None


def default_index_url(
    environ: Mapping[str, str],
    pip_config: Callable[[], Mapping[str, str]] | None = None,
) -> str:
    """The index pip on this machine would use, with a trailing slash."""
    url = environ.get("PIP_INDEX_URL", "").strip()
    if not url:
        config = (pip_config or pip_config_list)()
        # pip applies the [install] section over [global] for `pip install`. `:env:` keys are
        # ignored because the caller passed the environment explicitly.
        url = (config.get("install.index-url") or config.get("global.index-url") or "").strip()
    if not url:
        url = _pip_builtin_index() or ""
    if not url:
        raise UpstreamError(
            "no upstream index configured; pass --upstream URL or set PIP_INDEX_URL"
        )
    return url if url.endswith("/") else url + "/"
