"""mgfast._messages: the client's Message objects and its per-message lane work in C."""

from __future__ import annotations

from collections import deque
from zlib import crc32

import pytest

from mgfast._messages import Message, settle, split_by_topic, take_batch
from mgfast.media import encode_media_batch, encode_media_batch_pieces


def test_message_from_frames_and_split_by_topic_as_zlib_crc32():
    with pytest.raises(ValueError):
        Message(b"cam", [b"cam"])
    m = Message(b"cam", [b"cam", b"msg", b"ab", memoryview(b"c")])
    assert (m.topic, m.message, m.size) == (b"cam", b"msg", 9)
    assert m.frames[:3] == [b"cam", b"msg", b"ab"] and len(m.extra) == 2
    topics = [b"cam-%d" % i for i in range(50)] + [b"", "камера".encode()]
    messages = [Message(t, [t, b"x" * i]) for i, t in enumerate(topics * 2)]
    lanes, size = split_by_topic(messages, 3)
    assert size == sum(m.size for m in messages)
    for lane, items in enumerate(lanes):
        assert all(crc32(m.topic) % 3 == lane for m in items)
        assert items == [m for m in messages if crc32(m.topic) % 3 == lane]  # in order
    assert split_by_topic(messages, 1)[0] == [messages]
    with pytest.raises(ValueError):
        split_by_topic(messages, 0)


def test_take_batch_stops_at_the_first_message_past_any_limit_and_keeps_order():
    def queue(*sizes_and_parts):
        return deque(Message(b"t%d" % i, [b"t%d" % i, b"m" * (size - 2), *[b""] * parts])
                     for i, (size, parts) in enumerate(sizes_and_parts))

    unsent = queue((10, 0), (10, 1), (10, 0), (10, 0))
    items, size = take_batch(unsent, 3, 100, 1000)
    assert [m.topic for m in items] == [b"t0", b"t1", b"t2"] and size == 30
    assert [m.topic for m in unsent] == [b"t3"]  # max_items
    unsent = queue((10, 2), (10, 2), (10, 0))
    items, _ = take_batch(unsent, 64, 3, 1000)
    assert len(items) == 1 and len(unsent) == 2  # max_parts: the second would make 4
    unsent = queue((600, 0), (500, 0))
    items, size = take_batch(unsent, 64, 100, 1000)
    assert len(items) == 1 and size == 600  # budget; the first goes whatever its size
    unsent = queue((5000, 0))
    assert take_batch(unsent, 64, 100, 1000)[1] == 5000 and not unsent
    sent = queue((10, 0), (20, 3), (30, 0))
    assert settle(sent, 2) == 30 and [m.topic for m in sent] == [b"t2"]


def test_messages_encode_as_their_triples_do():
    messages = [Message(b"cam-%d" % i, [b"cam-%d" % i, b"msg", *[b"x%d" % j for j in range(i)]])
                for i in range(4)] + [Message(b"", [b"", b"m"])]
    triples = [(m.topic, m.message, list(m.extra)) for m in messages]
    assert encode_media_batch(messages) == encode_media_batch(triples)
    length, pieces = encode_media_batch_pieces(messages)
    assert b"".join(bytes(p) for p in pieces) == encode_media_batch(triples)
    assert length == len(encode_media_batch(triples))
