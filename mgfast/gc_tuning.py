"""Python's cyclic garbage collector, set for a process that streams messages.

The per-message paths allocate container objects (a frame tuple per message, lists per batch
and request) that never form cycles and die young; with the default threshold of 700 such
allocations, a young-generation collection ran every few hundred messages and walked them all.
``tune_for_streaming`` moves what startup built (modules, configuration, TLS contexts) out of
the collector's sight (``gc.freeze``) and collects the young generation every
``YOUNG_THRESHOLD`` allocations instead: cycles (asyncio futures holding exceptions) are still
found, within a few MB of garbage.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000


def tune_for_streaming() -> None:
    """Call once startup is done, before the first message."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
