"""The worker <-> egress records: round trips through a byte stream cut anywhere."""

from __future__ import annotations

from array import array

import pytest
from hypothesis import given, settings, strategies as st

from mgfast.server import egress_wire as wire

messages = st.lists(st.tuples(st.lists(st.binary(max_size=300), min_size=2, max_size=5),
                              st.sampled_from([0, wire.EOS_BIT, wire.GROUP_BIT,
                                               wire.GROUP_BIT | wire.GROUP_START_BIT])),
                    max_size=8)


def stream_of(batches) -> bytes:
    out = b""
    for batch_id, items in batches:
        counts = array("I", [len(frames) | flags for frames, flags in items])
        frames = [f for frames, _ in items for f in frames]
        out += b"".join(bytes(p) for p in wire.encode_batch(batch_id, counts, frames))
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), messages), min_size=1, max_size=4),
       st.lists(st.integers(1, 700), min_size=1, max_size=30))
def test_batches_survive_any_cutting_of_the_stream(batches, cuts):
    data = stream_of(batches)
    reader, records, at = wire.RecordReader(), [], 0
    for cut in cuts * (len(data) // max(1, sum(cuts)) + 1):
        records += reader.feed(data[at:at + cut])
        at += cut
        if at >= len(data):
            break
    records += reader.feed(data[at:])
    decoded = [wire.decode_batch(r) for r in records]
    assert [(i, [([bytes(f) for f in fr], fl) for fr, fl in m]) for i, m in decoded] == batches


def test_results_round_trip_and_error_codes():
    assert wire.RESULTS_BY_CODE[wire.ERROR] is None
    reader = wire.RecordReader()
    data = wire.encode_results(7, b"\x00\x02\x05")
    assert reader.feed(data[:5]) == []
    (record,) = reader.feed(data[5:])
    assert wire.decode_results(record) == (7, b"\x00\x02\x05")


def _record(batch_id: int, counts: list[int], lengths: list[int], frames: bytes) -> bytes:
    body = (batch_id.to_bytes(8, "little") + len(counts).to_bytes(4, "little")
            + len(lengths).to_bytes(4, "little") + array("I", counts).tobytes()
            + array("I", lengths).tobytes() + frames)
    return len(body).to_bytes(4, "little") + body


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff",  # a length no record has
    (20).to_bytes(4, "little") + b"\x00" * 20,  # counts and lengths that do not add up
    _record(1, [3], [1, 1], b"tm"),  # a message of 3 frames, 2 sent
    _record(1, [2], [1, 1, 5], b"tmextra"),  # a frame beyond its messages
    _record(1, [1], [1], b"t"),  # a message needs topic and message
    _record(1, [2], [1, 9], b"tm"),  # lengths past the record
])
def test_garbage_is_refused(garbage):
    with pytest.raises(ValueError):
        for record in wire.RecordReader().feed(garbage):
            wire.decode_batch(record)
