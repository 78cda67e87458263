"""How the package is layered: the page model and PR planning import no HTTP client."""

from __future__ import annotations

import subprocess
import sys


def test_pure_modules_import_no_http_client() -> None:
    # In a fresh interpreter: this test process has long imported httpx for other tests.
    code = (
        "import sys, bot.simple, bot.versions, bot.prs\n"
        "print(sorted(m for m in ('httpx', 'tenacity') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
