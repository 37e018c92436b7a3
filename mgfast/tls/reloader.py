"""Keep the server's TLS material current without a restart.

Every ``recheck_interval`` (and at once on SIGHUP) the reloader compares the identity files and
the hash directory with what it saw last. On a change it builds a fresh SSLContext, so new
handshakes use the new certificate and a fresh store (a removed CA is forgotten too, which
OpenSSL's cached lookup alone would not do), then re-verifies every live connection's client
certificate and closes those that no longer pass. Open connections keep their session otherwise.
A context that fails to build is logged and the previous one stays in use.

With ``tls.session_tickets`` on, every context gets the ticket key of the current period
(``mgfast.tls.tickets``), a fresh one as well, and a timer re-keys the context in use when the
period changes. A resumed session skipped certificate verification, so ``resumed_verdict`` checks
its certificate against the store as it is now: it first looks whether the hash directory itself
changed (one ``stat``; a CA certificate or CRL added or removed) and reloads at once if so, then
asks a ``PeerVerifier`` of the current store, whose verdicts are cached per certificate until the
store changes or the next ``recheck_interval`` tick (a certificate may expire meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Callable

from mgfast.config.model import ServerTls
from mgfast.tls.context import TlsSetupError, server_context
from mgfast.tls.peer_verifier import PeerVerifier
from mgfast.tls.server_protocol import OPEN, TlsServerProtocol
from mgfast.tls.tickets import TicketKeys, enable as enable_tickets, install_key, new_secret

log = logging.getLogger("mgfast.tls")

# (path, mtime_ns, size, inode), or (path, None) when it cannot be read: a change in any one
# means a reload; ("<unreadable>",) stands for a hash directory that cannot be listed
FileStamp = tuple[str, int, int, int] | tuple[str, None] | tuple[str]
VERDICT_CACHE = 10_000  # certificates whose resumed-session verdict is remembered, at most
ROTATE_MARGIN = 0.001  # seconds after a period starts before the re-key timer looks again


def _stat(path: Path) -> FileStamp:
    try:
        st = os.stat(path)
        return (str(path), st.st_mtime_ns, st.st_size, st.st_ino)
    except OSError:
        return (str(path), None)


class TlsReloader:
    def __init__(self, tls: ServerTls, ticket_secret: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """``ticket_secret``: the supervisor's, the same in all workers (a fresh one if None)."""
        self.tls = tls
        self.tickets: TicketKeys | None = None
        if tls.session_tickets.enabled:
            self.tickets = TicketKeys(ticket_secret or new_secret(),
                                      tls.session_tickets.rotate_interval, clock)
        self.ticket_period: int | None = None  # of the key in the context in use
        self.context: ssl.SSLContext = self._build()
        self.live: weakref.WeakSet[TlsServerProtocol] = weakref.WeakSet()
        self.directory_stamp = self._directory_stamp()
        self.signature = self._signature()
        self.reloads = 0
        self.closed_by_reason: Counter[str] = Counter()  # live connections cut, for metrics
        self._verifier: PeerVerifier | None = None  # of the current store, built when needed
        self._verdicts: dict[bytes, str | None] = {}
        self._task: asyncio.Task[None] | None = None
        self._rotation: asyncio.TimerHandle | None = None

    @property
    def resumption(self) -> bool:
        """Whether this server issues and accepts session tickets."""
        return self.ticket_period is not None

    def track(self, protocol: TlsServerProtocol) -> None:
        """Watch a connection whose handshake succeeded."""
        if self.tls.peers is not None and protocol.peer_leaf_der:
            self.live.add(protocol)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch())
        self._schedule_rotation()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._rotation is not None:
            self._rotation.cancel()

    def resumed_verdict(self, leaf_der: bytes | None) -> str | None:
        """None if a resumed session's client certificate still verifies, else the reason."""
        peers = self.tls.peers
        if peers is None:
            return None
        if not leaf_der:
            return "no_certificate"
        if self._directory_stamp() != self.directory_stamp:
            self.reload()  # a CRL just dropped in bites now, as it does for a full handshake
        return self._verdict(leaf_der)

    def _verdict(self, leaf_der: bytes) -> str | None:
        """The current store's verdict on a client certificate (cached until the next
        reload); the caller checked that client certificates are verified."""
        try:
            return self._verdicts[leaf_der]
        except KeyError:
            pass
        if self._verifier is None:
            peers = self.tls.peers
            assert peers is not None  # the callers' condition
            self._verifier = PeerVerifier(Path(peers.lookup_hash_directory), peers.crl_enabled)
        verdict = self._verdicts[leaf_der] = self._verifier.verdict(leaf_der)
        if len(self._verdicts) > VERDICT_CACHE:
            self._verdicts.clear()
        return verdict

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild the context and re-verify live connections if anything changed (or force)."""
        self.directory_stamp = self._directory_stamp()
        signature = self._signature()
        if not force and signature == self.signature:
            return False
        self.signature = signature
        self._verifier = None
        self._verdicts.clear()
        try:
            self.context = self._build()
        except (TlsSetupError, ssl.SSLError, OSError) as exc:
            log.error("TLS reload failed; still using the previous certificates",
                      extra={"error": str(exc)})
            return False
        self.reloads += 1
        log.info("TLS material reloaded", extra={"live_connections": len(self.live)})
        self._recheck_live()
        return True

    # -- internals ---------------------------------------------------------------------------

    def _build(self) -> ssl.SSLContext:
        context = server_context(self.tls)
        if self.tickets is not None:
            period = self.tickets.period()
            ok = enable_tickets(context, self.tickets.key(period), self.tickets.rotate_interval)
            self.ticket_period = period if ok else None
        return context

    def _schedule_rotation(self) -> None:
        if self.tickets is None or self.ticket_period is None:
            return
        self._rotation = asyncio.get_running_loop().call_later(
            self.tickets.seconds_to_next_period() + ROTATE_MARGIN, self._rotate)

    def _rotate(self) -> None:
        """The next period's key, into the context in use (new handshakes get it at once)."""
        assert self.tickets is not None
        period = self.tickets.period()
        if period != self.ticket_period:
            if install_key(self.context, self.tickets.key(period)):
                self.ticket_period = period
                log.debug("TLS session ticket key rotated", extra={"period": period})
            else:
                log.error("TLS session ticket key rotation failed; keeping the previous key")
        self._schedule_rotation()

    async def _watch(self) -> None:
        interval = self.tls.recheck_interval
        while True:
            await asyncio.sleep(interval)
            self._verdicts.clear()  # a certificate may have expired since its verdict
            try:
                self.reload()
            except Exception:  # the watcher must outlive any one bad reload
                log.exception("TLS reload check failed")

    def _directory_stamp(self) -> tuple[int, int] | None:
        """(mtime, inode) of the hash directory: adding or removing a file changes it."""
        if self.tls.peers is None:
            return None
        try:
            st = os.stat(self.tls.peers.lookup_hash_directory)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino)

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
        if self.tls.peers is None or not self.live:
            return
        for protocol in list(self.live):
            if protocol.state != OPEN or not protocol.peer_leaf_der:
                continue
            reason = self._verdict(protocol.peer_leaf_der)
            if reason is None:
                continue
            self.closed_by_reason[reason] += 1
            self.live.discard(protocol)
            log.warning("closing a live connection: its client certificate no longer verifies",
                        extra={"reason": reason, "peer": protocol.peer})
            protocol.close()
