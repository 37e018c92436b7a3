"""The gateway app with basic authentication, on the HTTP protocol with a fake transport:
what the no-auth path does not touch, the client address, pipelined groups and batches."""

from __future__ import annotations

import asyncio
import re
from base64 import b64encode

import orjson

from mgfast.auth.guard import Guard
from mgfast.auth.records import UserRecord
from mgfast.auth import rules
from mgfast.config.model import HttpLimits
from mgfast.http.server_protocol import AddressedHttpServerProtocol, HttpServerProtocol
from mgfast.media import encode_media, encode_media_batch
from mgfast.server.app import GatewayApp
from mgfast.zmq.writer import WriteResult
from tests.savant_proto import savant_message, serialize
from tests.test_auth_units import GUIDE, FakeStore, _basic_config
from tests.test_http_protocol import FakeTransport


class PeerTransport(FakeTransport):
    def get_extra_info(self, name, default=None):
        return ("10.1.2.3", 40000) if name == "peername" else default


class RecordingWriter:
    """Writes succeed at once; remembers the topics in the order written."""

    def __init__(self) -> None:
        self.topics: list[bytes] = []

    def _done(self, value):
        future = asyncio.get_running_loop().create_future()
        future.set_result(value)
        return future

    def submit(self, frames, *, eos):
        self.topics.append(bytes(frames[0]))
        return self._done(WriteResult.SUCCESS)

    def submit_group(self, messages, eos):
        self.topics.extend(bytes(frames[0]) for frames in messages)
        return self._done([WriteResult.SUCCESS] * len(messages))


def media(topic: bytes, labels=()) -> bytes:
    return encode_media(topic, serialize(savant_message(labels=list(labels))), [])


def request(body: bytes, user: str | None, content_type: bytes = b"application/protobuf"
            ) -> bytes:
    head = b"POST / HTTP/1.1\r\nhost: a\r\ncontent-type: " + content_type + b"\r\n"
    if user is not None:
        head += b"authorization: Basic " + b64encode(user.encode()) + b"\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def statuses(out: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1.1 (\d+)", out)]


async def serve(app, data: bytes, protocol_class=AddressedHttpServerProtocol,
                transport=None, settle: float = 0.15):
    protocol = protocol_class(app, HttpLimits())
    transport = transport or PeerTransport()
    protocol.connection_made(transport)
    protocol.data_received(data)
    for _ in range(int(settle / 0.01)):
        await asyncio.sleep(0.01)
    return transport


def test_without_auth_nothing_reads_the_client_address():
    async def body():
        writer = RecordingWriter()
        # plain protocol: requests carry no .peer; reading it would raise and answer 500
        transport = await serve(GatewayApp(writer), request(media(b"a"), None) * 3,
                                HttpServerProtocol, FakeTransport())
        assert statuses(bytes(transport.out)) == [200, 200, 200] and writer.topics == [b"a"] * 3

    asyncio.run(body())


def test_guarded_single_pipelined_and_batch_requests():
    async def body():
        north = UserRecord(GUIDE["password1"], rules.parse({"set": "north"}))
        guard = Guard(_basic_config(), FakeStore({"north": north}))
        writer = RecordingWriter()
        app = GatewayApp(writer, guard=guard)
        # pipelined: one group with mixed verdicts, argon2 run once for the shared credentials
        data = (request(media(b"ok1", [b"north"]), "north:password1")
                + request(media(b"nolabel"), "north:password1")
                + request(media(b"wrongpw", [b"north"]), "north:password")
                + request(media(b"noauth", [b"north"]), None)
                + request(media(b"ok2", ["x", "north"]), "north:password1"))
        transport = await serve(app, data)
        assert statuses(bytes(transport.out)) == [200, 401, 401, 401, 200]
        assert writer.topics == [b"ok1", b"ok2"]
        assert b"www-authenticate: Basic" in bytes(transport.out)
        # a batch: the item without the label gets 401 in the results, the others are written
        items = [(b"b1", serialize(savant_message(labels=["north"])), []),
                 (b"b2", serialize(savant_message(labels=["south"])), []),
                 (b"b3", serialize(savant_message(labels=["north"])), [])]
        transport = await serve(app, request(encode_media_batch(items), "north:password1",
                                             b"application/x-mgfast-batch"))
        out = bytes(transport.out)
        assert statuses(out) == [200]
        assert orjson.loads(out.partition(b"\r\n\r\n")[2]) == {"results": [200, 401, 200]}
        assert writer.topics[2:] == [b"b1", b"b3"]
        # authentication first: a valid user with a wrong content type gets 400, no user 401
        transport = await serve(app, request(b"x", "north:password1", b"text/plain")
                                + request(b"x", "north:nope", b"text/plain"))
        assert statuses(bytes(transport.out)) == [400, 401]
        assert guard.outcomes["labels_denied"] == 2
        # the quarantine saw the client address from the transport
        for _ in range(3):
            await serve(app, request(media(b"q"), "north:bad"))
        assert guard.quarantine.is_quarantined("north", "10.1.2.3")
        guard.close()

    asyncio.run(body())
