"""OutStreamWriter against real savant-rs readers (and raw pyzmq peers where a test needs a peer
that misbehaves on purpose)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import time

import pytest
import zmq
import zmq.asyncio

from mgfast.media import (MAX_BATCH_DATA_PARTS, MAX_DATA_PARTS, encode_frames_batch_pieces,
                          encode_media_batch)
from mgfast.zmq.settings import OutStreamConfig
from mgfast.zmq.sockets import EndpointError, StreamClosed
from mgfast.zmq.url import parse_socket_url
from mgfast.zmq.writer import OutStreamWriter, WriteResult
from tests import savant_peers as sp
from tests.util import arun, endpoint, free_port, scaled

READER_OF = {"pub": "sub", "dealer": "router", "req": "rep"}






@contextlib.asynccontextmanager
async def running(config: OutStreamConfig, context: zmq.asyncio.Context | None = None):
    """A started writer, closed on the way out."""
    writer = OutStreamWriter(config, context)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()


@contextlib.asynccontextmanager
async def routed(config: OutStreamConfig, ep: str):
    """A pyzmq ROUTER bound at ``ep`` (a reader that replies by hand) and a started writer;
    both closed on the way out."""
    context = zmq.asyncio.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(ep)
    try:
        async with running(config, context) as writer:
            yield router, writer
    finally:
        router.close(linger=0)
        context.term()


def writer_config(url: str, **options) -> OutStreamConfig:
    return OutStreamConfig(url=parse_socket_url(url, role="writer"), **options)


def peer_url(socket_type: str, bind: bool, ep: str) -> str:
    """The savant-rs reader URL that pairs with a writer of ``socket_type`` / ``bind``."""
    return f"{READER_OF[socket_type]}+{'connect' if bind else 'bind'}:{ep}"


async def warm_up(writer: OutStreamWriter, reader: sp.SavantReader, timeout: float = 10.0):
    """PUB/SUB joins late: publish probes until the subscriber has seen one."""
    deadline = time.monotonic() + timeout
    probe = sp.frames("warmup", sp.user_data("warmup"))
    while not reader.messages:
        assert time.monotonic() < deadline, "the subscriber never received a probe"
        assert await writer.write(probe, eos=False) is WriteResult.SUCCESS
        await asyncio.sleep(0.02)


def not_warmup(message: sp.Received) -> bool:
    return message.topic != b"warmup"


# ---- delivery to savant-rs readers ----------------------------------------------------------

EXPECTED = {
    "pub": [WriteResult.SUCCESS] * 3,
    "dealer": [WriteResult.SUCCESS, WriteResult.SUCCESS, WriteResult.ACK],
    "req": [WriteResult.ACK] * 3,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("mode", ["bind", "connect"])
@pytest.mark.parametrize("socket_type", ["pub", "dealer", "req"])
def test_savant_reader_receives_identical_frames(socket_type, mode, transport, tmp_path):
    ep = endpoint(transport, tmp_path)
    bind = mode == "bind"
    big = os.urandom(200_000)  # above the zero-copy threshold
    sent = [
        sp.frames("cam-1", sp.video_frame("cam-1"), big, b"second extra"),
        sp.frames("cam-1", sp.user_data("cam-1"), b""),
        sp.frames("cam-1", sp.end_of_stream("cam-1")),
    ]

    async def body():
        writer = OutStreamWriter(writer_config(
            f"{socket_type}+{mode}:{ep}", receive_timeout=1.0, receive_retries=2))
        reader = sp.SavantReader(peer_url(socket_type, bind, ep))
        if bind:
            await writer.start()
            reader.start()
        else:
            reader.start()
            await writer.start()
        try:
            if socket_type == "pub":
                await warm_up(writer, reader)
            results = []
            for f in sent:
                # pass memoryviews, as the server does with request bodies
                results.append(await writer.write([memoryview(x) for x in f],
                                                  eos=sp.is_eos(f[1])))
            assert results == EXPECTED[socket_type]
            received = await asyncio.to_thread(reader.wait_for, 3, where=not_warmup)
            assert [r.frames for r in received] == sent
            assert [r.eos for r in received] == [False, False, True]
            assert reader.errors == []
        finally:
            await writer.close()
            reader.close()

    arun(body())


# ---- acks and timeouts ----------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_req_without_peer_times_out_then_recovers(tmp_path):
    ep = f"tcp://127.0.0.1:{free_port()}"
    config = writer_config(f"req+connect:{ep}", receive_timeout=0.2, receive_retries=2)
    first = sp.frames("cam-1", sp.user_data("cam-1"))

    async def body():
        async with running(config) as writer:
            started = time.monotonic()
            assert await writer.write(first, eos=False) is WriteResult.ACK_TIMEOUT
            elapsed = time.monotonic() - started
            assert 0.55 <= elapsed < scaled(1.5), elapsed  # 0.2 s x (2 + 1)
            # the REQ socket is not stuck: once a REP peer appears, writes are acked again
            with sp.SavantReader(f"rep+bind:{ep}") as reader:
                later = []
                for _ in range(10):
                    f = sp.frames("cam-1", sp.user_data("cam-1"))
                    later.append(f)
                    if await writer.write(f, eos=False) is WriteResult.ACK:
                        break
                else:
                    pytest.fail("the REQ writer never recovered from its ack timeout")
                # the unacked messages were still delivered, in order, before the acked one
                received = await asyncio.to_thread(reader.wait_for, 1 + len(later))
                assert [r.frames for r in received] == [first, *later]
                assert writer.results[WriteResult.ACK_TIMEOUT] == len(later)

    arun(body())


@pytest.mark.timeout(30)
def test_dealer_eos_ack_is_ok_of_that_eos(tmp_path):
    """A dealer waits for OK only after an EOS; a late OK is not taken for a later EOS's ack,
    and a reply that is not OK does not count."""
    ep = f"ipc://{tmp_path}/dealer"
    config = writer_config(f"dealer+connect:{ep}", receive_timeout=0.1, receive_retries=1)
    eos = sp.frames("cam-1", sp.end_of_stream("cam-1"))

    async def body():
        async with routed(config, ep) as (router, writer):
            # a plain message needs no reply
            msg = sp.frames("cam-1", sp.user_data("cam-1"), b"x")
            assert await writer.write(msg, eos=False) is WriteResult.SUCCESS
            assert (await router.recv_multipart())[1:] == msg
            # no reply within 0.1 s x 2: ack timeout
            started = time.monotonic()
            assert await writer.write(eos, eos=True) is WriteResult.ACK_TIMEOUT
            assert 0.18 <= time.monotonic() - started < scaled(1.0)
            first = await router.recv_multipart()
            await router.send_multipart([first[0], b"OK"])  # too late
            await asyncio.sleep(0.05)  # let the late reply reach the dealer's queue
            # the late OK must not ack the next EOS
            assert await writer.write(eos, eos=True) is WriteResult.ACK_TIMEOUT
            second = await router.recv_multipart()
            assert second[1:] == eos
            # a reply that is not OK is ignored; the OK after it acks
            task = asyncio.ensure_future(writer.write(eos, eos=True))
            third = await router.recv_multipart()
            await router.send_multipart([third[0], b"NO"])
            await router.send_multipart([third[0], b"OK"])
            assert await task is WriteResult.ACK
            assert writer.stale_replies == 1 and writer.unexpected_replies == 1

    arun(body())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("socket_type", ["dealer", "req"])
def test_bound_writer_without_peer_gives_send_timeout(socket_type):
    """A bound dealer/req with no peer has nowhere to put a message: after send_timeout x
    (send_retries + 1) the result is a send timeout, for every queued request at once."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    config = writer_config(f"{socket_type}+bind:{ep}", send_timeout=0.1, send_retries=2)

    async def body():
        async with running(config) as writer:
            started = time.monotonic()
            results = await asyncio.gather(*(
                writer.write(sp.frames("cam-1", sp.user_data("cam-1")), eos=False)
                for _ in range(20)))
            elapsed = time.monotonic() - started
            assert results == [WriteResult.SEND_TIMEOUT] * 20
            # each request's budget runs from its submission: 20 of them take one budget
            assert 0.28 <= elapsed < scaled(1.0), elapsed

    arun(body())


