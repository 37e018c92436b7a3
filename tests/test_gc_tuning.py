"""mgfast.gc_tuning: fewer young collections, and cyclic garbage is still collected."""

from __future__ import annotations

import gc
import weakref

from mgfast.gc_tuning import YOUNG_THRESHOLD, tune_for_streaming


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_tuned_collector_still_frees_cycles_without_an_explicit_collect():
    saved = gc.get_threshold()
    try:
        tune_for_streaming()
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD
        assert gc.get_freeze_count() > 0  # what startup built is out of the collector's sight
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None
        for _ in range(3):  # allocations drive the young generation's collections
            [[] for _ in range(YOUNG_THRESHOLD)]
            if gone() is None:
                break
        assert gone() is None
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
