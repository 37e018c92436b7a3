"""One keep-alive HTTP/1.1 client connection (plain or TLS) with pipelined requests.

    connection = HttpClientConnection("127.0.0.1", 8080, ssl_context=None)
    await connection.connect()                # ConnectFailed / TlsFailed
    connection.on_response = handle        # handle(entry, response), in request order
    connection.on_failure = failed         # failed(entries, error): the unanswered ones
    connection.send(entries, request_bytes)   # as many as the caller allows, without waiting
    response = await connection.request(b"GET", b"/health", headers)   # one, awaited
    connection.close()                     # drops the FIFO without callbacks

Responses are parsed by httptools and settle the oldest unanswered entry, all inside event-loop
callbacks; a response byte-identical to a short 200 the parser read alone skips the parser
(up to 64 such answers are kept; a Date header changes them every second). On a break, a
response timeout (``response_timeout`` for the oldest request) or a malformed response,
``on_failure`` gets every unanswered entry with an :class:`HttpClientError` whose ``sent``
says whether the server may have processed them; after ``Connection: close`` the later ones
fail with :class:`ClosedByServer` (``sent`` false). A connection idle for longer than
``idle_reuse`` is not reused. Details: docs/protocol.md section 3.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import httptools

from mgfast.cancellation import cancelling, raise_if_cancelling

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect plus TLS handshake
RESPONSE_TIMEOUT = 60.0  # seconds from writing a request to its complete response
IDLE_REUSE = 4.0  # seconds idle after which a connection is replaced rather than reused
MAX_RESPONSE_BODY = 1024 * 1024  # bytes; gateway responses are tiny
LEARNT_BODY = 1024  # bytes: answers with longer bodies are always parsed
LEARNT_ANSWERS = 64  # answers matched without the parser; past this, they are learnt afresh


class HttpClientError(Exception):
    """A request failed without a response; ``sent``: the server may have processed it."""

    sent = True


class ConnectFailed(HttpClientError):
    """TCP connect failed or timed out; the request was not sent."""

    sent = False


class TlsFailed(ConnectFailed):
    """The TLS handshake failed (certificate rejected on either side); not sent."""


class ClosedByServer(HttpClientError):
    """Written after a response that closed the connection: the server did not read it."""

    sent = False


class ConnectionLost(HttpClientError):
    """The connection closed or broke before the complete response."""


class ResponseTimeout(HttpClientError):
    """No complete response within the response timeout; the connection is closed."""


class BadResponse(HttpClientError):
    """The response is not valid HTTP/1.1 (or its body is over MAX_RESPONSE_BODY)."""


class ClientResponse:
    __slots__ = ("status", "headers", "body", "keep_alive")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes,
                 keep_alive: bool) -> None:
        self.status = status
        self.headers = headers  # lower-case names; a repeated header keeps its last value
        self.body = body
        self.keep_alive = keep_alive

    def __repr__(self) -> str:
        return f"<ClientResponse {self.status} {self.body[:60]!r}>"


def request_head(method: bytes, path: bytes, headers: bytes, length: int) -> bytes:
    """A request's head; ``headers`` are ``name: value\\r\\n`` lines without Content-Length."""
    return b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n" % (method, path, headers, length)