@pytest.mark.timeout(30)
def test_dealer_send_timeout_at_high_water_mark():
    """A connecting dealer whose peer is absent queues up to its HWM, then times out."""
    ep = f"tcp://127.0.0.1:{free_port()}"
    config = writer_config(f"dealer+connect:{ep}", send_timeout=0.05, send_retries=1,
                           send_hwm=1)

    async def body():
        async with running(config) as writer:
            message = sp.frames("cam-1", sp.user_data("cam-1"))
            for sent in range(1, 100):
                started = time.monotonic()
                result = await writer.write(message, eos=False)
                if result is WriteResult.SEND_TIMEOUT:
                    break
                assert result is WriteResult.SUCCESS
            else:
                pytest.fail("100 messages fit a dealer queue with send_hwm=1")
            assert 0.09 <= time.monotonic() - started < scaled(1.0)
            assert sent <= 10

    arun(body())


@pytest.mark.timeout(30)
def test_pub_never_blocks():
    ep = f"tcp://127.0.0.1:{free_port()}"
    config = writer_config(f"pub+bind:{ep}", send_timeout=5.0, send_hwm=1)

    async def body():
        async with running(config) as writer:
            with sp.SavantReader(f"sub+connect:{ep}", receive_hwm=1):
                message = sp.frames("cam-1", sp.user_data("cam-1"), os.urandom(10_000))
                started = time.monotonic()
                results = await asyncio.gather(*(writer.write(message, eos=False)
                                                 for _ in range(2000)))
                assert set(results) == {WriteResult.SUCCESS}
                assert time.monotonic() - started < scaled(5.0)

    arun(body())


