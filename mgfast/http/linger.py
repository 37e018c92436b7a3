"""Lingering close, as nginx's ``lingering_close``: half-close, then read and drop what comes.

Why: a server that closes a socket with unread input in its receive buffer makes the kernel
send RST instead of FIN, and the RST can cost the client answers it has not read yet (the ones
to the requests it pipelined before a rejected one) or make its next write fail before it reads
them; it then resends messages that were answered 200. So a closing connection instead sends
what is pending and its FIN (``write_eof``; for TLS, close_notify first), and goes on reading
and dropping input until the peer closes too, ``linger_time`` has passed, ``linger_timeout``
passed without input, or more than ``LINGER_MAX_BYTES`` arrived; then it closes. By then
nothing is left unread (the close resets nothing) or the peer has had its time.

``linger(transport, owner, limits, peer_closed=...)`` hands the socket's transport to a
``Lingering`` protocol (``set_protocol``), which forwards ``connection_lost`` to the protocol
it replaced: that one stays a live connection (a drain waits for it) until the socket closes.
Nothing read here is parsed or kept.

One timer per lingering connection rather than a ``Deadlines`` entry: watching a half-second
timeout would shorten the loop's sweep period for every connection for good, while a lingering
connection re-arms its timer only when it fires, not per read.
"""

from __future__ import annotations

import asyncio

from mgfast.config.model import HttpLimits

# Input dropped while lingering before giving up: bounds the CPU a client that keeps sending
# can take (memory is bounded anyway: nothing is kept). Twice the default http.max_body_size;
# a client that reads its answers as they come (mgfast's does) stops long before.
LINGER_MAX_BYTES = 64 * 1024 * 1024


def linger(transport: asyncio.Transport, owner: asyncio.BaseProtocol, limits: HttpLimits, *,
           peer_closed: bool) -> None:
    """Close ``transport`` (a socket's, with ``owner`` its protocol) after what is pending is
    written, lingering on its input unless the peer has closed its side already (``owner``
    saw EOF: nothing can be left unread) or the transport cannot half-close (the TLS app
    transport cannot: its close lingers on the socket). Once only."""
    try:
        can_half_close = transport.can_write_eof()
    except NotImplementedError:
        can_half_close = False
    if peer_closed or not can_half_close:
        transport.close()
    elif not transport.is_closing() and not isinstance(transport.get_protocol(), Lingering):
        Lingering(owner, limits).start(transport)


class Lingering(asyncio.Protocol):
    """The socket's protocol from the half-close on: input is counted and dropped; the socket
    closes on the peer's EOF, at ``linger_time``, after ``linger_timeout`` without input, or
    past ``LINGER_MAX_BYTES``."""

    def __init__(self, owner: asyncio.BaseProtocol, limits: HttpLimits) -> None:
        self.owner = owner  # gets connection_lost
        self.linger_time = limits.linger_time
        self.linger_timeout = limits.linger_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.ends = 0.0  # linger_time after the start
        self.last_read = 0.0
        self.dropped = 0  # bytes
        self.timer: asyncio.TimerHandle | None = None

    def start(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_protocol(self)
        try:
            transport.write_eof()  # after what is buffered: the answers go first, then the FIN
        except OSError:  # the peer reset it already (asyncio's shutdown raises ENOTCONN)
            transport.abort()
            return
        transport.resume_reading()  # the owner may have paused it (full pipeline, rejection)
        now = self.last_read = self.loop.time()
        self.ends = now + self.linger_time
        self.timer = self.loop.call_at(min(self.ends, now + self.linger_timeout), self._check)

    # -- asyncio protocol interface --------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.dropped += len(data)
        self.last_read = self.loop.time()
        if self.dropped > LINGER_MAX_BYTES:
            self._close()

    def eof_received(self) -> bool:
        self._cancel()
        return False  # the transport closes: both sides are done

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.transport = None
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        pass  # nothing more is written; the buffered answers leave as the peer reads them

    def resume_writing(self) -> None:
        pass

    # -- timeout ---------------------------------------------------------------------------

    def _check(self) -> None:
        self.timer = None
        now = self.loop.time()
        idle_until = self.last_read + self.linger_timeout
        if now >= self.ends or now >= idle_until:
            self._close()
        else:
            self.timer = self.loop.call_at(min(self.ends, idle_until), self._check)

    def _close(self) -> None:
        self._cancel()
        if self.transport is not None:
            self.transport.close()

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
