"""Failed attempts and quarantine, keyed by (username, client address), in bounded maps.

    q = Quarantine(config, cache_size, clock)
    q.is_quarantined(username, address)       # answer 401 without a password check
    q.failure(username, address) / q.success(username, address)

After ``failed_attempt_limit`` failures in a row the pair is quarantined for ``period``; a
success resets it. An address failing for more than ``NAMES_PER_ADDRESS`` usernames is
quarantined as a whole; the maps hold at least ``MIN_ENTRIES`` keys. Why this differs from
upstream's username-only keys: docs/design.md, "Basic authentication".
"""

from __future__ import annotations

import time
from typing import Callable

from mgfast.auth.config import QuarantineConfig
from mgfast.auth.lru import Lru

NAMES_PER_ADDRESS = 16  # distinct usernames failing from one address before it is quarantined
MIN_ENTRIES = 4096  # a small cache.size must not make the maps trivial to flush
ANY_USER = ""  # the username of an address-wide quarantine (usernames are never empty here)


class Quarantine:
    def __init__(self, config: QuarantineConfig, size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = config.failed_attempt_limit
        self.period = config.period
        self.clock = clock
        entries = max(size, MIN_ENTRIES)
        self.failures: Lru[tuple[str, str], int] = Lru("auth failed attempt", entries)
        self.quarantined: Lru[tuple[str, str], float] = Lru("auth quarantine", entries)
        self.names: dict[str, set[str]] = {}  # address -> usernames with a failure counter
        # set by AuthRuntime with several workers: tells the siblings (mgfast.auth.peers)
        self.publish: Callable[[bool, str, str], None] | None = None

    def is_quarantined(self, username: str, address: str) -> bool:
        """True while (username, address), or the address as a whole, is quarantined."""
        return self._live((username, address)) or self._live((ANY_USER, address))

    def failure(self, username: str, address: str) -> None:
        """One failed attempt here; may start a quarantine. Sibling workers are told."""
        self.apply(True, username, address)
        if self.publish is not None:
            self.publish(True, username, address)

    def success(self, username: str, address: str) -> None:
        """A successful attempt here resets the pair's count (the siblings' too)."""
        if self.publish is not None and (username, address) in self.failures:
            self.publish(False, username, address)
        self.apply(False, username, address)

    def apply(self, failed: bool, username: str, address: str) -> None:
        """One event, from this worker or a sibling (``mgfast.auth.peers``)."""
        if not failed:
            self._forget((username, address))
            return
        key = (username, address)
        count = (self.failures.get(key) or 0) + 1
        if count >= self.limit:
            self._forget(key)
            self._quarantine(key)
            return
        names = self.names.setdefault(address, set())
        if username not in names and len(names) >= NAMES_PER_ADDRESS:
            for name in list(names):
                self._forget((name, address))
            self._quarantine((ANY_USER, address))
            return
        names.add(username)
        gone = self.failures.put(key, count)
        if gone is not None:
            self._forget(gone)

    def count(self) -> int:
        """Keys in quarantine now (expired ones are dropped on the way)."""
        now = self.clock()
        for key, until in list(self.quarantined.data.items()):
            if until <= now:
                del self.quarantined.data[key]
        return len(self.quarantined)

    # -- internals ----------------------------------------------------------------------------

    def _live(self, key: tuple[str, str]) -> bool:
        until = self.quarantined.data.get(key)
        if until is None:
            return False
        if until <= self.clock():
            del self.quarantined.data[key]
            return False
        return True

    def _quarantine(self, key: tuple[str, str]) -> None:
        q = self.quarantined
        if key not in q and len(q) >= q.size:
            self.count()  # drop the expired ones first
            if len(q) >= q.size:  # all live: the one expiring soonest goes
                soonest = min(q.data, key=q.data.__getitem__)
                del q.data[soonest]
                q.evicted += 1
        q.data[key] = self.clock() + self.period

    def _forget(self, key: tuple[str, str]) -> None:
        self.failures.pop(key)
        names = self.names.get(key[1])
        if names is not None:
            names.discard(key[0])
            if not names:
                del self.names[key[1]]