# ---- ordering under concurrency -------------------------------------------------------------

@pytest.mark.timeout(40)
@pytest.mark.parametrize("socket_type,count", [("dealer", 1000), ("req", 200), ("pub", 1000)])
def test_concurrent_writes_keep_submission_order(socket_type, count):
    ep = f"tcp://127.0.0.1:{free_port()}"
    config = writer_config(f"{socket_type}+bind:{ep}", send_hwm=100_000)
    messages = []
    for i in range(count):
        if i % 250 == 249:
            messages.append((sp.frames("cam-1", sp.end_of_stream("cam-1")), True))
        else:
            messages.append((sp.frames("cam-1", sp.user_data("cam-1"), str(i).encode()), False))

    async def body():
        writer = OutStreamWriter(config)
        await writer.start()
        reader = sp.SavantReader(f"{READER_OF[socket_type]}+connect:{ep}",
                                 receive_hwm=100_000).start()
        try:
            if socket_type == "pub":
                await warm_up(writer, reader)
            completed = []

            async def one(i, frames, eos):
                result = await writer.write(frames, eos=eos)
                completed.append(i)
                return result

            results = await asyncio.gather(*(one(i, f, e) for i, (f, e) in enumerate(messages)))
            assert completed == list(range(count))
            if socket_type == "req":
                assert set(results) == {WriteResult.ACK}
            elif socket_type == "dealer":
                assert [r is WriteResult.ACK for r in results] == [e for _, e in messages]
            received = await asyncio.to_thread(reader.wait_for, count, where=not_warmup)
            # savant-rs readers deliver an EOS without extras (there are none here)
            assert [r.frames for r in received] == [f for f, _ in messages]
        finally:
            await writer.close()
            reader.close()

    arun(body())


