"""mgfast._zmq_io, the per-message ZeroMQ calls in C, on real libzmq sockets (pyzmq's own)."""

from __future__ import annotations

import pytest
import zmq

from mgfast._messages import Message
from mgfast._zmq_io import (ZERO_COPY_MIN, SendBuffer, recv_many, recv_messages, recv_multipart,
                            send_buffers_alive, send_many, send_multipart)
from mgfast.media import MAX_BATCH_DATA_PARTS, MAX_DATA_PARTS, batch_writes, decode_media_batch, send_media_batch
from tests import savant_proto as pb
from tests.savant_proto import ld, tag, varint
from tests.test_media import EOS, media
from tests.util import wait_until


@pytest.fixture
def pair():
    context = zmq.Context()
    dealer, router = context.socket(zmq.DEALER), context.socket(zmq.ROUTER)
    for sock in (dealer, router):
        sock.linger = 0
    router.bind("inproc://zmq-io")
    dealer.connect("inproc://zmq-io")
    yield dealer, router
    dealer.close()
    router.close()
    context.term()


def test_multipart_round_trip_with_any_bytes_like_frames(pair):
    dealer, router = pair
    assert recv_multipart(router.underlying) is None  # nothing queued: no wait, no error
    frames = [b"cam-1", memoryview(b"message"), bytearray(b"extra"), b""]
    assert send_multipart(dealer.underlying, frames) is True
    parts = wait_until(lambda: recv_multipart(router.underlying))
    assert parts[1:] == [b"cam-1", b"message", b"extra", b""]
    assert all(type(p) is bytes for p in parts)
    # and pyzmq sees exactly what we send
    send_multipart(router.underlying, [parts[0], b"OK"])
    assert dealer.recv_multipart() == [b"OK"]


def test_recv_many_hands_large_frames_over_uncopied_and_they_outlive_the_socket():
    context = zmq.Context()
    dealer, router = context.socket(zmq.DEALER), context.socket(zmq.ROUTER)
    router.bind("inproc://zero-copy")
    dealer.connect("inproc://zero-copy")
    big, huge = bytes(range(256)) * 256, b"x" * 3_000_000  # 64 KiB and 3 MB
    send_multipart(dealer.underlying, [big, b"message", huge, b"small"])  # a 64 KiB topic too
    [parts] = wait_until(lambda: recv_many(router.underlying, 1, len(big), 2))
    assert [type(p) for p in parts] == [bytes, bytes, bytes, memoryview, bytes]
    assert parts[1] == big and parts[3] == huge and parts[3].readonly
    assert len(parts[3]) == len(huge) and bytes(parts[3][:3]) == b"xxx"
    for sock in (dealer, router):
        sock.close(linger=0)
    context.term()
    assert parts[3] == huge  # libzmq's message lives as long as the view
    with pytest.raises(ValueError):
        recv_many(0, 1, 10, 0)


def test_send_many_stops_where_the_socket_would_block_and_recv_many_keeps_order(pair):
    dealer, router = pair
    dealer.sndhwm = router.rcvhwm = 5  # set after connect: applies to new pipes only
    context = zmq.Context.instance()
    slow = context.socket(zmq.DEALER)
    slow.sndhwm = 5
    slow.linger = 0
    slow.connect("tcp://127.0.0.1:1")  # nobody listens: messages stay queued, up to the HWM
    try:
        messages = [[b"t", b"%d" % i] for i in range(100)]
        sent = send_many(slow.underlying, messages, 0, 100)
        assert 0 < sent < 100
        assert send_many(slow.underlying, messages, sent, 100) == sent  # still full
        assert send_many(slow.underlying, messages, 3, 3) == 3  # an empty range
    finally:
        slow.close()
    messages = [[b"t", b"%d" % i] for i in range(20)]
    assert send_many(dealer.underlying, messages, 0, 20) == 20
    got: list = []
    wait_until(lambda: got.extend(recv_many(router.underlying, 7)) or len(got) == 20)
    assert [m[1:] for m in got] == messages


def test_recv_many_honours_its_limit(pair):
    dealer, router = pair
    send_many(dealer.underlying, [[b"t", b"%d" % i] for i in range(10)], 0, 10)
    first = wait_until(lambda: recv_many(router.underlying, 3))
    assert len(first) <= 3 and first[0][1:] == [b"t", b"0"]


