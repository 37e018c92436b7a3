"""Keep the server's TLS material current without a restart.

Every ``recheck_interval`` (and at once on SIGHUP) the reloader compares the identity files and
the hash directory with what it saw last. On a change it builds a fresh SSLContext, so new
handshakes use the new certificate and a fresh store (a removed CA is forgotten too, which
OpenSSL's cached lookup alone would not do), then re-verifies every live connection's client
certificate and closes those that no longer pass. Open connections keep their session otherwise.
A context that fails to build is logged and the previous one stays in use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import weakref
from collections import Counter
from pathlib import Path

from mgfast.config.model import ServerTls
from mgfast.tls.context import TlsSetupError, server_context
from mgfast.tls.peer_verifier import PeerVerifier
from mgfast.tls.server_protocol import OPEN, TlsServerProtocol

log = logging.getLogger("mgfast.tls")

# (path, mtime_ns, size, inode), or (path, None) when it cannot be read: a change in any one
# means a reload; ("<unreadable>",) stands for a hash directory that cannot be listed
FileStamp = tuple[str, int, int, int] | tuple[str, None] | tuple[str]


def _stat(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
        return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return (str(path), None)


class TlsReloader:
    def __init__(self, tls: ServerTls) -> None:
        self.tls = tls
        self.context: ssl.SSLContext = server_context(tls)
        self.live: weakref.WeakSet[TlsServerProtocol] = weakref.WeakSet()
        self.signature = self._signature()
        self.reloads = 0
        self.closed_by_reason: Counter[str] = Counter()  # live connections cut, for metrics
        self._task: asyncio.Task[None] | None = None

    def track(self, protocol: TlsServerProtocol) -> None:
        """Watch a connection whose handshake succeeded."""
        if self.tls.peers is not None and protocol.peer_leaf_der:
            self.live.add(protocol)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild the context and re-verify live connections if anything changed (or force)."""
        signature = self._signature()
        if not force and signature == self.signature:
            return False
        self.signature = signature
        try:
            self.context = server_context(self.tls)
        except (TlsSetupError, ssl.SSLError, OSError) as exc:
            log.error("TLS reload failed; still using the previous certificates",
                      extra={"error": str(exc)})
            return False
        self.reloads += 1
        log.info("TLS material reloaded", extra={"live_connections": len(self.live)})
        self._recheck_live()
        return True

    # -- internals ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        interval = self.tls.recheck_interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("TLS reload check failed")

    def _signature(self) -> tuple[FileStamp, ...]:
        paths = [self.tls.identity.certificate, self.tls.identity.key]
        entries: tuple[FileStamp, ...] = ()
        if self.tls.peers is not None:
            directory = Path(self.tls.peers.lookup_hash_directory)
            try:
                entries = tuple(sorted(_stat(directory / name) for name in os.listdir(directory)))
            except OSError:
                entries = (("<unreadable>",),)
        return tuple(_stat(Path(p)) for p in paths) + entries

    def _recheck_live(self) -> None:
        peers = self.tls.peers
        if peers is None or not self.live:
            return
        verifier = PeerVerifier(Path(peers.lookup_hash_directory), peers.crl_enabled)
        for protocol in list(self.live):
            if protocol.state != OPEN or not protocol.peer_leaf_der:
                continue
            reason = verifier.verdict(protocol.peer_leaf_der)
            if reason is None:
                continue
            self.closed_by_reason[reason] += 1
            self.live.discard(protocol)
            log.warning("closing a live connection: its client certificate no longer verifies",
                        extra={"reason": reason, "peer": protocol.peer})
            protocol.close()
