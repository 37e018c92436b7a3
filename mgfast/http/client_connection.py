"""One keep-alive HTTP/1.1 client connection (plain or TLS), reconnected on demand.

    connection = HttpClientConnection("127.0.0.1", 8080, ssl_context=None)
    response = await connection.request(b"POST", b"/", headers, body)
    response.status, response.headers[b"content-type"], response.body
    connection.close()

One request at a time (no pipelining): the caller awaits each response before sending the next
request, which is what keeps a retried request from being overtaken. The transport is opened
lazily by ``request`` (or ``connect``) and reopened after it was closed by either side, after a
``Connection: close`` response, after an error, and before a request when it sat idle longer
than ``idle_reuse`` seconds (servers close idle keep-alive connections on their own schedule,
actix-web after 5 s; reusing one at that moment races with the close and turns a harmless
reconnect into an error whose request may or may not have been processed).

Failures raise :class:`HttpClientError` subclasses whose ``sent`` attribute says whether the
request may have reached the server: ``False`` when it certainly did not (connect or TLS
handshake failed, the server alerted during the TLS handshake), ``True`` otherwise (the
connection broke, or no response came in time, after the request was written). A caller that
resends after a ``sent`` failure may deliver the request twice.

Responses are parsed by httptools (llhttp). A response body larger than
``MAX_RESPONSE_BODY`` is refused: gateway answers are a few bytes of text or JSON.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

import httptools

from mgfast.cancellation import cancelling, raise_if_cancelling

CONNECT_TIMEOUT = 10.0  # seconds for TCP connect plus TLS handshake
RESPONSE_TIMEOUT = 60.0  # seconds from writing a request to its complete response
IDLE_REUSE = 4.0  # seconds idle after which a connection is replaced rather than reused
MAX_RESPONSE_BODY = 1024 * 1024  # bytes; gateway responses are tiny
SMALL_BODY = 64 * 1024  # below this the head and body go out in one write (one copy is cheap)


class HttpClientError(Exception):
    """A request failed without a response; ``sent``: the server may have processed it."""

    sent = True


class ConnectFailed(HttpClientError):
    """TCP connect failed or timed out; the request was not sent."""

    sent = False


class TlsFailed(ConnectFailed):
    """The TLS handshake failed (certificate rejected on either side); not sent."""


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


class _ResponseProtocol(asyncio.Protocol):
    """One transport: feeds the response bytes to llhttp and completes the waiting future."""

    def __init__(self) -> None:
        # per connection
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        # per request
        self.waiter: asyncio.Future | None = None
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []
        self.body_size = 0
        self.headers_complete = False
        self.delimited = False  # the body has a length or is chunked (else it ends at EOF)

    # -- asyncio protocol interface --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for: the connection's state is unknown
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"malformed HTTP response: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        self.closed = True  # not reusable, whatever happens to a response in progress
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.headers_complete and not self.delimited and exc is None:
            self._complete(keep_alive=False)  # a body that ends with the connection
        elif isinstance(exc, ssl.SSLError):
            # an alert from the server: it rejected the handshake (TLS 1.3 reports a refused
            # client certificate only after the client's side of the handshake completed)
            self._fail(TlsFailed(f"TLS rejected by the server: {exc}"))
        else:
            reason = f": {exc}" if exc else ""
            self._fail(ConnectionLost(f"connection closed before the response{reason}"))

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
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
            self._fail(BadResponse(f"response body over {MAX_RESPONSE_BODY} bytes"))
            self.close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.parser.get_status_code() < 200:
            return  # an interim response (100 Continue): the real one follows
        self._complete(keep_alive=self.parser.should_keep_alive())

    # -- completion ------------------------------------------------------------------------

    def begin(self, waiter: asyncio.Future) -> None:
        self.waiter = waiter
        self.headers_complete = False

    def _complete(self, keep_alive: bool) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            body = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            waiter.set_result(ClientResponse(self.parser.get_status_code(), self.headers, body,
                                              keep_alive))

    def _fail(self, exc: HttpClientError) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def on_timeout(self) -> None:
        self._fail(ResponseTimeout("no response in time"))
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpClientConnection:
    """A keep-alive connection to ``host:port``; see the module docs."""

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
        # state
        self._protocol: _ResponseProtocol | None = None
        self._busy = False
        self._idle_since = 0.0
        # counters
        self.connects = 0  # transports opened; also a generation number for callers
        self.connect_failures = 0

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    async def connect(self) -> None:
        """Open the transport unless a usable one is open; raises ConnectFailed / TlsFailed."""
        loop = asyncio.get_running_loop()
        if self.connected and loop.time() - self._idle_since <= self.idle_reuse:
            return
        self.close()
        if self.refresh_tls is not None:
            self.ssl_context = self.refresh_tls()
        kwargs: dict = {}
        if self.ssl_context is not None:
            kwargs = {"ssl": self.ssl_context, "server_hostname": self.server_hostname,
                      "ssl_handshake_timeout": self.connect_timeout}
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(_ResponseProtocol, self.host, self.port, **kwargs),
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

    async def request(self, method: bytes, path: bytes, headers: bytes = b"",
                      body: bytes | bytearray | memoryview = b"") -> ClientResponse:
        """Send one request and return its response.

        ``headers`` is the pre-encoded header block (``name: value\\r\\n`` lines, without
        Content-Length, which is added here).
        """
        if self._busy:
            raise RuntimeError("HttpClientConnection.request is not re-entrant")
        self._busy = True
        try:
            await self.connect()
            return await self._exchange(method, path, headers, body)
        finally:
            self._busy = False

    async def _exchange(self, method: bytes, path: bytes, headers: bytes,
                        body: bytes | bytearray | memoryview) -> ClientResponse:
        protocol = self._protocol
        transport = protocol.transport  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        protocol.begin(waiter)  # type: ignore[union-attr]
        head = b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n\r\n" % (
            method, path, headers, len(body))
        if len(body) < SMALL_BODY:
            transport.write(head + body)  # type: ignore[union-attr]
        else:
            transport.write(head)  # type: ignore[union-attr]
            transport.write(body)  # type: ignore[union-attr]
        timer = loop.call_later(self.response_timeout, protocol.on_timeout)  # type: ignore
        try:
            response = await waiter
        except BaseException:
            self.close()  # the connection's state is unknown (also when cancelled)
            raise
        finally:
            timer.cancel()
        if not response.keep_alive:
            self.close()
        self._idle_since = loop.time()
        return response

    def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
