"""A small HTTP server that takes ``POST /`` the way upstream Media Gateway 0.2.0 does.

It accepts exactly one ``Media`` per POST with ``Content-Type: application/protobuf`` and
answers 400 to anything else; ``GET /health`` answers ``{"status":"healthy"}`` without mgfast's
``x-mgfast-batch`` header, so an mgfast client must fall back to the upstream API. It records
every request and every Media, and a test scripts its answers:

    def respond(media: StubMedia, attempt: int) -> int:   # attempt: 1 for the first time
        return 503 if media.data == [b"7"] and attempt == 1 else 200

    with UpstreamStub(respond) as stub:
        ... stub.url ... stub.accepted ... stub.requests ... stub.wait_accepted(10)

``respond`` may also return :data:`DROP`: the Media counts as accepted but the connection is
closed without an answer (a server that died after forwarding it); or :data:`CLOSE`: answered
200 with ``Connection: close``, and what the client wrote after it is not read. Requests are
read in order from one connection, so pipelined requests are answered in order, as actix-web
does; each records how many bytes of later requests had already arrived (``ahead``). With ``batch=True`` the stub
plays an mgfast server instead: it advertises and accepts batch framing, answering each item as
``respond`` says and stopping at the first item that is neither 2xx nor 400/413, as mgfast's
server does.

Bodies are decoded by a protobuf wire walker written here (no mgfast code), and the Savant
message is checked with the protobuf runtime oracle (``tests.savant_proto``), so the stub is
independent of the code under test.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tests import savant_proto
from tests.util import free_port

DROP = -1  # accept, then close the connection without answering
CLOSE = -2  # accept, answer 200 with Connection: close, read nothing more
MEDIA_TYPE = "application/protobuf"
BATCH_TYPE = "application/x-mgfast-batch"


class WireError(ValueError):
    pass


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise WireError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(buf: bytes) -> list[tuple[int, int, object]]:
    """``(field number, wire type, value)`` of every top-level field of a protobuf message."""
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise WireError(f"wire type {wire}")
        if pos > len(buf):
            raise WireError("truncated field")
        out.append((number, wire, value))
    return out


@dataclass(frozen=True)
class StubMedia:
    topic: bytes
    message: bytes
    data: tuple[bytes, ...]

    @property
    def frames(self) -> list[bytes]:
        return [self.topic, self.message, *self.data]


def parse_media(body: bytes) -> StubMedia:
    """One upstream Media; raises WireError as upstream's 400 would."""
    topic, message, data = b"", None, []
    for number, wire, value in fields(body):
        if wire != 2 and number in (1, 2, 3):
            raise WireError(f"field {number} has wire type {wire}")
        if number == 1:
            if message is not None:
                raise WireError("message twice")
            message = value
        elif number == 2:
            topic = value
        elif number == 3:
            data.append(value)
    if message is None:
        raise WireError("no message")
    try:
        topic.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("topic is not UTF-8") from None
    try:
        savant_proto.Message.FromString(message)
    except Exception as exc:
        raise WireError(f"not a Savant message: {exc}") from None
    return StubMedia(topic, message, tuple(data))


@dataclass
class StubRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int | None = None  # None: answered with DROP
    connection: int = 0  # which TCP connection it came on (1, 2, ...)
    ahead: int = 0  # bytes of later requests already received when this one was read


