"""What a benchmark says about the machine it ran on: memory and load, the same in each."""

from __future__ import annotations

import os
from pathlib import Path


def memory() -> str:
    """MemTotal from /proc/meminfo, in GiB ("? GiB" where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return "? GiB"


def load() -> str:
    """The 1, 5 and 15 minute load averages, as "0.6 0.9 1.2"."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
