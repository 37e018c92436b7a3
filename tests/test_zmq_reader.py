"""InStreamReader against real savant-rs writers (and raw pyzmq peers that send bad input)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import zmq
import zmq.asyncio

from mgfast.zmq.settings import InStreamConfig, TopicPrefixSpec
from mgfast.zmq.reader import InStreamReader, Message
from mgfast.zmq.sockets import StreamClosed
from mgfast.zmq.url import parse_socket_url
from tests import savant_peers as sp
from tests.util import arun, endpoint, free_port

WRITER_OF = {"sub": "pub", "router": "dealer", "rep": "req"}






def reader_config(url: str, kind: str = "none", value: str = "", **options) -> InStreamConfig:
    return InStreamConfig(url=parse_socket_url(url, role="reader"),
                          topic_prefix_spec=TopicPrefixSpec(kind=kind, value=value.encode()),
                          **options)


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(f) for f in frames]


def as_pair(message: Message) -> tuple[bytes, list]:
    return message.topic, message.frames


class Collector:
    """Drains an InStreamReader into a list on a task, so savant-rs writers (which block until
    acked) can run on threads meanwhile."""

    def __init__(self, reader: InStreamReader):
        self.reader = reader
        self.items: list[tuple[bytes, list[bytes]]] = []
        self.changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        while True:
            topic, frames = as_pair(await self.reader.recv())
            assert isinstance(topic, bytes) and topic == bytes(frames[0])
            self.items.append((topic, as_bytes(frames)))
            self.changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0, where=None) -> list:
        deadline = time.monotonic() + timeout
        while True:
            selected = [i for i in self.items if where is None or where(i)]
            if len(selected) >= count:
                return selected[:count]
            if self.task.done():
                self.task.result()  # raises what killed the reader loop
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(selected)} of {count} messages within {timeout}s"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def stop(self):
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


async def started(reader: InStreamReader) -> InStreamReader:
    await reader.start()
    return reader


async def warm_up(writer: sp.SavantWriter, collector: Collector, topic: str = "warmup",
                  timeout: float = 10.0):
    """PUB/SUB joins late: publish probes (marked by the extra b"warmup") until one arrives."""
    deadline = time.monotonic() + timeout
    while not any(is_warmup(i) for i in collector.items):
        assert time.monotonic() < deadline, "the subscriber never received a probe"
        await asyncio.to_thread(writer.send, topic, sp.user_data(topic), b"warmup")
        await asyncio.sleep(0.02)


def is_warmup(item) -> bool:
    return item[1][-1] == b"warmup"


def not_warmup(item) -> bool:
    return not is_warmup(item)


# ---- savant-rs writers deliver byte-identical frames ----------------------------------------

EXPECTED = {
    "pub": ["success"] * 3,
    "dealer": ["success", "success", "ack"],
    "req": ["ack"] * 3,
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
@pytest.mark.parametrize("mode", ["bind", "connect"])
@pytest.mark.parametrize("socket_type", ["sub", "router", "rep"])
def test_savant_writer_frames_arrive_identical(socket_type, mode, transport, tmp_path):
    ep = endpoint(transport, tmp_path)
    bind = mode == "bind"
    writer_type = WRITER_OF[socket_type]
    big = os.urandom(200_000)
    frame, data = sp.video_frame("cam-1"), sp.user_data("cam-1")

    async def body():
        reader = InStreamReader(reader_config(f"{socket_type}+{mode}:{ep}"), sp.is_eos)
        writer = sp.SavantWriter(f"{writer_type}+{'connect' if bind else 'bind'}:{ep}",
                                 receive_timeout=2.0, receive_retries=1)
        if bind:
            await reader.start()
            writer.start()
        else:
            writer.start()
            await reader.start()
        collector = Collector(reader)
        try:
            if writer_type == "pub":
                await warm_up(writer, collector)
            results = [
                await asyncio.to_thread(writer.send, "cam-1", frame, big),
                await asyncio.to_thread(writer.send, "cam-1", data, b""),
                await asyncio.to_thread(writer.send_eos, "cam-1"),
            ]
            assert results == EXPECTED[writer_type]
            got = await collector.wait_for(3, where=not_warmup)
            assert [topic for topic, _ in got] == [b"cam-1"] * 3
            assert got[0][1] == sp.frames("cam-1", frame, big)
            assert got[1][1] == sp.frames("cam-1", data, b"")
            eos = got[2][1]
            assert len(eos) == 2 and eos[0] == b"cam-1" and sp.is_eos(eos[1])
            assert reader.dropped == 0 and reader.filtered == 0
        finally:
            await collector.stop()
            await reader.close()
            writer.close()

    arun(body())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("socket_type", ["router", "rep"])
def test_many_messages_in_order(socket_type):
    ep = f"tcp://127.0.0.1:{free_port()}"
    messages = [sp.user_data("cam-1") for _ in range(300)]

    async def body():
        reader = await started(InStreamReader(reader_config(f"{socket_type}+bind:{ep}"),
                                              sp.is_eos))
        collector = Collector(reader)
        try:
            with sp.SavantWriter(f"{WRITER_OF[socket_type]}+connect:{ep}") as writer:
                def send_all():
                    return [writer.send("cam-1", m, str(i).encode())
                            for i, m in enumerate(messages)]

                results = await asyncio.to_thread(send_all)
                assert set(results) == {"ack" if socket_type == "rep" else "success"}
                got = await collector.wait_for(len(messages))
                assert [frames for _, frames in got] == [
                    sp.frames("cam-1", m, str(i).encode()) for i, m in enumerate(messages)]
        finally:
            await collector.stop()
            await reader.close()

    arun(body())


# ---- topic filters --------------------------------------------------------------------------

FILTERS = [
    ("none", "", [b"cam-1", b"cam-10", b"other", b"cam-1"]),
    ("source_id", "cam-1", [b"cam-1", b"cam-1"]),
    ("prefix", "cam-", [b"cam-1", b"cam-10", b"cam-1"]),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind,value,expected", FILTERS)
@pytest.mark.parametrize("socket_type", ["sub", "router", "rep"])
def test_topic_prefix_spec(socket_type, kind, value, expected):
    ep = f"tcp://127.0.0.1:{free_port()}"
    topics = ["cam-1", "cam-10", "other"]

    async def body():
        reader = await started(InStreamReader(reader_config(f"{socket_type}+bind:{ep}", kind,
                                                             value), sp.is_eos))
        collector = Collector(reader)
        try:
            with sp.SavantWriter(f"{WRITER_OF[socket_type]}+connect:{ep}") as writer:
                if socket_type == "sub":
                    await warm_up(writer, collector, topic="cam-1")
                for topic in topics:
                    await asyncio.to_thread(writer.send, topic, sp.user_data(topic), b"")
                # a last message every filter accepts marks the end
                await asyncio.to_thread(writer.send, "cam-1", sp.user_data("cam-1"), b"end")
                got = await collector.wait_for(len(expected), where=not_warmup)
                assert [topic for topic, _ in got] == expected
                assert got[-1][1][-1] == b"end"
                rejected = len(topics) + 1 - len(expected)
                if socket_type == "sub":
                    # the subscription already keeps out what does not start with the value
                    rejected = 1 if kind == "source_id" else 0  # cam-10 matches "cam-1"
                assert reader.filtered == rejected
                # an end-of-stream passes the filter (as in savant-rs); router and rep ack it
                if socket_type != "sub":
                    assert await asyncio.to_thread(writer.send_eos, "other") == "ack"
                    got = await collector.wait_for(len(expected) + 1, where=not_warmup)
                    assert got[-1][0] == b"other" and sp.is_eos(got[-1][1][1])
        finally:
            await collector.stop()
            await reader.close()

    arun(body())


@pytest.mark.timeout(30)
def test_rep_acks_filtered_messages():
    ep = f"tcp://127.0.0.1:{free_port()}"

    async def body():
        reader = await started(InStreamReader(
            reader_config(f"rep+bind:{ep}", "source_id", "cam-1"), sp.is_eos))
        collector = Collector(reader)
        try:
            with sp.SavantWriter(f"req+connect:{ep}", receive_timeout=2.0) as writer:
                assert await asyncio.to_thread(writer.send, "cam-2",
                                               sp.user_data("cam-2"), b"") == "ack"
                assert await asyncio.to_thread(writer.send, "cam-1",
                                               sp.user_data("cam-1"), b"") == "ack"
                got = await collector.wait_for(1)
                assert got[0][0] == b"cam-1" and reader.filtered == 1
        finally:
            await collector.stop()
            await reader.close()

    arun(body())


# ---- bad input ------------------------------------------------------------------------------

def raising_is_eos(message) -> bool:
    if bytes(message) == b"boom":
        raise ValueError("not a Savant message")
    return sp.is_eos(message)


@pytest.mark.timeout(30)
def test_router_drops_malformed_multiparts():
    ep = f"tcp://127.0.0.1:{free_port()}"
    good = sp.frames("cam-1", sp.user_data("cam-1"), b"x")

    async def body():
        context = zmq.asyncio.Context()
        reader = await started(InStreamReader(reader_config(f"router+bind:{ep}"), raising_is_eos,
                                              context))
        dealer = context.socket(zmq.DEALER)
        dealer.connect(ep)
        try:
            await dealer.send_multipart([b"only-a-topic"])  # [routing id, topic]: too short
            await dealer.send_multipart([b"cam-1", b"boom"])  # is_eos raises
            await dealer.send_multipart(good)
            topic, frames = as_pair(await asyncio.wait_for(reader.recv(), 5))
            assert topic == b"cam-1" and as_bytes(frames) == good
            assert reader.dropped == 2
            # not a Savant message, but well-formed: the reader is not a validator
            await dealer.send_multipart([b"cam-1", b"\xff\xff", b""])
            topic, frames = as_pair(await asyncio.wait_for(reader.recv(), 5))
            assert as_bytes(frames) == [b"cam-1", b"\xff\xff", b""]
        finally:
            dealer.close(linger=0)
            await reader.close()
            context.term()

    arun(body())


@pytest.mark.timeout(30)
def test_rep_replies_to_malformed_and_keeps_reading(tmp_path):
    ep = f"ipc://{tmp_path}/rep"

    async def body():
        context = zmq.asyncio.Context()
        reader = await started(InStreamReader(reader_config(f"rep+bind:{ep}"), sp.is_eos,
                                              context))
        req = context.socket(zmq.REQ)
        req.connect(ep)
        collector = Collector(reader)
        try:
            await req.send_multipart([b"lonely"])
            assert await asyncio.wait_for(req.recv_multipart(), 5) == [b"OK"]
            good = sp.frames("cam-1", sp.user_data("cam-1"))
            await req.send_multipart(good)
            assert await asyncio.wait_for(req.recv_multipart(), 5) == [b"OK"]
            got = await collector.wait_for(1)
            assert got[0][1] == good and reader.dropped == 1
        finally:
            await collector.stop()
            req.close(linger=0)
            await reader.close()
            context.term()

    arun(body())


@pytest.mark.timeout(30)
def test_sub_drops_single_frame_messages():
    ep = f"tcp://127.0.0.1:{free_port()}"

    async def body():
        context = zmq.asyncio.Context()
        reader = await started(InStreamReader(reader_config(f"sub+bind:{ep}"), sp.is_eos,
                                              context))
        pub = context.socket(zmq.PUB)
        pub.connect(ep)
        collector = Collector(reader)
        try:
            deadline = time.monotonic() + 10
            while not collector.items:  # PUB/SUB joins late
                assert time.monotonic() < deadline
                await pub.send_multipart(sp.frames("cam-1", sp.user_data("cam-1"), b"warmup"))
                await asyncio.sleep(0.02)
            await pub.send_multipart([b"cam-1"])
            await pub.send_multipart(sp.frames("cam-1", sp.user_data("cam-1"), b"end"))
            await collector.wait_for(1, where=lambda i: i[1][-1] == b"end")
            assert reader.dropped == 1
        finally:
            await collector.stop()
            pub.close(linger=0)
            await reader.close()
            context.term()

    arun(body())


@pytest.mark.timeout(30)
def test_router_drops_late_messages_of_a_replaced_writer():
    """As savant-rs: once a topic arrives from a new routing id, the old one is stale."""
    ep = f"tcp://127.0.0.1:{free_port()}"

    async def body():
        context = zmq.asyncio.Context()
        reader = await started(InStreamReader(reader_config(f"router+bind:{ep}"), sp.is_eos,
                                              context))
        old, new = context.socket(zmq.DEALER), context.socket(zmq.DEALER)
        old.setsockopt(zmq.ROUTING_ID, b"old")
        new.setsockopt(zmq.ROUTING_ID, b"new")
        old.connect(ep)
        new.connect(ep)
        try:
            async def exchange(sock, payload: bytes):
                await sock.send_multipart(sp.frames("cam-1", sp.user_data("cam-1"), payload))

            await exchange(old, b"1")
            assert bytes((await reader.recv()).frames[-1]) == b"1"
            await exchange(new, b"2")
            assert bytes((await reader.recv()).frames[-1]) == b"2"
            pending = asyncio.ensure_future(reader.recv())
            await exchange(old, b"3")  # stale: the pending recv reads and drops it
            deadline = time.monotonic() + 5
            while reader.stale == 0:  # two connections: wait for 3 before sending 4
                assert time.monotonic() < deadline, "the stale message never arrived"
                await asyncio.sleep(0.01)
            await exchange(new, b"4")
            assert bytes((await asyncio.wait_for(pending, 5)).frames[-1]) == b"4"
            assert reader.stale == 1 and reader.received == 3
        finally:
            old.close(linger=0)
            new.close(linger=0)
            await reader.close()
            context.term()

    arun(body())


# ---- lifecycle ------------------------------------------------------------------------------

@pytest.mark.timeout(30)
def test_recv_is_cancellation_safe_and_close_wakes_it(tmp_path):
    ep = f"ipc://{tmp_path}/deep/er/in"

    async def body():
        reader = await started(InStreamReader(reader_config(f"router+bind:{ep}",
                                                            fix_ipc_permissions=0o770),
                                              sp.is_eos))
        assert os.stat(ep[len("ipc://"):]).st_mode & 0o777 == 0o770
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.recv(), 0.05)  # nothing to read: awaits, no spin
        with sp.SavantWriter(f"dealer+connect:{ep}") as writer:
            await asyncio.to_thread(writer.send, "cam-1", sp.user_data("cam-1"), b"x")
            topic, frames = as_pair(await asyncio.wait_for(reader.recv(), 5))
            assert topic == b"cam-1" and bytes(frames[-1]) == b"x"
        pending = asyncio.ensure_future(reader.recv())
        await asyncio.sleep(0.05)
        await reader.close()
        with pytest.raises(StreamClosed):
            await asyncio.wait_for(pending, 5)
        with pytest.raises(StreamClosed):
            await reader.recv()

    arun(body())