@dataclass
class UpstreamStub:
    respond: Callable[[StubMedia, int], int] | None = None
    batch: bool = False
    delay: float = 0.0  # seconds before answering each POST
    port: int = field(default_factory=free_port)
    requests: list[StubRequest] = field(default_factory=list)
    accepted: list[StubMedia] = field(default_factory=list)  # answered 2xx or DROP, in order
    attempts: dict[StubMedia, int] = field(default_factory=dict)
    connections: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Condition()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "UpstreamStub":
        stub = self

        class Handler(_Handler):
            pass

        Handler.stub = stub
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="upstream stub")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "UpstreamStub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what the tests read ---------------------------------------------------------------

    def posts(self) -> list[StubRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "POST"]

    def wait_accepted(self, count: int, timeout: float = 15.0) -> list[StubMedia]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.accepted) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"upstream stub: {len(self.accepted)} of {count} "
                                         f"messages within {timeout}s")
                self._lock.wait(remaining)
            return list(self.accepted)

    def wait_requests(self, count: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"upstream stub: {len(self.requests)} of {count} "
                                         f"requests within {timeout}s")
                self._lock.wait(remaining)

    # -- decisions, called by the handler --------------------------------------------------

    def _decide(self, media: StubMedia) -> int:
        with self._lock:
            attempt = self.attempts.get(media, 0) + 1
            self.attempts[media] = attempt
        status = self.respond(media, attempt) if self.respond else 200
        if status in (DROP, CLOSE) or 200 <= status < 300:
            with self._lock:
                self.accepted.append(media)
                self._lock.notify_all()
        return status

    def _record(self, request: StubRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as actix-web
    stub: UpstreamStub

    def setup(self) -> None:
        super().setup()
        with self.stub._lock:
            self.stub.connections += 1
            self.connection_number = self.stub.connections

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain",
                headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _request(self, body: bytes) -> StubRequest:
        return StubRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()},
                           body, connection=self.connection_number, ahead=self._ahead())

    def _ahead(self) -> int:
        """Bytes already buffered or waiting on the socket, read without blocking."""
        self.connection.setblocking(False)
        try:
            return len(self.rfile.peek(1))
        except (BlockingIOError, OSError, ValueError):
            return 0
        finally:
            try:
                self.connection.setblocking(True)
            except OSError:
                pass

    def do_GET(self) -> None:
        request = self._request(b"")
        if self.path == "/health":
            request.status = 200
            self.stub._record(request)
            extra = {"x-mgfast-batch": "1"} if self.stub.batch else None
            self._answer(200, b'{"status":"healthy"}', "application/json", extra)
        else:
            request.status = 404
            self.stub._record(request)
            self._answer(404, b"not found")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        request = self._request(body)
        if self.stub.delay:
            time.sleep(self.stub.delay)
        content_type = self.headers.get("Content-Type", "")
        if self.path != "/":
            status, answer = 404, b"not found"
        elif content_type == BATCH_TYPE and self.stub.batch:
            status, answer = self._batch(body)
        elif content_type != MEDIA_TYPE:
            status, answer = 400, b"Content-Type must be application/protobuf"
        else:
            try:
                media = parse_media(body)
            except WireError as exc:
                status, answer = 400, str(exc).encode()
            else:
                status = self.stub._decide(media)
                answer = b"" if status in (DROP, CLOSE) or status < 300 else b"scripted failure"
        request.status = None if status == DROP else 200 if status == CLOSE else status
        self.stub._record(request)
        if status == DROP:
            self.close_connection = True
            return
        if status == CLOSE:
            self.close_connection = True
            self._answer(200, b"", headers={"Connection": "close"})
            return
        content = "application/json" if answer.startswith(b"{") else "text/plain"
        self._answer(status, answer, content,
                     headers={"Connection": "close"} if self.close_connection else None)

    def _batch(self, body: bytes) -> tuple[int, bytes]:
        try:
            items = [value for number, _, value in fields(body) if number == 1]
        except WireError as exc:
            return 400, str(exc).encode()
        results = []
        for item in items:
            try:
                media = parse_media(item)
            except WireError:
                results.append(400)
                continue
            status = self.stub._decide(media)
            if status == DROP:
                return DROP, b""
            results.append(status)
            if not (200 <= status < 300 or status in (400, 413)):
                # as an mgfast server: a failed item closes the connection after this answer,
                # so nothing pipelined behind it is taken before the client resends it
                self.close_connection = True
                break
        return 200, json.dumps({"results": results}).encode()
