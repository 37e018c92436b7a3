"""HTTP responses, with the bytes every response repeats computed once."""

from __future__ import annotations

from http import HTTPStatus

import orjson

_REASONS = {s.value: s.phrase for s in HTTPStatus}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
HEALTHY_BODY = orjson.dumps({"status": "healthy"})


class Response:
    """A status, a body and its content type; ``close`` asks for the connection to end.

    Responses are immutable once made, so each is encoded once per keep-alive choice: the
    statuses a request ends with (200, 504, ...) cost no formatting per request."""

    __slots__ = ("status", "body", "content_type", "close", "headers", "_encoded")

    def __init__(self, status: int, body: bytes = b"", content_type: bytes = b"text/plain",
                 *, close: bool = False, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.close = close
        self.headers = headers
        # [closing, keep-alive, closing HEAD, keep-alive HEAD]
        self._encoded: list[bytes | None] = [None, None, None, None]

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        """The whole response; for a HEAD request (``head``) without the body, whose length
        the headers still give (a body there would be read as the next response)."""
        index = keep_alive + 2 * head
        encoded = self._encoded[index]
        if encoded is None:
            encoded = self._encode(keep_alive)
            if head:
                encoded = encoded[:len(encoded) - len(self.body)]
            self._encoded[index] = encoded
        return encoded

    def _encode(self, keep_alive: bool) -> bytes:
        head = [_status_line(self.status)]
        if self.body:
            head.append(b"content-type: " + self.content_type + b"\r\n")
        head.append(b"content-length: %d\r\n" % len(self.body))
        for name, value in self.headers:
            head.append(name + b": " + value + b"\r\n")
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        head.append(self.body)
        return b"".join(head)


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, "Unknown").encode())
        _STATUS_LINES[status] = line
    return line


def quote(value: bytes, limit: int = 100) -> str:
    """``value`` as an error message shows it: quoted, and cut so that a huge URL or header
    cannot make the answer huge."""
    if len(value) <= limit:
        return repr(value.decode("latin-1"))
    return f"{value[:limit].decode('latin-1')!r}... ({len(value)} bytes)"


def text(status: int, message: str, *, close: bool = False) -> Response:
    """A plain-text response whose body says what went wrong and how to fix it."""
    return Response(status, message.encode() + b"\n", close=close)


OK_EMPTY = Response(200)
