"""Bounded LRU maps that count their evictions, and upstream's eviction-rate warning.

Every cache of the authentication path is an :class:`Lru`. With ``usage`` configured, an
:class:`EvictionWatch` looks at the count every ``period`` and, when more than
``evicted_threshold`` entries per period were evicted, logs upstream's line::

    Evicted entities threshold is exceeded for <name>: <n> per <secs> seconds

(names as upstream: ``user``, ``auth check result``, ``auth failed attempt``,
``auth quarantine``), so log alerts written for upstream keep working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any, Generic, Hashable, TypeVar

from mgfast.auth.config import CacheUsage

log = logging.getLogger("mgfast.auth")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most ``size`` entries; a put over that evicts the least recently used one."""

    __slots__ = ("name", "size", "data", "evicted")

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = max(1, size)
        self.data: OrderedDict[K, V] = OrderedDict()
        self.evicted = 0  # ever; EvictionWatch and the metrics read differences

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> K | None:
        """Store; return the key evicted to make room, if one was."""
        data = self.data
        gone = None
        if key in data:
            data.move_to_end(key)
        elif len(data) >= self.size:
            gone = data.popitem(last=False)[0]
            self.evicted += 1
        data[key] = value
        return gone

    def pop(self, key: K) -> V | None:
        return self.data.pop(key, None)

    def clear(self) -> None:
        self.data.clear()

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data


class EvictionWatch:
    """Warns in upstream's wording when caches evict faster than their threshold."""

    def __init__(self) -> None:
        self.watched: list[tuple[Lru[Any, Any], CacheUsage]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def add(self, cache: Lru[Any, Any], usage: CacheUsage | None) -> None:
        if usage is not None:
            self.watched.append((cache, usage))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for cache, usage in self.watched:
            self.tasks.append(loop.create_task(self._watch(cache, usage)))

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        self.tasks.clear()

    @staticmethod
    async def _watch(cache: Lru[Any, Any], usage: CacheUsage) -> None:
        threshold_per_second = usage.evicted_threshold / usage.period
        last_count, last_time = cache.evicted, time.monotonic()
        while True:
            await asyncio.sleep(usage.period)
            check(cache, usage, threshold_per_second, last_count, last_time)
            last_count, last_time = cache.evicted, time.monotonic()


def check(cache: Lru[Any, Any], usage: CacheUsage, threshold_per_second: float, last_count: int,
          last_time: float) -> bool:
    """Log the warning if evictions since ``last_count`` outran the threshold; True if so."""
    evicted = cache.evicted - last_count
    elapsed = time.monotonic() - last_time
    if elapsed > 0 and evicted / elapsed > threshold_per_second:
        log.warning("Evicted entities threshold is exceeded for %s: %d per %.3f seconds",
                    cache.name, evicted, elapsed)
        return True
    return False
