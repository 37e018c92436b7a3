"""Server-side TLS on memory BIOs, wrapping an application protocol.

Why not the event loop's own TLS transport: asyncio's and uvloop's close a rejected connection
without writing the pending TLS alert, so curl reports "Empty reply from server" instead of
"alert certificate revoked". Here every exit path flushes the outgoing BIO before closing.

A resumed session (a TLS session ticket) skips OpenSSL's certificate verification, so a client
revoked after it got its ticket could come back. With ``recheck_resumed``, the certificate of a
resumed session is verified against the store as it is now, before the application sees the
connection; if it no longer passes, the connection is closed (the ticket OpenSSL just wrote for
it is never sent) and reported with the reason, as a failed handshake is.

States::

    HANDSHAKE --ok--> OPEN --close/EOF--> CLOSED
        \\--failure, timeout or refused resumption (alert flushed)--> CLOSED

A close (after close_notify) or a rejected handshake (after its alert) lingers on the socket as
the plain HTTP server does (``http/linger.py``): the client's unread input cannot turn the FIN
into a RST that loses the answers, or the alert, on their way.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import socket
import ssl
import time
from typing import Any, Callable

from mgfast.config.model import HttpLimits
from mgfast.http.linger import linger
from mgfast.tls.outcome import HandshakeOutcome, classify
from mgfast.tls.peer_certificate import stop_capturing

log = logging.getLogger("mgfast.tls")

# Plaintext read per SSLObject.read call, into one buffer per process: the application
# consumes it synchronously, and a fresh bytes object per call would cost an allocation of
# this size for every record.
READ_CHUNK = 256 * 1024
_read_buffer = bytearray(READ_CHUNK)
_read_view = memoryview(_read_buffer)

class TlsState(enum.Enum):
    """The connection's states. Only a finished handshake opens (``_opened`` checks it);
    anything may close."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSED = "closed"


HANDSHAKE, OPEN, CLOSED = TlsState.HANDSHAKE, TlsState.OPEN, TlsState.CLOSED
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux


class TlsServerProtocol(asyncio.Protocol):
    def __init__(self, context: ssl.SSLContext, app: asyncio.Protocol, *,
                 handshake_timeout: float,
                 on_handshake: Callable[[HandshakeOutcome, "TlsServerProtocol"], None],
                 limits: HttpLimits = HttpLimits(),
                 recheck_resumed: Callable[[bytes | None], str | None] | None = None) -> None:
        # global
        self.context = context
        self.handshake_timeout = handshake_timeout
        self.limits = limits  # how long a close lingers
        self.on_handshake = on_handshake
        self.recheck_resumed = recheck_resumed  # certificate -> None, or why it is refused
        # per connection
        self.app = app
        # the app's buffer for the next bytes of a large body, decrypted there uncopied
        self.body_target: Callable[[], memoryview | None] | None = getattr(
            app, "body_target", None)
        self.app_transport = _AppTransport(self)
        self.transport: asyncio.Transport | None = None
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.sslobj: ssl.SSLObject | None = None
        self.state: TlsState = HANDSHAKE
        self.started = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.peer = ""
        self.peer_leaf_der: bytes | None = None
        self.plaintext: list[bytes] = []  # written by the app this loop iteration, not yet sent
        self.loop: asyncio.AbstractEventLoop | None = None
        self.peer_closed = False  # EOF seen on the socket: nothing left to linger on

    # -- asyncio protocol interface --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        self.sslobj = self.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.started = time.monotonic()
        loop = self.loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.handshake_timeout, self._on_handshake_timeout)

    def data_received(self, data: bytes) -> None:
        self.incoming.write(data)
        if self.state == HANDSHAKE:
            self._do_handshake()
        if self.state == OPEN:
            self._read_plaintext()

    def eof_received(self) -> bool | None:
        self.peer_closed = True
        self.incoming.write_eof()
        if self.state == HANDSHAKE:
            self._handshake_failed(ConnectionResetError("peer closed during the handshake"))
            return None
        if self.state == OPEN:
            self._read_plaintext()
            if self.state == OPEN:
                keep_open = self.app.eof_received()
                if not keep_open:
                    self.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.state = CLOSED
        self._cancel_timer()
        if was == HANDSHAKE:
            self._report(ConnectionResetError(str(exc or "closed during the handshake")))
        elif was == OPEN or self.app_transport.app_connected:
            self.app_transport.app_connected = False
            self.app.connection_lost(exc)
        self.transport = None

    # -- handshake flow --------------------------------------------------------------------

    def _do_handshake(self) -> None:
        try:
            self.sslobj.do_handshake()  # type: ignore[union-attr]
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as exc:
            self._handshake_failed(exc)
            return
        self._cancel_timer()
        sslobj = self.sslobj
        stop_capturing(sslobj)  # type: ignore[arg-type]  # no Python call per record from now on
        if sslobj.session_reused and self.recheck_resumed is not None:  # type: ignore[union-attr]
            # no Certificate message in a resumed handshake: the session's own certificate
            self.peer_leaf_der = sslobj.getpeercert(binary_form=True)  # type: ignore[union-attr]
            refused = self.recheck_resumed(self.peer_leaf_der)
            if refused is not None:
                self._refuse_resumed(refused)
                return
        else:
            self.peer_leaf_der = getattr(sslobj, "peer_leaf_der", None)
        self._opened()
        if not self.outgoing.pending:
            self._ack_now()
        self._flush()
        self._report(None)
        self.app_transport.app_connected = True
        self.app.connection_made(self.app_transport)

    def _handshake_failed(self, exc: BaseException) -> None:
        self._cancel_timer()
        self.state = CLOSED
        self.peer_leaf_der = getattr(self.sslobj, "peer_leaf_der", None)
        self._flush()  # the alert: the whole point of driving the BIOs ourselves
        self._report(exc)
        self._close_socket()

    def _opened(self) -> None:
        if self.state is not HANDSHAKE:  # e.g. a timeout closed it while a read was running
            raise RuntimeError(f"TLS connection from {self.peer}: {self.state.value} -> open")
        self.state = OPEN

    def _ack_now(self) -> None:
        """ACK the client's Finished at once. With no session ticket to send, the server has
        nothing to say after a TLS 1.3 handshake, so the kernel delays the ACK (40 ms on Linux);
        a client that leaves Nagle's algorithm on (Python's own ``socket``) holds its request
        until that ACK arrives: 40 ms per connection. Tickets used to carry the ACK."""
        if _QUICKACK is None or self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass  # not TCP (a Unix socket in tests), or gone already

    def _refuse_resumed(self, reason: str) -> None:
        self.outgoing.read()  # a new session ticket, among others: not for this client
        self._close_notify()
        self._report(None, reason=reason,
                     detail="resumed session: the client certificate no longer verifies")
        self._close_socket()

    def _on_handshake_timeout(self) -> None:
        self.timer = None
        if self.state == HANDSHAKE:
            self.state = CLOSED
            self._report(TimeoutError("handshake not finished in time"))
            if self.transport is not None:
                self.transport.abort()

    def _report(self, exc: BaseException | None, *, reason: str | None = None,
                detail: str = "") -> None:
        if reason is None:
            reason = classify(exc)
        if exc is not None:
            detail = getattr(exc, "verify_message", "") or getattr(exc, "reason", "") or str(exc)
        outcome = HandshakeOutcome(
            reason=reason, duration=time.monotonic() - self.started, peer=self.peer,
            detail=str(detail), certificate=self.peer_leaf_der)
        try:
            self.on_handshake(outcome, self)
        except Exception:
            log.exception("handshake observer failed")

    # -- outgoing flow ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue plaintext; what the app writes in one loop iteration (the answers to a run of
        pipelined requests) is encrypted as one record and sent in one socket write."""
        if self.state != OPEN:
            return
        plaintext = self.plaintext
        plaintext.append(data if data.__class__ is bytes else bytes(data))
        if len(plaintext) == 1:
            self.loop.call_soon(self._send_plaintext)  # type: ignore[union-attr]

    def _send_plaintext(self) -> None:
        plaintext = self.plaintext
        if not plaintext or self.state != OPEN:
            plaintext.clear()
            return
        data = plaintext[0] if len(plaintext) == 1 else b"".join(plaintext)
        plaintext.clear()
        try:
            self.sslobj.write(data)  # type: ignore[union-attr]
        except ssl.SSLError as exc:
            log.debug("TLS write failed", extra={"peer": self.peer, "error": str(exc)})
            self.abort()
            return
        self._flush()

    def _flush(self) -> None:
        if self.outgoing.pending and self.transport is not None:
            self.transport.write(self.outgoing.read())

    def close(self) -> None:
        """Send close_notify, then close the socket once written, lingering on its input."""
        if self.state == OPEN:
            self._send_plaintext()  # what the app wrote before closing goes first
        if self.state == OPEN:
            self._close_notify()
        self._close_socket()

    def _close_notify(self) -> None:
        self.state = CLOSED
        try:
            self.sslobj.unwrap()  # type: ignore[union-attr]
        except (ssl.SSLError, OSError):
            pass  # we do not wait for the peer's close_notify
        self._flush()

    def _close_socket(self) -> None:
        """What is flushed leaves first; what comes after is read and dropped, never
        decrypted (``linger`` replaces this protocol on the socket until it closes)."""
        if self.transport is not None:
            linger(self.transport, self, self.limits, peer_closed=self.peer_closed)

    def abort(self) -> None:
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()

    # -- incoming flow ---------------------------------------------------------------------

    def _read_plaintext(self) -> None:
        sslobj, incoming, app = self.sslobj, self.incoming, self.app
        read = sslobj.read  # type: ignore[union-attr]
        body_target = self.body_target
        while self.state == OPEN:
            target = body_target() if body_target is not None else None
            try:
                # typeshed: read() returns bytes; given a buffer it returns the count
                if target is None:
                    count: int = read(READ_CHUNK, _read_buffer)  # type: ignore[assignment]
                else:
                    count = read(len(target), target)  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._flush()
                if not app.eof_received():
                    self.close()
                return
            except (ssl.SSLError, OSError) as exc:
                log.debug("TLS read failed", extra={"peer": self.peer, "error": str(exc)})
                self._flush()
                self.abort()
                return
            if not count:
                break
            if target is None:
                app.data_received(_read_view[:count])  # type: ignore[arg-type]  # any buffer
            else:
                app.body_received(count)  # type: ignore[attr-defined]  # with body_target
            if not incoming.pending and not sslobj.pending():  # type: ignore[union-attr]
                break  # all read: another read would only raise SSLWantReadError
        self._flush()  # key updates, session tickets

    # -- flow control ----------------------------------------------------------------------

    def pause_writing(self) -> None:
        if self.app_transport.app_connected:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app_transport.app_connected:
            self.app.resume_writing()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _AppTransport(asyncio.Transport):
    """What the application protocol sees: plaintext in, plaintext out."""

    def __init__(self, tls: TlsServerProtocol) -> None:
        super().__init__()
        self.tls = tls
        self.app_connected = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.tls.write(data)

    def can_write_eof(self) -> bool:
        return False  # close() sends close_notify and lingers on the socket itself

    def close(self) -> None:
        self.tls.close()

    def abort(self) -> None:
        self.tls.abort()

    def is_closing(self) -> bool:
        return self.tls.state != OPEN

    def pause_reading(self) -> None:
        if self.tls.transport is not None:
            self.tls.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.tls.transport is not None:
            self.tls.transport.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls.sslobj
        if name == "peercert_der":
            return self.tls.peer_leaf_der
        if self.tls.transport is None:
            return default
        return self.tls.transport.get_extra_info(name, default)
