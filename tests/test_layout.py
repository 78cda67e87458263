"""How the package is layered (pure modules import no HTTP client); the benchmarks load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_pure_modules_import_no_http_client() -> None:
    # In a fresh interpreter: this test process has long imported httpx for other tests.
    code = (
        "import sys, bot.simple, bot.versions, bot.prs\n"
        "print(sorted(m for m in ('httpx', 'tenacity') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


BENCHMARKS = sorted(
    p
    for p in (Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py")
    if p.name != "machine.py"
)


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_every_benchmark_still_imports_what_it_uses(script: Path) -> None:
    # No test runs the benchmarks; a module moved under them must still fail here, not later.
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