def test_bad_arguments_and_closed_sockets_raise(pair):
    dealer, _ = pair
    with pytest.raises(ValueError, match="at least one frame"):
        send_multipart(dealer.underlying, [])
    with pytest.raises(TypeError):
        send_multipart(dealer.underlying, [b"topic", 42])
    with pytest.raises(zmq.ZMQError):
        send_multipart(0, [b"x"])  # what a closed pyzmq socket's ``underlying`` is
    with pytest.raises(zmq.ZMQError):
        recv_multipart(0)
    sub = zmq.Context.instance().socket(zmq.SUB)
    try:
        with pytest.raises(zmq.ZMQError):  # a SUB cannot send: libzmq's error, not a crash
            send_multipart(sub.underlying, [b"x"])
    finally:
        sub.close(linger=0)


@pytest.mark.parametrize("parts", [2, 40])  # on the stack and on the heap
def test_a_bad_part_sends_nothing_so_the_next_message_is_not_joined_to_half_of_it(pair, parts):
    dealer, router = pair
    bad = [b"topic"] + [b"ok"] * (parts - 2) + [42]
    with pytest.raises(TypeError):
        send_multipart(dealer.underlying, bad)
    with pytest.raises(TypeError):
        send_many(dealer.underlying, [[b"first"], bad], 0, 2)  # the good one before it went
    assert send_multipart(dealer.underlying, [b"next", b"whole"]) is True
    got = [wait_until(lambda: recv_multipart(router.underlying))[1:] for _ in range(2)]
    assert got == [[b"first"], [b"next", b"whole"]]
    wide = [b"p%d" % i for i in range(parts)]
    assert send_multipart(dealer.underlying, wide) is True
    assert wait_until(lambda: recv_multipart(router.underlying))[1:] == wide


@pytest.mark.parametrize("parts", [3, 40])  # part buffers on the stack and on the heap
def test_large_views_of_a_send_buffer_go_to_libzmq_by_reference_and_outlive_it(pair, parts):
    dealer, router = pair
    alive = send_buffers_alive()
    size = ZERO_COPY_MIN * 2
    body = SendBuffer(size + 10)
    body.append(b"A" * 10)
    target = body.unfilled()
    target[:size] = b"B" * size
    body.advance(size)
    assert body.filled == len(body) == size + 10
    view = memoryview(body)
    small, large = view[:10], view[10:]
    frames = [b"topic", small, large] + [b"x"] * (parts - 3)
    assert send_multipart(dealer.underlying, frames) is True
    del view, small, large, target, frames
    # inproc hands the very message over: the receiver's frame is the SendBuffer's block, so
    # a write after the send shows through (the small frame was copied, the large one not)
    memoryview(body)[:ZERO_COPY_MIN] = b"C" * ZERO_COPY_MIN
    [got] = wait_until(lambda: recv_many(router.underlying, 1, ZERO_COPY_MIN, 1))
    assert bytes(got[2]) == b"A" * 10
    assert bytes(got[3]) == b"C" * (ZERO_COPY_MIN - 10) + b"B" * (size - ZERO_COPY_MIN + 10)
    del body  # libzmq's message still refers to the block: it stays
    assert send_buffers_alive() == alive + 1
    assert bytes(got[3][-3:]) == b"BBB"
    del got  # the last reference: the block is freed
    assert send_buffers_alive() == alive


def test_a_send_buffer_refused_by_a_full_socket_is_released(pair):
    dealer, _ = pair
    alive = send_buffers_alive()
    slow = zmq.Context.instance().socket(zmq.DEALER)
    slow.sndhwm = 1
    slow.linger = 0
    slow.connect("tcp://127.0.0.1:1")  # nobody listens: the queue fills
    try:
        body = SendBuffer(ZERO_COPY_MIN)
        body.append(b"z" * ZERO_COPY_MIN)
        sent = send_many(slow.underlying, [[memoryview(body)]] * 10, 0, 10)
        assert 0 < sent < 10
    finally:
        slow.close()
    del body
    wait_until(lambda: send_buffers_alive() == alive)  # closing dropped the queued ones


def test_a_send_buffer_is_filled_once_and_never_past_its_size():
    body = SendBuffer(4)
    body.append(b"ab")
    with pytest.raises(ValueError, match="do not fit"):
        body.append(b"cde")
    with pytest.raises(ValueError, match="cannot advance"):
        body.advance(3)
    body.unfilled()[:] = b"cd"
    body.advance(2)
    assert bytes(body) == b"abcd" and len(body.unfilled()) == 0
    with pytest.raises(ValueError, match="negative"):
        SendBuffer(-1)


