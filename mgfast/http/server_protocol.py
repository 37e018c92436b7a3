"""The server side of one HTTP/1.1 connection: parse, enforce limits and deadlines, dispatch.

Requests on one connection are answered strictly in order (pipelined ones wait in a queue, and
reading pauses while the queue is full), which is what keeps per-source order end to end.
The protocol knows nothing of Savant: an ``App`` turns a ``Request`` into a ``Response``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Awaitable, Protocol as TypingProtocol

import httptools

from mgfast.config.model import HttpLimits
from mgfast.http import responses
from mgfast.http.responses import Response

log = logging.getLogger("mgfast.http")

# Pipelined requests buffered per connection before reading pauses.
MAX_PIPELINED = 16


class Request:
    """One parsed request; the body is bytes when it came in one piece, else a bytearray.
    ``peer`` (the client's IP address) is set only by ``AddressedHttpServerProtocol``."""

    __slots__ = ("method", "path", "content_type", "authorization", "body", "keep_alive",
                 "peer")

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.content_type = b""
        self.authorization = b""
        self.body: bytes | bytearray = b""
        self.keep_alive = True


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
        self.timer: asyncio.TimerHandle | None = None
        self.queue: deque[Request] = deque()
        self.busy = False  # a request is being handled
        self.reading_paused = False
        self.stopping = False  # the server is draining: answer what was read, then close
        self.closing = False
        self.failure: Response | None = None  # a rejection waiting for the answers before it
        # per request (being parsed)
        self.request: Request | None = None
        self.body_size = 0
        self.content_length: int | None = None  # llhttp validates the header itself
        self.expect_continue = False
        self.rejected = False  # answered before the body arrived (413): ignore the rest

    # -- asyncio protocol interface --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)
        self._arm(self.limits.header_timeout, self._on_idle_timeout)

    def data_received(self, data: bytes) -> None:
        if self.closing or self.failure is not None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(responses.text(400, "protocol upgrade is not supported", close=True))
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._fail(responses.text(400, f"malformed HTTP request: {exc}", close=True))
        if self.queue and not self.busy and not self.closing:
            self._next()  # after the whole buffer: pipelined requests are handled together

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the answers to what it sent.
        return bool(self.busy or self.queue)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._disarm()
        self.queue.clear()
        self.transport = None
        self.connections.discard(self)

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.request = Request()
        self.body_size = 0
        self.content_length = None
        self.expect_continue = False
        self.rejected = False
        if not self.busy:
            self._arm(self.limits.header_timeout, self._on_request_timeout)

    def on_url(self, url: bytes) -> None:
        self.request.path += url  # type: ignore[union-attr]

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        request = self.request
        if name == b"content-type":
            request.content_type = value  # type: ignore[union-attr]
        elif name == b"authorization":
            request.authorization = value  # type: ignore[union-attr]
        elif name == b"content-length":
            self.content_length = int(value) if value.isdigit() else None
        elif name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self.request
        request.method = self.parser.get_method()  # type: ignore[union-attr]
        request.keep_alive = self.parser.should_keep_alive()  # type: ignore[union-attr]
        length = self.content_length
        if length is not None and length > self.limits.max_body_size:
            self._reject_body(length)
            return
        if self.expect_continue and self.transport is not None:
            self.transport.write(responses.CONTINUE)
        if not self.busy:
            self._arm(self.limits.body_timeout, self._on_request_timeout)

    def on_body(self, body: bytes) -> None:
        if self.rejected:
            return
        size = self.body_size
        self.body_size = end = size + len(body)
        if end > self.limits.max_body_size:
            self._reject_body(end)
            return
        request = self.request
        if not size:
            request.body = body  # type: ignore[union-attr]  # one piece: no copy
            return
        buffer = request.body  # type: ignore[union-attr]
        if buffer.__class__ is bytes:
            # a second piece: one buffer of the announced length, filled in place
            length = self.content_length
            buffer = bytearray(length if length is not None and length >= end else end)
            buffer[:size] = request.body  # type: ignore[union-attr]
            request.body = buffer  # type: ignore[union-attr]
        buffer[size:end] = body  # grows the buffer only for a chunked body

    def on_message_complete(self) -> None:
        request, self.request = self.request, None
        if self.rejected or request is None or self.failure is not None:
            return
        self.queue.append(request)
        if len(self.queue) >= MAX_PIPELINED and not self.reading_paused and self.transport:
            self.reading_paused = True
            self.transport.pause_reading()

    # -- request dispatch and response ----------------------------------------------------

    def _next(self) -> None:
        queue = self.queue
        groupable = self.groupable
        while queue and not self.closing:
            request = queue.popleft()
            group = None
            if queue and groupable is not None and groupable(request) and groupable(queue[0]):
                group = [request]
                while queue and groupable(queue[0]):
                    group.append(queue.popleft())
            if (self.reading_paused and self.failure is None
                    and len(queue) < MAX_PIPELINED // 2 and self.transport):
                self.reading_paused = False
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
            future.add_done_callback(lambda f, r=request: self._on_handled(r, f))
            return
        if self.failure is not None:
            self._fail(self.failure)
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

    def _on_group_handled(self, group: list[Request], future: asyncio.Future) -> None:
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

    def _on_handled(self, request: Request, future: asyncio.Future) -> None:
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
        self.transport.write(response.encode(keep_alive))
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
        self.rejected = True
        limit = self.limits.max_body_size
        self._fail(responses.text(
            413, f"body of {size} bytes is over the limit of {limit} bytes "
                 f"(server config http.max_body_size)", close=True))

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
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def _arm(self, delay: float, callback) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_idle_timeout(self) -> None:
        self.timer = None
        if not self.busy:
            self._close()

    def _on_request_timeout(self) -> None:
        self.timer = None
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

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.request.peer = self.peer  # type: ignore[union-attr]
