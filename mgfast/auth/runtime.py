"""Basic authentication in one worker: the user store, the guard and the eviction watch,
started and stopped together."""

from __future__ import annotations

import os
from typing import Any

from mgfast.auth import peers
from mgfast.auth.config import BasicAuthConfig
from mgfast.auth.guard import Guard
from mgfast.auth.lru import EvictionWatch, Lru
from mgfast.auth.store import UserStore


class AuthRuntime:
    def __init__(self, config: BasicAuthConfig) -> None:
        self.config = config
        self.store = UserStore(config.etcd)
        self.guard = Guard(config, self.store)
        self.watch = EvictionWatch()
        self.peers: peers.PeerEvents | None = None
        self.watch.add(self.store.parsed, config.etcd.cache.usage)
        self.watch.add(self.guard.results, config.cache.usage)
        if self.guard.quarantine is not None:
            self.watch.add(self.guard.quarantine.failures, config.cache.usage)
            self.watch.add(self.guard.quarantine.quarantined, config.cache.usage)

    def caches(self) -> list[Lru[Any, Any]]:
        """The LRU maps, for the eviction metric."""
        found: list[Lru[Any, Any]] = [self.store.parsed, self.guard.results]
        if self.guard.quarantine is not None:
            found += [self.guard.quarantine.failures, self.guard.quarantine.quarantined]
        return found

    def start(self) -> None:
        """Call on the worker's loop: starts syncing users from etcd (and, with sibling
        workers, sharing failed attempts with them)."""
        self.store.start()
        self.watch.start()
        directory = os.environ.get(peers.ENV)
        quarantine = self.guard.quarantine
        if directory and quarantine is not None:
            self.peers = peers.PeerEvents(directory, quarantine.apply)
            self.peers.start()
            quarantine.publish = self.peers.publish

    async def stop(self) -> None:
        if self.peers is not None:
            self.peers.close()
        self.watch.stop()
        await self.store.stop()
        self.guard.close()
