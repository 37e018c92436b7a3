"""The worker <-> egress records: round trips through a byte stream cut anywhere, and the
egress answering them."""

from __future__ import annotations

import asyncio
from array import array

import pytest
import zmq
import zmq.asyncio
from hypothesis import given, settings, strategies as st

from mgfast._zmq_io import ZERO_COPY_MIN, SendBuffer
from mgfast.media import encode_media_batch
from mgfast.server import egress_wire as wire
from mgfast.server.egress import Egress
from mgfast.zmq.settings import OutStreamConfig
from mgfast.zmq.url import parse_socket_url
from tests.savant_proto import savant_message, serialize
from tests.util import arun

# entries: (item count, MediaBatch body); the wire does not open the bodies
entries = st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=300)), max_size=8)


def stream_of(batches) -> bytes:
    out = b""
    for batch_id, items in batches:
        pairs = array("I", [n for count, body in items for n in (count, len(body))])
        # each body in two pieces: the pieces of a record need not be one per body
        bodies = [piece for _, body in items for piece in (body[:len(body) // 2],
                                                           body[len(body) // 2:])]
        out += b"".join(bytes(p) for p in wire.encode_batch(batch_id, pairs, bodies))
    return out


def feed(reader: wire.RecordReader, data: bytes, most: int | None = None) -> list[memoryview]:
    """What a BufferedProtocol does with ``data``: reads into ``buffer()``, each of at most
    ``most`` bytes (and never more than the buffer offers), then ``filled``."""
    records = []
    while data:
        target = reader.buffer()
        n = min(len(target), len(data), most or len(data))
        target[:n] = data[:n]
        data = data[n:]
        records += reader.filled(n)
    return records


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), entries), min_size=1, max_size=4),
       st.lists(st.integers(1, 700), min_size=1, max_size=30))
def test_batches_survive_any_cutting_of_the_stream(batches, cuts):
    data = stream_of(batches)
    reader, records, at = wire.RecordReader(), [], 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        records += feed(reader, data[at:at + cut])
        at += cut
        if at >= len(data):
            break
    records += feed(reader, data[at:])
    decoded = [wire.decode_batch(r) for r in records]
    assert [(i, [(n, bytes(body)) for n, body in e]) for i, e in decoded] == batches


@pytest.mark.parametrize("most", [None, 1000, 65536, 200_000])
def test_a_long_record_is_read_into_a_send_buffer_of_its_own(most):
    """Records of ZERO_COPY_MIN bytes or more land in their own SendBuffer (their large frames
    then go to libzmq by reference), whole or cut anywhere, between short ones; the scratch
    block wraps around as reads fill it."""
    short = stream_of([(1, [(1, b"s" * 300)])])
    long_ = stream_of([(2, [(1, bytes(range(256)) * 400)])])  # 102,400 B
    data = (short + long_) * 5 + short * 1000 + long_
    records = feed(wire.RecordReader(), data, most)
    assert [wire.decode_batch(r)[0] for r in records] == [1, 2] * 5 + [1] * 1000 + [2]
    assert all((type(r.obj) is SendBuffer) == (len(r) >= ZERO_COPY_MIN) for r in records)
    assert bytes(records[1]) == long_[4:] and bytes(records[0]) == short[4:]


def test_results_round_trip_and_error_codes():
    assert wire.RESULTS_BY_CODE[wire.ERROR] is None
    reader = wire.RecordReader()
    data = wire.encode_results(7, b"\x00\x02\x05")
    assert feed(reader, data[:5]) == []
    (record,) = feed(reader, data[5:])
    assert wire.decode_results(record) == (7, b"\x00\x02\x05")


def _record(batch_id: int, pairs: list[int], bodies: bytes) -> bytes:
    body = (batch_id.to_bytes(8, "little") + (len(pairs) // 2).to_bytes(4, "little")
            + array("I", pairs).tobytes() + bodies)
    return len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff",  # a length no record has
    (8).to_bytes(4, "little") + b"\x00" * 8,  # shorter than its header
    (16).to_bytes(4, "little") + b"\x00" * 8 + b"\x05\x00\x00\x00" + b"\x00" * 4,  # 5 entries
    _record(1, [1, 5], b"abc"),  # a body longer than the record
    _record(1, [1, 2], b"abc"),  # bytes beyond its entries
])
def test_garbage_is_refused(garbage):
    with pytest.raises(ValueError):
        for record in feed(wire.RecordReader(), garbage):
            wire.decode_batch(record)


# ---- the egress process's side, in-process: entries written as groups, each answered -------

USER = serialize(savant_message(kind=8))


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    length = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5), "little")
    return wire.decode_results(memoryview(await reader.readexactly(length)))


def test_the_egress_writes_each_entry_and_answers_a_bad_one_alone(tmp_path):
    """One record holds the entries of several worker connections: a corrupt one is answered
    ERROR (the worker answers 500) with nothing of it sent, and the others are written in
    order; a record that is not one is dropped and counted, and the next is served."""
    out = f"ipc://{tmp_path}/out"
    config = OutStreamConfig(url=parse_socket_url(f"dealer+bind:{out}", role="writer"))
    batch = [(b"cam-1", USER, [b"a"]), (b"cam-2", USER, [])]
    good = encode_media_batch(batch)
    corrupt = b"\x0a\x03abc"  # one item, and not a Media

    async def scenario() -> None:
        egress = Egress(config, f"ipc://{tmp_path}/egress")
        await egress.start()
        context = zmq.asyncio.Context()
        router = context.socket(zmq.ROUTER)
        router.connect(out)
        try:
            reader, writer = await asyncio.open_unix_connection(egress.path)
            entries = array("I", [2, len(good), 1, len(corrupt), 2, len(good)])
            writer.write(b"".join(bytes(p) for p in wire.encode_batch(
                7, entries, [good, corrupt, good])))
            assert await _reply(reader) == (7, bytes([0, 0, wire.ERROR, 0, 0]))
            got = [(await asyncio.wait_for(router.recv_multipart(), 5))[1:] for _ in range(4)]
            assert got == [[t, m, *d] for t, m, d in batch] * 2

            writer.write((12).to_bytes(4, "little") + b"\x00" * 8 + (9).to_bytes(4, "little"))
            writer.write(b"".join(bytes(p) for p in wire.encode_batch(
                8, array("I", [2, len(good)]), [good])))
            assert await _reply(reader) == (8, bytes(2))
            assert egress.malformed == 2  # the corrupt entry, then the record
            writer.close()
        finally:
            router.close(linger=0)
            await egress.writer.close()
            context.term()

    arun(scenario())
