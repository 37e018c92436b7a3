"""The user store: every record under ``auth.basic.etcd.path``, kept current by a watch.

Upstream reads a user's record when asked and refreshes its cache when the checksum changes.
Here the store reads the whole prefix once (one revision), then watches from that revision, so
a user added, changed or deleted takes effect as soon as etcd reports it (milliseconds). On any
etcd error it reconnects (the next URL, backoff from ``RETRY_FIRST`` to ``RETRY_MAX``) and
resyncs with a fresh read, so a change made while it was away is not missed.

``synced`` is False until the first full read: the guard answers 503 (retry) then, not 401,
so clients keep their messages. After that a lost connection keeps the last known users
(``connected`` says whether the watch is live; ``failing`` that the last attempt to reach etcd
failed, which is what the metric and the alert report: a worker still starting is not failing).

Records are kept as bytes; parsed ones live in an LRU of ``auth.basic.etcd.cache.size``
entries (named ``user``, as upstream's), keyed by (username, mod_revision).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from mgfast.auth import records
from mgfast.auth.config import EtcdConfig
from mgfast.auth.etcd import (DELETE, Change, EtcdClient, EtcdError, Entry, WatchCanceled,
                              describe)
from mgfast.auth.lru import Lru
from mgfast.auth.records import RecordError, UserRecord

log = logging.getLogger("mgfast.auth")

RETRY_FIRST = 0.1  # seconds before the first reconnect
RETRY_MAX = 2.0  # backoff cap: a restarted etcd is picked up within this


class UserStore:
    def __init__(self, config: EtcdConfig, client: EtcdClient | None = None) -> None:
        self.config = config
        self.client = client or EtcdClient(config)
        self.prefix = config.path.encode()
        self.raw: dict[str, tuple[int, bytes]] = {}  # username -> (mod_revision, record bytes)
        self.parsed: Lru[tuple[str, int], UserRecord | RecordError] = Lru(
            "user", config.cache.size)
        self.synced = False  # a full read has completed at least once
        self.connected = False  # the watch is live now
        self.failing = False  # the last attempt to reach etcd failed (cleared by a sync)
        self.revision = 0  # etcd revision the store reflects
        self.resyncs = 0  # full reads after the first
        self.task: asyncio.Task[None] | None = None

    # -- lookups (on the request path) ----------------------------------------------------------

    def get(self, username: str) -> UserRecord | RecordError | None:
        """The user's record, a RecordError if it cannot be used, None if there is none."""
        raw = self.raw.get(username)
        if raw is None:
            return None
        key = (username, raw[0])
        record = self.parsed.get(key)
        if record is None:
            record = self._parse(username, raw[1], log_error=False)
            self.parsed.put(key, record)
        return record

    def any_hash(self) -> str | None:
        """Some user's password hash (real argon2 parameters for an unknown user's dummy check)."""
        for username in self.raw:
            record = self.get(username)
            if isinstance(record, UserRecord):
                return record.password_hash
        return None

    # -- the sync loop ----------------------------------------------------------------------

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        await self.client.close()

    async def run(self) -> None:
        """Sync forever: read, watch, and on failure reconnect with backoff and read again."""
        delay = RETRY_FIRST
        outage_logged = False
        while True:
            try:
                await self.client.connect()
                revision, entries = await self.client.range_prefix(self.prefix)
                self._replace(revision, entries)
                self.connected = True
                self.failing = False
                if outage_logged or self.resyncs == 0:
                    log.info("user store synced", extra={
                        "etcd": self.client.endpoint, "users": len(self.raw),
                        "revision": revision})
                outage_logged = False
                delay = RETRY_FIRST
                async for changes in self.client.watch_prefix(self.prefix, revision + 1):
                    self._apply(changes)
            except asyncio.CancelledError:
                raise
            except (WatchCanceled, *EtcdError) as exc:
                self.connected = False
                self.failing = True
                if not outage_logged:
                    log.warning("etcd unavailable, retrying; the server keeps the users it has"
                                if self.synced else
                                "etcd unavailable, retrying; POST / answers 503 until the "
                                "users are read",
                                extra={"etcd": self.client.endpoint, "error": describe(exc),
                                       "fix": "check auth.basic.etcd urls, tls and "
                                              "credentials, and that etcd runs"})
                    outage_logged = True
            except Exception:  # a bug must not end authentication for the worker's lifetime
                self.connected = False
                self.failing = True
                log.exception("user store sync failed; retrying")
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    # -- applying etcd's answers ------------------------------------------------------------

    def _replace(self, revision: int, entries: Iterable[Entry]) -> None:
        raw: dict[str, tuple[int, bytes]] = {}
        for entry in entries:
            username = self._username(entry.key)
            if username is not None:
                raw[username] = (entry.mod_revision, entry.value)
        changed = [name for name, value in raw.items() if self.raw.get(name) != value]
        self.raw = raw
        for username in changed:
            self._check(username)
        if self.synced:
            self.resyncs += 1
        self.synced = True
        self.revision = revision

    def _apply(self, changes: Iterable[Change]) -> None:
        for change in changes:
            username = self._username(change.entry.key)
            if username is None:
                continue
            if change.kind == DELETE:
                self.raw.pop(username, None)
            else:
                self.raw[username] = (change.entry.mod_revision, change.entry.value)
                self._check(username)
            self.revision = max(self.revision, change.entry.mod_revision)

    def _check(self, username: str) -> None:
        """Parse a new record now, so a broken one is logged when it is written."""
        revision, data = self.raw[username]
        self.parsed.put((username, revision), self._parse(username, data, log_error=True))

    def _parse(self, username: str, data: bytes, *, log_error: bool
               ) -> UserRecord | RecordError:
        try:
            return records.parse(data, self.config.data_format)
        except RecordError as exc:
            if log_error:
                log.error("unusable user record: requests as this user get 500", extra={
                    "key": self.config.path + username, "problem": str(exc),
                    "fix": "rewrite it, e.g. with `mgfast users put`"})
            return exc

    def _username(self, key: bytes) -> str | None:
        name = key[len(self.prefix):]
        if not name:
            return None
        try:
            return name.decode()
        except UnicodeDecodeError:
            return None
