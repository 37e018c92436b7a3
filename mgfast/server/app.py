"""The gateway's HTTP API (upstream 0.2.0): ``POST /`` with one Media, ``GET /health``."""

from __future__ import annotations

import logging
from typing import Awaitable, Protocol as TypingProtocol, Sequence

from mgfast.http import responses
from mgfast.http.responses import Response
from mgfast.http.server_protocol import Request
from mgfast.media import MediaError, decode_media
from mgfast.zmq.writer import WriteResult

log = logging.getLogger("mgfast.server")

END_OF_STREAM = 9  # Savant Message content field number
MEDIA_TYPE = b"application/protobuf"

# Writer result -> HTTP status, as upstream maps them.
_RESULT_RESPONSES = {
    WriteResult.SUCCESS: responses.OK_EMPTY,
    WriteResult.ACK: responses.OK_EMPTY,
    WriteResult.SEND_TIMEOUT: responses.text(504, "out_stream send timeout"),
    WriteResult.ACK_TIMEOUT: responses.text(502, "out_stream acknowledgement timeout"),
}


class Writer(TypingProtocol):
    async def write(self, frames: Sequence, *, eos: bool) -> WriteResult: ...


class GatewayApp:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        path = request.path.partition(b"?")[0]
        if path == b"/":
            if request.method != b"POST":
                return Response(405, b"use POST\n", headers=((b"allow", b"POST"),))
            return self._media(request)
        if path == b"/health":
            if request.method not in (b"GET", b"HEAD"):
                return Response(405, b"use GET\n", headers=((b"allow", b"GET"),))
            return responses.HEALTHY
        return responses.text(404, f"no such path {path.decode('latin-1')!r}; use POST / or GET /health")

    def _media(self, request: Request) -> Response | Awaitable[Response]:
        content_type = request.content_type.partition(b";")[0].strip().lower()
        if content_type != MEDIA_TYPE:
            return responses.text(
                400, f"Content-Type must be application/protobuf, "
                     f"not {request.content_type.decode('latin-1')!r}")
        try:
            topic, message, data, kind = decode_media(request.body)
        except MediaError as exc:
            return responses.text(400, str(exc))
        return self._write([topic, message, *data], kind == END_OF_STREAM)

    async def _write(self, frames: list, eos: bool) -> Response:
        try:
            result = await self.writer.write(frames, eos=eos)
        except Exception:
            log.exception("out_stream write failed")
            return responses.text(500, "out_stream write failed")
        return _RESULT_RESPONSES[result]