# ---- sockets: ipc directories, permissions, endpoint errors, close --------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("permissions", [0o777, 0o600])
def test_ipc_bind_creates_directories_and_fixes_permissions(tmp_path, permissions):
    path = tmp_path / "a" / "b" / "out.sock"
    config = writer_config(f"dealer+bind:ipc://{path}", fix_ipc_permissions=permissions,
                           receive_timeout=1.0)

    async def body():
        async with running(config) as writer:
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert stat.S_IMODE(path.stat().st_mode) == permissions
            with sp.SavantReader(f"router+connect:ipc://{path}") as reader:
                eos = sp.frames("cam-1", sp.end_of_stream("cam-1"))
                assert await writer.write(eos, eos=True) is WriteResult.ACK
                assert reader.wait_for(1)[0].frames == eos

    arun(body())


@pytest.mark.timeout(30)
def test_endpoint_errors_name_the_endpoint(tmp_path):
    async def body():
        port = free_port()
        context = zmq.asyncio.Context()
        holder = context.socket(zmq.ROUTER)
        holder.bind(f"tcp://127.0.0.1:{port}")
        try:
            url = f"dealer+bind:tcp://127.0.0.1:{port}"
            with pytest.raises(EndpointError, match=f"bind {re.escape(url)}: .*in use"):
                await OutStreamWriter(writer_config(url), context).start()
            (tmp_path / "dir.sock").mkdir()
            url = f"pub+bind:ipc://{tmp_path}/dir.sock"
            with pytest.raises(EndpointError, match=f"bind {re.escape(url)}: .*directory"):
                await OutStreamWriter(writer_config(url)).start()
            (tmp_path / "file").write_text("")
            url = f"req+bind:ipc://{tmp_path}/file/sub/out"
            with pytest.raises(EndpointError, match=f"directory of {re.escape(url)}: "):
                await OutStreamWriter(writer_config(url)).start()
            url = f"pub+bind:tcp://203.0.113.1:{port}"  # TEST-NET-3: not an address of ours
            with pytest.raises(EndpointError, match=f"bind {re.escape(url)}: "):
                await OutStreamWriter(writer_config(url)).start()
        finally:
            holder.close(linger=0)
            context.term()

    arun(body())


@pytest.mark.timeout(30)
def test_close_fails_what_cannot_finish():
    ep = f"tcp://127.0.0.1:{free_port()}"
    config = writer_config(f"dealer+bind:{ep}", send_timeout=10.0, send_retries=0)

    async def body():
        writer = OutStreamWriter(config)
        with pytest.raises(StreamClosed):
            await writer.write(sp.frames("cam-1", sp.user_data("cam-1")), eos=False)
        await writer.start()
        pending = [asyncio.ensure_future(writer.write(sp.frames("cam-1", sp.user_data()),
                                                      eos=False)) for _ in range(3)]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await writer.close(timeout=0.1)
        assert time.monotonic() - started < scaled(1.0)
        for task in pending:
            with pytest.raises(StreamClosed):
                await task
        with pytest.raises(StreamClosed):
            await writer.write(sp.frames("cam-1", sp.user_data("cam-1")), eos=False)
        await writer.close()  # idempotent

    arun(body())


@pytest.mark.timeout(30)
def test_group_is_written_as_a_prefix_and_stops_at_the_first_failure():
    """submit_group: messages go out in order until one is not accepted; that one gets its
    failure and the rest NOT_ATTEMPTED, so nothing after the gap reaches the peer."""
    ep = f"tcp://127.0.0.1:{free_port()}"  # no peer: a connecting dealer queues up to its HWM
    config = writer_config(f"dealer+connect:{ep}", send_timeout=0.05, send_retries=1,
                           send_hwm=1)

    async def body():
        async with running(config) as writer:
            messages = [sp.frames(f"cam-{i}", sp.user_data(f"cam-{i}")) for i in range(50)]
            results = await writer.submit_group(messages)
            assert len(results) == 50
            failed = results.index(WriteResult.SEND_TIMEOUT)
            assert 0 < failed < 10  # the HWM took a few, then the socket refused
            assert results[:failed] == [WriteResult.SUCCESS] * failed
            assert results[failed + 1:] == [WriteResult.NOT_ATTEMPTED] * (49 - failed)
            assert writer.results[WriteResult.SUCCESS] == failed
            assert writer.queue_depth == 0

    arun(body())


