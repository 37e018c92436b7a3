"""The server side of one HTTP/1.1 connection: parse, enforce limits and deadlines, dispatch.

Requests on one connection are answered strictly in order (pipelined ones wait in a queue, and
reading pauses while the queue is full), which is what keeps per-source order end to end.
The protocol knows nothing of Savant: an ``App`` turns a ``Request`` into a ``Response``.
Requests that repeat the head of one the parser read skip the parser (``repeated_head.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Awaitable, Callable, Protocol as TypingProtocol, Union

import httptools

from mgfast._zmq_io import ZERO_COPY_MIN, SendBuffer
from mgfast.config.model import HttpLimits
from mgfast.http import responses
from mgfast.http.deadlines import Deadline, Deadlines
from mgfast.http.linger import linger
from mgfast.http.repeated_head import RepeatedHead
from mgfast.http.responses import Response

log = logging.getLogger("mgfast.http")

Buffer = Union[bytes, memoryview]  # what arrives: a socket's bytes, or a view of decrypted ones

# Pipelined requests buffered per connection before reading pauses.
MAX_PIPELINED = 16
# Reads at a request boundary in which a connection looks for a head to repeat (one request,
# whole and alone): a client's first requests go one at a time while its pipeline opens.
LEARN_TRIES = 4


class _Stop(Exception):
    """Raised in a parser callback once the request is answered with an error: parsing stops
    at once, so nothing after the bad part is buffered or looked at."""


class Request:
    """One request, and its parsing state while it is parsed (as uvicorn's request cycle: a
    new request starts from fresh state, nothing to reset). The body is bytes when it came in
    one piece, a ``SendBuffer`` when it announced a large length (its frames then reach libzmq
    uncopied), else bytes joined from its pieces once it is whole (a growing buffer would
    hold its old and new copies at once on each reallocation: up to twice an unannounced
    body's size while it arrives). ``peer`` (the client's IP address) is set only by
    ``AddressedHttpServerProtocol``."""

    __slots__ = ("method", "path", "content_type", "authorization", "body", "keep_alive",
                 "peer", "head_size", "head_spill", "body_size", "content_length",
                 "expect_continue", "pieces")

    peer: str  # set by AddressedHttpServerProtocol only

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.content_type = b""
        self.authorization = b""
        self.body: bytes | SendBuffer = b""
        self.keep_alive = True
        self.pieces: list[bytes] | None = None  # a body's pieces while it arrives, if several
        # parsing
        self.head_size = 0  # bytes of request line and headers the parser has handed over
        self.head_spill = 0  # bytes of whole reads that fell inside the unfinished head
        self.body_size = 0
        self.content_length: int | None = None  # llhttp validates the header itself
        self.expect_continue = False


class App(TypingProtocol):
    def handle(self, request: Request) -> Response | Awaitable[Response]: ...


class HttpServerProtocol(asyncio.Protocol):
    def __init__(self, app: App, limits: HttpLimits,
                 connections: set[HttpServerProtocol] | None = None,
                 statuses: Counter[int] | None = None) -> None:
        # global
        self.app = app
        self.limits = limits
        self.connections = connections if connections is not None else set()
        self.statuses = statuses  # responses by status, when metrics are on
        # requests the app handles together when pipelined (``app.groupable``), if it can
        self.groupable = getattr(app, "groupable", None)
        self.loop = asyncio.get_running_loop()
        # per connection
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.deadline: Deadline | None = None  # watched from connection_made on
        self.queue: deque[Request] = deque()
        self.busy = False  # a request is being handled
        self.reading_paused = False  # the pipeline queue is full, or a rejection waits
        self.writing_paused = False  # the client does not read its answers fast enough
        self.stopping = False  # the server is draining: answer what was read, then close
        self.closing = False
        self.peer_closed = False  # EOF seen: no input can be left unread, so no linger
        self.failure: Response | None = None  # a rejection waiting for the answers before it
        # per request (being parsed)
        self.request: Request | None = None
        self.in_head = False  # between the request's first byte and the end of its headers
        self.began = False  # a request began during the current data_received
        self.body_left = 0  # bytes of a large announced body still to come, past the parser
        # requests that repeat a head the parser read (``repeated_head``): that head, and the
        # request read with it, whose method, path and headers they share
        self.repeated: RepeatedHead | None = None
        self.repeated_request: Request | None = None
        self.learn_tries = LEARN_TRIES

    # -- asyncio protocol interface --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        limits = self.limits
        self.deadline = Deadlines.of(self.loop).watch(
            min(limits.header_timeout, limits.body_timeout, limits.idle_timeout))
        self._arm(limits.header_timeout, self._on_idle_timeout)

    def data_received(self, data: Buffer) -> None:
        if self.closing or self.failure is not None:
            return
        rest: Buffer | None = self._take_body(data) if self.body_left else data
        if rest and self.request is None:
            if self.repeated is not None:
                rest = self._take_repeated(rest)
            elif self.learn_tries:
                queued = len(self.queue)
                self._parse(rest)
                self._learn(rest, len(self.queue) - queued)
                rest = None
        if rest:
            self._parse(rest)
        if self.queue and not self.busy and not self.closing:
            self._next()  # after the whole buffer: pipelined requests are handled together

    # -- requests that repeat a head the parser read ---------------------------------------

    def _learn(self, data: Buffer, completed: int) -> None:
        """If the read held exactly one small request (``completed`` by the parser), whole,
        its head is the one to look for (the first reads of a connection only)."""
        self.learn_tries -= 1
        request = self.queue[-1] if self.queue else None
        if (request is None or completed != 1 or self.request is not None
                or self.closing or self.failure is not None or request.method != b"POST"
                or not request.keep_alive or request.expect_continue
                or not isinstance(request.body, bytes)
                or request.content_length != len(request.body)):
            return
        self.repeated = RepeatedHead.learn(bytes(data), len(request.body))
        if self.repeated is not None:
            self.repeated_request, self.learn_tries = request, 0

    def _take_repeated(self, data: Buffer) -> Buffer | None:
        """Queue the whole requests at the start of ``data`` that repeat the learnt head;
        what follows them is for the parser."""
        repeated = self.repeated
        assert repeated is not None  # the caller checked
        if data[:len(repeated.prefix)] != repeated.prefix:
            return data  # not copied when it is not for this path
        buffer = data if type(data) is bytes else bytes(data)
        match = repeated.match
        template = self.repeated_request
        assert template is not None  # learnt together with repeated
        max_length = min(self.limits.max_body_size, ZERO_COPY_MIN - 1)
        at = 0
        while self.failure is None and not self.reading_paused:
            span = match(buffer, at, max_length)
            if span is None:
                break
            request = self._new_request()
            request.method = template.method
            request.path = template.path
            request.content_type = template.content_type
            request.authorization = template.authorization
            request.body = buffer[span[0]:span[1]]
            request.content_length = span[1] - span[0]
            self.request = request
            self.on_message_complete()
            at = span[1]
        if not at:
            return data
        return buffer[at:] if at < len(buffer) else None

    def _parse(self, data: Buffer) -> None:
        in_head = self.in_head
        self.began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(responses.text(400, "protocol upgrade is not supported", close=True))
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Stop):
                raise
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._fail(responses.text(400, f"malformed HTTP request: {exc}", close=True))
        else:
            if in_head and self.in_head and not self.began:
                # The parser buffers an unfinished header line itself, out of our sight: count
                # whole reads that fall inside one head, so an endless header cannot grow it.
                request = self.request
                request.head_spill += len(data)  # type: ignore[union-attr]
                if request.head_spill > self.limits.max_header_size:  # type: ignore[union-attr]
                    self._reject_head(431, "request header block",
                                      request.head_spill,  # type: ignore[union-attr]
                                      "max_header_size")
            request = self.request
            if request is not None and isinstance(request.body, SendBuffer) \
                    and not self.closing and self.failure is None:
                # the rest of a large announced body bypasses the parser (and its copy)
                self.body_left = request.body.size - request.body.filled

    # -- a large announced body, past the parser -------------------------------------------

    def _take_body(self, data: Buffer) -> Buffer | None:
        """Copy the body's next bytes into its SendBuffer; what follows the body, if any, is
        returned for the parser."""
        left = self.body_left
        body = self.request.body  # type: ignore[union-attr]
        assert isinstance(body, SendBuffer)
        if len(data) < left:
            body.append(data)
            self.body_left = left - len(data)
            return None
        rest = memoryview(data)[left:] if len(data) > left else None
        body.append(data if rest is None else memoryview(data)[:left])
        self._body_done()
        return rest

    def body_target(self) -> memoryview | None:
        """Where a TLS layer may decrypt the next bytes straight to (the unfilled part of a
        large body: it is then never copied), or None when they are for ``data_received``."""
        if not self.body_left or self.closing or self.failure is not None:
            return None
        return self.request.body.unfilled()[:self.body_left]  # type: ignore[union-attr]

    def body_received(self, count: int) -> None:
        """``count`` bytes were written to ``body_target()``."""
        self.request.body.advance(count)  # type: ignore[union-attr]
        self.body_left -= count
        if not self.body_left:
            self._body_done()
            if self.queue and not self.busy and not self.closing:
                self._next()

    def _body_done(self) -> None:
        self.body_left = 0
        self.parser = httptools.HttpRequestParser(self)  # the old one still awaits the body
        self.on_message_complete()

    def pause_writing(self) -> None:
        # A client that pipelines without reading its answers: stop answering and reading
        # until it does, so the answers it leaves unread cannot pile up without bound.
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is None or self.closing:
            return
        if not self.reading_paused:
            self.transport.resume_reading()
        if self.queue and not self.busy:
            self._next()

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the answers to what it sent.
        self.peer_closed = True
        return bool(self.busy or self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.deadline is not None:
            Deadlines.of(self.loop).forget(self.deadline)
            self.deadline = None
        self.transport = None
        self.connections.discard(self)
        self._forget()

    # -- parser callbacks ------------------------------------------------------------------

    def _new_request(self) -> Request:
        return Request()

    def on_message_begin(self) -> None:
        self.request = self._new_request()
        self.in_head = self.began = True
        if not self.busy:
            self._arm(self.limits.header_timeout, self._on_request_timeout)

    def on_url(self, url: bytes) -> None:
        request = self.request
        request.path += url  # type: ignore[union-attr]
        request.head_size += len(url)  # type: ignore[union-attr]
        if len(request.path) > self.limits.max_line_size:  # type: ignore[union-attr]
            self._reject_head(414, "request target", len(request.path),  # type: ignore[union-attr]
                              "max_line_size")
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.request
        assert request is not None  # on_message_begin made it
        size = len(name) + len(value)
        request.head_size += size + 4  # ": " and CRLF
        limits = self.limits
        if size > limits.max_line_size:
            self._reject_head(431, f"header {responses.quote(name)}", size,
                              "max_line_size")
            raise _Stop
        if request.head_size > limits.max_header_size:
            self._reject_head(431, "request header block", request.head_size,
                              "max_header_size")
            raise _Stop
        name = name.lower()
        if name == b"content-type":
            request.content_type = value
        elif name == b"authorization":
            request.authorization = value
        elif name == b"content-length":
            request.content_length = int(value) if value.isdigit() else None
        elif name == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        request = self.request
        request.method = self.parser.get_method()  # type: ignore[union-attr]
        request.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
        length = request.content_length  # type: ignore[union-attr]
        if length is not None and length > self.limits.max_body_size:
            self._reject_body(length)
            raise _Stop
        if length is not None and length >= ZERO_COPY_MIN:
            # Taken at the announced length, but not zeroed: it becomes resident memory only
            # as the body arrives, so a client announcing much and sending little costs
            # what it sends.
            request.body = SendBuffer(length)  # type: ignore[union-attr]
        if request.expect_continue and self.transport is not None:  # type: ignore[union-attr]
            self.transport.write(responses.CONTINUE)
        if not self.busy:
            self._arm(self.limits.body_timeout, self._on_request_timeout)

    def on_body(self, body: bytes) -> None:
        request = self.request
        assert request is not None  # on_message_begin made it
        size = request.body_size
        request.body_size = end = size + len(body)
        if end > self.limits.max_body_size:
            self._reject_body(end)
            raise _Stop
        buffer = request.body
        if isinstance(buffer, SendBuffer):
            buffer.append(body)
            return
        if not size:
            request.body = body  # one piece: no copy
            return
        # A further piece of a small or unannounced body: kept as it came, joined once whole
        # (on_message_complete), never reserved to an announced length (see the SendBuffer in
        # on_headers_complete).
        if request.pieces is None:
            request.pieces = [buffer, body]  # the first piece, and this one
        else:
            request.pieces.append(body)

    def on_message_complete(self) -> None:
        request, self.request = self.request, None
        if request is None or self.failure is not None:
            return
        if request.pieces is not None:
            request.body, request.pieces = b"".join(request.pieces), None
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()

    # -- request dispatch and response ----------------------------------------------------

    def _next(self) -> None:
        queue = self.queue
        groupable = self.groupable
        while queue and not self.closing and not self.writing_paused:
            request = queue.popleft()
            group: list[Request] | None = None
            if queue and groupable is not None and groupable(request):
                group = [request]
                while queue and groupable(queue[0]):
                    group.append(queue.popleft())
                if len(group) == 1:
                    group = None  # alone: handled as one request
            if (self.reading_paused and self.failure is None
                    and len(queue) < MAX_PIPELINED // 2 and self.transport):
                self.reading_paused = False
                if not self.writing_paused:
                    self.transport.resume_reading()
            self.busy = True
            self._disarm()
            if group is not None:
                if not self._handle_group(group):
                    return
                continue
            try:
                result = self.app.handle(request)
            except Exception:
                log.exception("request handler failed")
                result = responses.text(500, "internal error")
            if isinstance(result, Response):
                self._respond(request, result)
                continue
            future = asyncio.ensure_future(result)
            future.add_done_callback(lambda f, r=request: self._on_handled(r, f))  # type: ignore[misc]
            return
        if queue:
            return  # resume_writing goes on
        if self.failure is not None:
            self._fail(self.failure)
        elif self.peer_closed:
            if not self.closing:
                self._close()  # a half-closed client has its answers; no request can follow
        elif not self.closing and self.request is None:
            self._arm(self.limits.idle_timeout, self._on_idle_timeout)

    def _handle_group(self, group: list[Request]) -> bool:
        """Pipelined requests the app handles together; True if answered already."""
        try:
            result = self.app.handle_group(group)  # type: ignore[attr-defined]
        except Exception:
            log.exception("request handler failed")
            result = [responses.text(500, "internal error")] * len(group)
        if isinstance(result, list):
            self._respond_all(group, result)
            return True
        future = asyncio.ensure_future(result)
        future.add_done_callback(lambda f, g=group: self._on_group_handled(g, f))
        return False

    def _on_group_handled(self, group: list[Request],
                          future: asyncio.Future[list[Response]]) -> None:
        if future.cancelled():
            answers = [responses.text(503, "server is shutting down", close=True)] * len(group)
        elif future.exception() is not None:
            log.error("request handler failed", exc_info=future.exception())
            answers = [responses.text(500, "internal error")] * len(group)
        else:
            answers = future.result()
        self._respond_all(group, answers)
        self._next()

    def _respond_all(self, group: list[Request], answers: list[Response]) -> None:
        last = len(group) - 1
        for n, (request, response) in enumerate(zip(group, answers)):
            if self.closing:
                break  # an answer closed the connection: the rest were not attempted
            self._respond(request, response, last=n == last)

    def _on_handled(self, request: Request, future: asyncio.Future[Response]) -> None:
        if future.cancelled():
            response = responses.text(503, "server is shutting down", close=True)
        elif future.exception() is not None:
            log.error("request handler failed", exc_info=future.exception())
            response = responses.text(500, "internal error")
        else:
            response = future.result()
        self._respond(request, response)
        self._next()

    def _respond(self, request: Request, response: Response, last: bool = True) -> None:
        """``last``: no answer of this request's group follows (a drain closes only then)."""
        self.busy = False
        if self.transport is None or self.closing:
            return
        keep_alive = request.keep_alive and not response.close and not (self.stopping and last)
        self.transport.write(response.encode(keep_alive, request.method == b"HEAD"))
        if self.statuses is not None:
            self.statuses[response.status] += 1
        if not keep_alive:
            self._close()

    def _fail(self, response: Response) -> None:
        """Answer a request that cannot be parsed or accepted, then close; after the answers
        to the requests before it, so a pipelining client matches each answer to its request.
        Nothing after it is read."""
        if self.busy or self.queue:
            if self.failure is None:
                self.failure = response
                if self.transport is not None and not self.reading_paused:
                    self.reading_paused = True
                    self.transport.pause_reading()
            return
        self.failure = None
        if self.transport is not None and not self.closing:
            self.transport.write(response.encode(keep_alive=False))
            if self.statuses is not None:
                self.statuses[response.status] += 1
        self._close()

    def _reject_body(self, size: int) -> None:
        limit = self.limits.max_body_size
        self._reject(responses.text(
            413, f"body of {size} bytes or more is over the limit of {limit} bytes "
                 f"(server config http.max_body_size)", close=True))

    def _reject_head(self, status: int, what: str, size: int, key: str) -> None:
        limit = getattr(self.limits, key)
        self._reject(responses.text(
            status, f"{what} of {size} bytes or more is over the limit of {limit} bytes "
                    f"(server config http.{key})", close=True))

    def _reject(self, response: Response) -> None:
        """Answer the request being parsed with an error; a parser callback then raises
        ``_Stop``."""
        self.request = None  # its body so far is garbage now
        self.in_head = False
        self._fail(response)

    # -- shutdown and timeouts -------------------------------------------------------------

    def shutdown(self) -> None:
        """Finish the request in flight, then close; close now if idle."""
        self.stopping = True
        if not self.busy and not self.queue:
            self._close()

    def abort(self) -> None:
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        """Every close but ``abort``: the answers written so far go out first, then the
        input is lingered on (``http/linger.py``), so the close cannot reset them away."""
        self.closing = True
        self._disarm()
        if self.transport is not None:
            linger(self.transport, self, self.limits, peer_closed=self.peer_closed)
        if not self.busy:
            self._forget()

    def _forget(self) -> None:
        """Drop what the connection holds, now rather than at the next cyclic GC (the parser
        and this protocol refer to each other): a closed connection keeps no body alive."""
        self.request = None
        self.body_left = 0
        self.queue.clear()
        self.failure = None
        self.parser = None  # type: ignore[assignment]

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        deadline = self.deadline
        if deadline is not None:
            deadline.at = self.loop.time() + delay
            deadline.action = callback

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.action = None

    def _on_idle_timeout(self) -> None:
        if not self.busy:
            self._close()

    def _on_request_timeout(self) -> None:
        if not self.busy:
            self._fail(responses.text(408, "request not received in time", close=True))


class AddressedHttpServerProtocol(HttpServerProtocol):
    """Stamps each request with the client's IP address (``Request.peer``), for an app that
    needs it (basic authentication's quarantine). A separate class, so that servers without
    it pay nothing per request."""

    peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        self.peer = str(peername[0]) if peername else ""
        super().connection_made(transport)

    def _new_request(self) -> Request:
        request = Request()
        request.peer = self.peer
        return request