class _ResponseProtocol(asyncio.Protocol):
    """One transport: feeds response bytes to llhttp and hands responses to the connection."""

    def __init__(self, connection: HttpClientConnection) -> None:
        self.connection = connection
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.paused = False  # the transport's write buffer is over its high-water mark
        # the response being parsed
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.headers_complete = False
        self.delimited = False  # the body has a length or is chunked (else it ends at EOF)
        # A server answers most requests with a few byte strings (a plain 200; an mgfast
        # server's batch answer for each item count): once the parser has read such an answer
        # alone (200, keep-alive, a short body of known length), identical ones at a response
        # boundary are answered without it (``_learnt_run``), the last one matched first.
        self.learnt: dict[bytes, ClientResponse] = {}  # whole answer -> its response
        self.learnt_heads: dict[bytes, int] = {}  # head, through the blank line -> body size
        self.last = b""  # the answer learnt or matched last (set with the first one learnt)
        self.last_response: ClientResponse | None = None
        self.in_message = False  # the parser is inside a response
        self.begun = 0  # responses begun in the current data_received
        self.completed: ClientResponse | None = None  # the last one, once complete

    # -- asyncio protocol interface --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # typeshed says BaseTransport; a stream connection gets a Transport (uvloop's
        # TCPTransport implements it without subclassing, so isinstance cannot narrow it)
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.learnt and not self.in_message:
            data = self._learnt_run(data)
            if not data or self.closed:
                return
        if not self.connection.pending:
            self._lost(BadResponse("bytes from the server with no request unanswered"))
            return
        learn = not self.in_message  # (again: a server whose answers carry a Date changes them)
        self.begun = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(BadResponse(f"malformed HTTP response: {exc}"))
            return
        response = self.completed
        if (learn and self.begun == 1 and response is not None and not self.in_message
                and response.status == 200 and response.keep_alive
                and len(response.body) <= LEARNT_BODY):
            self._learn(bytes(data), response)

    def _learn(self, answer: bytes, response: ClientResponse) -> None:
        """``answer``, which the parser read whole and alone, may be matched from now on."""
        head_end = answer.find(b"\r\n\r\n") + 4
        if head_end < 4 or len(answer) - head_end != len(response.body):
            return  # chunked: its length is not the head's to tell
        if len(self.learnt) >= LEARNT_ANSWERS:  # answers that change (a Date header)
            self.learnt.clear()
            self.learnt_heads.clear()
        self.learnt[answer] = response
        self.learnt_heads[answer[:head_end]] = len(response.body)
        self.last, self.last_response = answer, response

    def _learnt_run(self, data: bytes) -> bytes:
        """Answer the requests that the learnt answers at the start of ``data`` answer; what
        follows them (from a response boundary: the parser takes it)."""
        answered, learnt, heads = self.connection._answered, self.learnt, self.learnt_heads
        pending = self.connection.pending
        at = 0
        while pending and not self.closed:
            last = self.last  # learnt is not empty: neither is last
            if data.startswith(last, at):
                at += len(last)
                answered(self, self.last_response)  # type: ignore[arg-type]  # set with last
                continue
            end = data.find(b"\r\n\r\n", at) + 4
            size = heads.get(data[at:end]) if end >= 4 else None
            if size is None:
                break
            answer = data[at:end + size]
            response = learnt.get(answer)
            if response is None:
                break
            self.last, self.last_response = answer, response
            at = end + size
            answered(self, response)
        return data[at:] if at else data

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost follows

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.connection._writable(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.closed:
            return
        if self.headers_complete and not self.delimited and exc is None:
            self._respond(keep_alive=False)  # a body that ends with the connection
        if isinstance(exc, ssl.SSLError):
            # an alert from the server: it rejected the handshake (TLS 1.3 reports a refused
            # client certificate only after the client's side of the handshake completed)
            self._lost(TlsFailed(f"TLS rejected by the server: {exc}"))
        else:
            reason = f": {exc}" if exc else ""
            self._lost(ConnectionLost(f"connection closed before the response{reason}"))

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_message = True
        self.begun += 1
        self.completed = None
        self.headers = {}
        self.body = []
        self.body_size = 0
        self.headers_complete = False
        self.delimited = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers[name] = value
        if name == b"content-length" or (name == b"transfer-encoding"
                                         and b"chunked" in value.lower()):
            self.delimited = True

    def on_headers_complete(self) -> None:
        self.headers_complete = True

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > MAX_RESPONSE_BODY:
            raise httptools.HttpParserCallbackError(f"body over {MAX_RESPONSE_BODY} bytes")
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            self.in_message = False
            return  # an interim response (100 Continue): the real one follows
        self._respond(keep_alive=self.parser.should_keep_alive())

    # -- results ---------------------------------------------------------------------------

    def _respond(self, keep_alive: bool) -> None:
        self.headers_complete = self.in_message = False
        if self.closed:
            return  # the connection was given up while this buffer was being parsed
        body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        response = ClientResponse(self.parser.get_status_code(), self.headers, body, keep_alive)
        self.completed = response
        if not keep_alive:
            self.close()
        self.connection._answered(self, response)

    def _lost(self, error: HttpClientError) -> None:
        if not self.closed:
            self.close()
            self.connection._failed(self, error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClientConnection:
    """A keep-alive, pipelining connection to ``host:port``; see the module docs."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                 refresh_tls: Callable[[], ssl.SSLContext | None] | None = None,
                 server_hostname: str | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                 response_timeout: float = RESPONSE_TIMEOUT,
                 idle_reuse: float = IDLE_REUSE) -> None:
        # configuration
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.refresh_tls = refresh_tls  # called before each connect: the current context
        self.server_hostname = server_hostname or host
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_reuse = idle_reuse
        # the owner's callbacks for entries other than request()'s futures
        self.on_response: Callable[[Any, ClientResponse], None] | None = None
        self.on_failure: Callable[[list[Any], HttpClientError], None] | None = None
        self.on_writable: Callable[[], None] | None = None  # writes may go on (see writable)
        # state
        self.pending: deque[list[Any]] = deque()  # [entry, written at], oldest first
        self._protocol: _ResponseProtocol | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        # counters
        self.connects = 0  # transports opened; also a generation number for callers
        self.connect_failures = 0

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    @property
    def writable(self) -> bool:
        """The transport takes more without piling up: its write buffer is under its
        high-water mark (``on_writable`` says when it is again)."""
        return self._protocol is not None and not self._protocol.paused

    def _writable(self, protocol: _ResponseProtocol) -> None:
        if protocol is self._protocol and self.on_writable is not None:
            self.on_writable()

    def reusable(self) -> bool:
        """Open, and either busy or idle for less than ``idle_reuse`` seconds."""
        if not self.connected or self._loop is None:
            return False
        return bool(self.pending) or self._loop.time() - self._idle_since <= self.idle_reuse

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the transport unless a reusable one is open; raises ConnectFailed / TlsFailed."""
        if self.reusable():
            return
        self.close()
        loop = self._loop = asyncio.get_running_loop()
        if self.refresh_tls is not None:
            self.ssl_context = self.refresh_tls()
        kwargs: dict[str, Any] = {}
        if self.ssl_context is not None:
            kwargs = {"ssl": self.ssl_context, "server_hostname": self.server_hostname,
                      "ssl_handshake_timeout": self.connect_timeout}
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _ResponseProtocol(self), self.host, self.port,
                                       **kwargs),
                self.connect_timeout)
        except (ssl.SSLError, OSError) as exc:  # asyncio.TimeoutError is an OSError
            raise_if_cancelling()  # a failure that coincided with our cancellation
            self.connect_failures += 1
            raise self._connect_error(exc) from None
        if cancelling():
            protocol.close()
            raise_if_cancelling()
        self._protocol = protocol
        self._idle_since = loop.time()
        self.connects += 1

    def _connect_error(self, exc: BaseException) -> ConnectFailed:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, ssl.SSLError):
            return TlsFailed(f"TLS handshake with {where} failed: {exc.reason or exc}")
        if isinstance(exc, asyncio.TimeoutError):
            return ConnectFailed(f"connecting to {where} timed out after "
                                 f"{self.connect_timeout:g} s")
        return ConnectFailed(f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}")

    # -- requests --------------------------------------------------------------------------

    def send(self, entries: Sequence[Any], data: Sequence[bytes | bytearray | memoryview]
             ) -> None:
        """Write requests whose bytes are ``data`` (heads and bodies, in order), one per entry
        in ``entries``; the connection must be open (``connected``)."""
        protocol, loop = self._protocol, self._loop
        assert protocol is not None and protocol.transport is not None and loop is not None, \
            "send() needs an open connection"
        now = loop.time()
        pending = self.pending
        if not pending:
            self._arm(now + self.response_timeout)
        for entry in entries:
            pending.append([entry, now])
        transport = protocol.transport
        if len(data) == 1:
            transport.write(data[0])
        else:
            transport.writelines(data)

    async def request(self, method: bytes, path: bytes, headers: bytes = b"",
                      body: bytes | bytearray | memoryview = b"") -> ClientResponse:
        """Connect if needed, send one request after those in flight and await its response."""
        await self.connect()
        waiter: asyncio.Future[ClientResponse] = asyncio.get_running_loop().create_future()
        head = request_head(method, path, headers, len(body))
        self.send((waiter,), (head + body,) if len(body) < 65536 else (head, body))
        try:
            return await waiter
        except asyncio.CancelledError:
            self.close()  # the connection's state is unknown
            raise

    def _answered(self, protocol: _ResponseProtocol, response: ClientResponse) -> None:
        if protocol is not self._protocol or not self.pending:
            return
        entry = self.pending.popleft()[0]
        if self._loop is not None:  # set by connect(), before any response
            self._idle_since = self._loop.time()
        if isinstance(entry, asyncio.Future):
            if not entry.done():
                entry.set_result(response)
        elif self.on_response is not None:
            self.on_response(entry, response)
        if not response.keep_alive and protocol is self._protocol:
            self._failed(protocol, ClosedByServer("the server closed the connection after a "
                                                  "response; later requests were not read"))

    def _failed(self, protocol: _ResponseProtocol, error: HttpClientError) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._disarm()
        entries = [entry for entry, _ in self.pending]
        self.pending.clear()
        owned = []
        for entry in entries:
            if isinstance(entry, asyncio.Future):
                if not entry.done():
                    entry.set_exception(error)
            else:
                owned.append(entry)
        if owned and self.on_failure is not None:
            self.on_failure(owned, error)

    # -- deadline --------------------------------------------------------------------------

    def _arm(self, when: float) -> None:
        if self._timer is None and self._loop is not None:
            self._timer = self._loop.call_at(when, self._check_deadline)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        self._timer = None
        if not self.pending or self._protocol is None or self._loop is None:
            return
        deadline = self.pending[0][1] + self.response_timeout
        if self._loop.time() >= deadline:
            protocol = self._protocol
            protocol.close()
            self._failed(protocol, ResponseTimeout(
                f"no response within {self.response_timeout:g} s"))
        else:
            self._arm(deadline)

    def close(self) -> None:
        """Close the transport; unanswered entries are dropped (awaited ones fail)."""
        protocol, self._protocol = self._protocol, None
        self._disarm()
        if protocol is not None:
            protocol.close()
        entries = [entry for entry, _ in self.pending]
        self.pending.clear()
        for entry in entries:
            if isinstance(entry, asyncio.Future) and not entry.done():
                entry.set_exception(ConnectionLost("connection closed by the client"))