@pytest.mark.timeout(30)
def test_group_with_an_eos_waits_for_its_ack_and_keeps_order(tmp_path):
    """A dealer group: the plain messages around an EOS go out in runs, the EOS waits for the
    reader's OK, and the reader sees the group in order."""
    ep = f"ipc://{tmp_path}/group"
    config = writer_config(f"dealer+connect:{ep}", receive_timeout=1.0, receive_retries=1)
    messages = [sp.frames("cam-1", sp.user_data("cam-1"), b"%d" % i) for i in range(20)]
    messages[7] = sp.frames("cam-1", sp.end_of_stream("cam-1"))
    eos = [i == 7 for i in range(20)]

    async def body():
        async with routed(config, ep) as (router, writer):
            group = writer.submit_group(messages, eos)
            received = []
            while len(received) < 20:
                parts = await asyncio.wait_for(router.recv_multipart(), 5)
                received.append(parts[1:])
                if len(received) == 8:
                    assert not group.done()  # waiting for the EOS's ack
                    await router.send_multipart([parts[0], b"OK"])
            results = await group
            assert received == messages
            assert results == [WriteResult.ACK if e else WriteResult.SUCCESS for e in eos]

    arun(body())


def test_group_refuses_a_message_without_topic_and_mismatched_flags():
    config = writer_config(f"pub+bind:tcp://127.0.0.1:{free_port()}")

    async def body():
        async with running(config) as writer:
            with pytest.raises(ValueError, match="at least the frames"):
                writer.submit_group([[b"topic"]])
            with pytest.raises(ValueError, match="one eos flag per message"):
                writer.submit_group([[b"t", b"m"]], [False, True])

    arun(body())


@pytest.mark.timeout(30)
def test_an_idle_writer_sends_at_once_unless_an_ack_is_awaited(tmp_path):
    """With nothing queued, what needs no acknowledgement is sent in the caller's turn: the
    future is done when returned (the HTTP side answers without a task step). A dealer's EOS
    still waits for the reader's OK, and what follows it queues behind it, in order."""
    ep = f"ipc://{tmp_path}/idle"
    config = writer_config(f"dealer+connect:{ep}", receive_timeout=1.0, receive_retries=1)

    async def body():
        async with routed(config, ep) as (router, writer):
            first = writer.submit(sp.frames("cam-1", sp.user_data("cam-1")), False)
            assert first.done() and first.result() is WriteResult.SUCCESS
            group = writer.submit_group([sp.frames("cam-1", sp.user_data("cam-1"))] * 3)
            assert group.done() and group.result() == [WriteResult.SUCCESS] * 3
            eos = writer.submit(sp.frames("cam-1", sp.end_of_stream("cam-1")), True)
            after = writer.submit(sp.frames("cam-1", sp.user_data("cam-1"), b"after"), False)
            assert not eos.done() and not after.done()  # the EOS waits for its OK
            received = []
            while len(received) < 6:
                parts = await asyncio.wait_for(router.recv_multipart(), 5)
                received.append(parts[1:])
                if len(received) == 5:
                    await router.send_multipart([parts[0], b"OK"])
            assert await eos is WriteResult.ACK and await after is WriteResult.SUCCESS
            assert received[-1][-1] == b"after"
            assert writer.results[WriteResult.SUCCESS] == 5 and writer.queue_depth == 0

    arun(body())