# ---- recv_messages and split_by_topic: the client's in_stream read in C ----------------------

class Accept:
    """The reader's rules stand-in: records what the fast path handed over, delivers all
    but ``drop``'s topics."""

    def __init__(self, drop: tuple[bytes, ...] = ()) -> None:
        self.seen: list[list[bytes]] = []
        self.drop = drop

    def __call__(self, parts: list) -> Message | None:
        self.seen.append([bytes(p) for p in parts])
        frames = parts[1:]
        if len(frames) < 2 or frames[0] in self.drop:
            return None
        return Message(frames[0], frames)


def is_eos(message) -> bool:
    if bytes(message) == b"boom":
        raise ValueError("not a Savant message")
    return bytes(message) == b"EOS"


def test_recv_messages_takes_the_routed_fast_path_and_sends_the_rest_to_accept_in_order(pair):
    dealer, router = pair
    sent = [[b"cam-1", b"m1"], [b"cam-2", b"m2", b"x"], [b"cam-1", b"EOS"], [b"cam-1", b"m3"],
            [b"cam-1"], [b"cam-3", b"boom"], [b"gone", b"m4"], [b"cam-2", b"m5", b"", b"yy"]]
    for frames in sent:
        assert send_multipart(dealer.underlying, frames)
    accept = Accept(drop=(b"gone",))
    routes: dict[bytes, bytes] = {}
    first, taken = wait_until(lambda: recv_messages(router.underlying, 1, 0, routes, is_eos,
                                                    accept) or None)
    # no route for cam-1 yet: accept decides (it is the reader that learns routes)
    assert taken == 1 and [m.frames for m in first] == [[b"cam-1", b"m1"]]
    routing_id = accept.seen[0][0]
    routes.update({b"cam-1": routing_id, b"cam-2": routing_id, b"cam-3": routing_id})
    accept.seen.clear()
    got: list = []
    taken = 0
    while taken < len(sent) - 1:
        messages, n = recv_messages(router.underlying, 3, 0, routes, is_eos, accept)
        got += messages
        taken += n
    assert taken == len(sent) - 1
    assert [m.frames for m in got] == [[b"cam-2", b"m2", b"x"], [b"cam-1", b"EOS"],
                                       [b"cam-1", b"m3"], [b"cam-3", b"boom"],
                                       [b"cam-2", b"m5", b"", b"yy"]]
    # accept saw, with the routing id first: the EOS, the short one, the one is_eos refused,
    # and the one it dropped; the common case never reached Python
    assert accept.seen == [[routing_id, b"cam-1", b"EOS"], [routing_id, b"cam-1"],
                           [routing_id, b"cam-3", b"boom"], [routing_id, b"gone", b"m4"]]
    assert [m.size for m in got] == [len(b"".join(m.frames)) for m in got]
    assert all(type(m.extra) is tuple for m in got)
    # a routing id that is not the topic's owner goes to accept too
    routes[b"cam-1"] = b"another writer"
    assert send_multipart(dealer.underlying, [b"cam-1", b"m6"])
    [m], taken = wait_until(lambda: recv_messages(router.underlying, 5, 0, routes, is_eos,
                                                  accept) or None)
    assert taken == 1 and m.frames == [b"cam-1", b"m6"]
    assert accept.seen[-1] == [routing_id, b"cam-1", b"m6"]
    assert recv_messages(router.underlying, 5, 0, routes, is_eos, accept) == ([], 0)


def test_recv_messages_without_routes_delivers_every_multipart_of_two_frames():
    # PAIR sockets: no routing id, as a SUB socket reads
    context = zmq.Context.instance()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://recv-messages-sub")
    b.connect("inproc://recv-messages-sub")
    try:
        big = b"B" * 100_000
        for frames in ([b"cam-1", b"EOS"], [b"only"], [b"cam-2", big, b"e", big]):
            assert send_multipart(a.underlying, frames)
        accept = Accept()
        messages, taken = wait_until(
            lambda: recv_messages(b.underlying, 10, 65536, None, is_eos, accept) or None)
        while taken < 3:
            more, n = recv_messages(b.underlying, 10, 65536, None, is_eos, accept)
            messages += more
            taken += n
        assert accept.seen == [[b"only"]]  # too short: the reader's rules drop it
        assert [m.topic for m in messages] == [b"cam-1", b"cam-2"]
        large = messages[1]
        assert type(large.message) is memoryview and large.message.readonly
        assert [type(f) for f in large.extra] == [bytes, memoryview]
        assert bytes(large.message) == big and large.size == 5 + 2 * len(big) + 1
    finally:
        a.close(linger=0)
        b.close(linger=0)


