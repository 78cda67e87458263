"""The cyclic garbage collector paused for a burst of long-lived allocations."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Collector off inside, its previous state restored after.

    For code that allocates hundreds of thousands of objects that all survive and hold no
    cycles (a graph's build, a registry cache turned back into entries): the collector's
    generational passes re-scan that growing heap and took longer than the work itself
    (benchmarks/README.md, bot.registry). Never around code that makes cyclic garbage.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