@pytest.mark.timeout(30)
def test_a_batch_body_is_written_at_once_only_when_nothing_can_be_overtaken(tmp_path):
    """submit_batch (a MediaBatch body as one group, the server's fast path): written at once
    when the writer is idle; queued behind a message that awaits its acknowledgement, and
    from an EOS in the batch on, so nothing overtakes; None, with nothing sent, when an item
    is malformed (the caller then answers each item)."""
    ep = f"ipc://{tmp_path}/batch"
    config = writer_config(f"dealer+connect:{ep}", receive_timeout=1.0, receive_retries=1)
    items = [(b"cam-1", sp.to_bytes(sp.user_data("cam-1")), [b"%d" % i]) for i in range(3)]
    body = encode_media_batch(items)
    size = sum(len(t) + len(m) + sum(map(len, d)) for t, m, d in items)
    eos = sp.frames("cam-1", sp.end_of_stream("cam-1"))
    with_eos = encode_media_batch([items[0], (eos[0], eos[1], []), items[1]])

    async def received(router: zmq.asyncio.Socket, n: int) -> list[list[bytes]]:
        """n messages as the router got them: [identity, topic, message, *data]."""
        return [await asyncio.wait_for(router.recv_multipart(), 5) for _ in range(n)]

    async def body_of_test():
        async with routed(config, ep) as (router, writer):
            acked = writer.submit(eos, True)
            count, frame_bytes, queued = writer.submit_batch(body)
            assert (count, frame_bytes) == (3, size) and not queued.done()  # behind the EOS
            (first,) = await received(router, 1)
            assert first[1:] == eos and not queued.done()
            await router.send_multipart([first[0], b"OK"])
            assert await acked is WriteResult.ACK
            assert await asyncio.wait_for(queued, 5) == [WriteResult.SUCCESS] * 3
            assert [m[1:] for m in await received(router, 3)] == [[t, m, *d] for t, m, d in items]

            # idle: written at once
            count, _, written = writer.submit_batch(body)
            assert written.done() and written.result() == [WriteResult.SUCCESS] * 3
            assert [m[1:] for m in await received(router, 3)] == [[t, m, *d] for t, m, d in items]

            # an EOS in the middle: the first item goes at once, the rest after the EOS's OK
            count, _, written = writer.submit_batch(with_eos)
            assert count == 3 and not written.done()
            got = await received(router, 2)
            assert got[0][1:] == [items[0][0], items[0][1], *items[0][2]] and got[1][1:] == eos
            assert writer.submit_batch(b"\x0a\x02\x08\x01") is None  # a malformed item
            assert writer.queue_depth == 3  # the batch's run alone (its result is pending)
            await router.send_multipart([got[1][0], b"OK"])
            assert await asyncio.wait_for(written, 5) == [
                WriteResult.SUCCESS, WriteResult.ACK, WriteResult.SUCCESS]
            (last,) = await received(router, 1)
            assert last[1:] == [items[1][0], items[1][1], *items[1][2]]

    arun(body_of_test())


@pytest.mark.timeout(30)
def test_a_hand_off_over_the_client_limits_is_queued_whole_behind_a_busy_writer(tmp_path):
    """The egress's ``check=False``: a worker may group more than a client may send in one
    batch, and it is written in order even when the writer is busy (an EOS awaits its OK)."""
    ep = f"ipc://{tmp_path}/heavy"
    config = writer_config(f"dealer+connect:{ep}", receive_timeout=1.0, receive_retries=1)
    n = MAX_BATCH_DATA_PARTS // MAX_DATA_PARTS + 1
    user = sp.to_bytes(sp.user_data("cam-1"))
    heavy = b"".join(encode_frames_batch_pieces([[b"cam-1", user, *[b"d"] * MAX_DATA_PARTS]]
                                                * n)[1])
    eos = sp.frames("cam-1", sp.end_of_stream("cam-1"))

    async def body_of_test():
        async with routed(config, ep) as (router, writer):
            acked = writer.submit(eos, True)
            assert writer.submit_batch(heavy) is None  # over a client's limits
            count, _, queued = writer.submit_batch(heavy, check=False)
            assert count == n and not queued.done()
            first = await asyncio.wait_for(router.recv_multipart(), 5)
            await router.send_multipart([first[0], b"OK"])
            assert await acked is WriteResult.ACK
            assert await asyncio.wait_for(queued, 5) == [WriteResult.SUCCESS] * n
            for _ in range(n):
                parts = await asyncio.wait_for(router.recv_multipart(), 5)
                assert parts[1:3] == [b"cam-1", user] and len(parts) == 3 + MAX_DATA_PARTS

    arun(body_of_test())