# ---- send_media_batch (mgfast._media): a writer's fast path, straight from a MediaBatch body --

def received(router, count: int) -> list[list[bytes]]:
    """What reached the ROUTER, without routing ids: ``count`` whole messages and no more."""
    got: list = []
    if count:
        wait_until(lambda: got.extend(recv_many(router.underlying, count)) or len(got) >= count)
    assert len(got) == count and recv_many(router.underlying, 1) == []  # no half message
    return [[bytes(f) for f in m[1:]] for m in got]


def test_send_media_batch_sends_each_item_as_the_writer_would_and_counts_it(pair):
    push, pull = pair
    user = pb.serialize(pb.savant_message(kind=8))
    body = b"".join(ld(1, i) for i in [
        media(user, data=[b"x", b"yz"]), media(user, topic=b""), media(user, data=[b""])])
    messages, _, size = batch_writes(decode_media_batch(body))
    assert send_media_batch(push.underlying, body, True) == (3, 3, size)
    assert received(pull, 3) == [[bytes(f) for f in m] for m in messages] == [
        [b"cam-1", user, b"x", b"yz"], [b"", user], [b"cam-1", user, b""]]
    assert send_media_batch(push.underlying, b"", True) == (0, 0, 0)


def test_send_media_batch_sends_nothing_when_any_item_or_the_framing_is_malformed(pair):
    push, pull = pair
    good = media(data=[b"x"])
    for body in (b"".join(ld(1, i) for i in [good, media(topic=b"\xff"), good]),  # bad item
                 ld(1, good) + b"\x0a\x09abc",  # truncated item
                 ld(1, good) + tag(1, 0) + varint(1)):  # items must be length-delimited
        assert send_media_batch(push.underlying, body, False) is None
    assert received(pull, 0) == []


def test_send_media_batch_stops_before_an_eos_only_when_asked(pair):
    push, pull = pair
    user = pb.serialize(pb.savant_message(kind=8))
    body = b"".join(ld(1, i) for i in [media(user), media(EOS), media(user)])
    assert send_media_batch(push.underlying, body, True) == (3, 1, 5 + len(user))
    assert received(pull, 1) == [[b"cam-1", user]]
    assert send_media_batch(push.underlying, body, False)[:2] == (3, 3)
    assert [m[1] for m in received(pull, 3)] == [user, EOS, user]


def test_send_media_batch_unchecked_reads_kinds_and_takes_what_a_worker_grouped(pair):
    """``check=False`` (the egress, sending what a worker checked): it still stops before an
    EOS by the message's kind, and a hand-off over a client's batch limits goes through."""
    push, pull = pair
    user = pb.serialize(pb.savant_message(kind=8))
    body = b"".join(ld(1, i) for i in [media(user), media(EOS), media(user)])
    assert send_media_batch(push.underlying, body, True, False) == (3, 1, 5 + len(user))
    assert received(pull, 1) == [[b"cam-1", user]]
    n = MAX_BATCH_DATA_PARTS // MAX_DATA_PARTS + 1  # items of the most data parts each
    heavy = ld(1, media(user, data=[b"d"] * MAX_DATA_PARTS)) * n
    assert send_media_batch(push.underlying, heavy, True) is None  # a client may not send it
    assert send_media_batch(push.underlying, heavy, True, False)[:2] == (n, n)
    assert [len(m) for m in received(pull, n)] == [2 + MAX_DATA_PARTS] * n


def test_send_media_batch_stops_where_the_socket_would_block():
    context = zmq.Context()
    slow = context.socket(zmq.DEALER)
    slow.sndhwm = 5
    slow.linger = 0
    slow.connect("tcp://127.0.0.1:1")  # nobody listens: messages stay queued, up to the HWM
    try:
        body = b"".join(ld(1, media(data=[b"%d" % i])) for i in range(100))
        count, sent, size = send_media_batch(slow.underlying, body, False)
        assert count == 100 and 0 < sent < 100 and size == sent * (5 + len(EOS) + 1)
        assert send_media_batch(slow.underlying, body, False) == (100, 0, 0)  # still full
    finally:
        slow.close()
        context.term()
