"""The client's Lane and Forwarder in-process: a fake connection that records what is written
and answers when the test says so, a fake in_stream, an injected clock. No sockets."""

from __future__ import annotations

import asyncio
import logging
from zlib import crc32

import pytest

from mgfast.client.forwarder import Forwarder
from mgfast.batching import all_accepted
from mgfast.client.lane import FILL_BYTES, RETRY_LOG_INTERVAL, Lane
from mgfast.client.stats import ClientStats
from mgfast.config.loader import load_client_config
from mgfast.config.model import RetryStrategy
from mgfast.http.client_connection import ClientResponse, ConnectionLost
from mgfast.media import decode_media
from mgfast.zmq.reader import Message
from tests.savant_proto import savant_message, serialize
from tests.util import arun

MESSAGE = serialize(savant_message())


class FakeConnection:
    """Records the requests a lane writes (one entry per request) and answers on demand."""

    def __init__(self) -> None:
        self.on_response = None
        self.on_failure = None
        self.on_writable = None
        self.writable = True  # as a real transport under its high-water mark
        self.connected = False
        self.connects = 0
        self.written: list[tuple[object, bytes]] = []  # (entry, the request's bytes)
        self.pending: list[object] = []

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    def reusable(self) -> bool:
        return self.connected

    async def connect(self) -> None:
        if not self.connected:
            self.connected = True
            self.connects += 1

    def send(self, entries, data) -> None:
        blob = b"".join(bytes(d) for d in data)
        requests = blob.split(b"POST ")[1:]
        assert len(requests) == len(entries)
        for entry, request in zip(entries, requests):
            self.written.append((entry, b"POST " + request))
            self.pending.append(entry)

    def answer(self, status: int, body: bytes = b"") -> None:
        entry = self.pending.pop(0)
        self.on_response(entry, ClientResponse(status, {}, body, True))

    def fail(self, error) -> None:
        entries, self.pending = self.pending, []
        self.connected = False
        self.on_failure(entries, error)

    def close(self) -> None:
        self.connected = False
        self.pending = []


class FakeTarget:
    post_path = b"/"
    media_headers = b"content-type: application/protobuf\r\n"
    batch_headers = b"content-type: application/x-mgfast-batch\r\n"
    health_path = b"/health"
    health_headers = b""

    def __init__(self) -> None:
        self.made: list[FakeConnection] = []

    def connection(self) -> FakeConnection:
        self.made.append(FakeConnection())
        return self.made[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def topics_written(connection: FakeConnection) -> list[bytes]:
    return [bytes(decode_media(request.split(b"\r\n\r\n", 1)[1])[0])
            for _, request in connection.written]


def lane(*, pipeline: int = 4, clock=None) -> tuple[Lane, FakeConnection, ClientStats, list]:
    released: list[int] = []
    stats = ClientStats()
    target = FakeTarget()
    the_lane = Lane(0, target, batch=1, pipeline=pipeline,
                    retry=RetryStrategy(initial_delay=0.001, maximum_delay=0.001),
                    stats=stats, release=released.append, clock=clock or Clock())
    return the_lane, target.made[0], stats, released


async def until(condition, what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting for {what}")


def item(topic: bytes) -> Message:
    return Message(topic, [topic, MESSAGE])


def test_a_lane_writes_no_more_while_its_transport_is_backed_up_nor_past_a_fill_budget():
    """Flow control: a paused transport gets nothing until it resumes; one fill stops after
    FILL_BYTES of bodies and the rest follows in the next turn (16 pipelined 4 MiB batches
    written at once made TLS encrypt 64 MiB into one buffer)."""
    async def scenario() -> None:
        the_lane, conn, stats, released = lane(pipeline=16)
        task = asyncio.create_task(the_lane.run())
        conn.writable = False
        big = b"x" * (FILL_BYTES // 2)
        for i in range(6):
            the_lane.submit_many([Message(b"t%d" % i, [b"t%d" % i, MESSAGE, big])])
        await until(lambda: conn.connected, "the connection")
        the_lane._depth = 16  # past slow start
        await asyncio.sleep(0.01)
        assert conn.written == []  # backed up: nothing more is handed to the transport
        fills: list[int] = []
        send = conn.send
        conn.send = lambda entries, data: fills.append(len(entries)) or send(entries, data)
        conn.writable = True
        conn.on_writable()
        await until(lambda: len(conn.written) == 6, "every request, fill by fill")
        assert fills == [2, 2, 2]  # each fill stopped once past FILL_BYTES
        assert topics_written(conn) == [b"t%d" % i for i in range(6)]
        while conn.pending:
            conn.answer(200)
        await until(lambda: stats.forwarded == 6, "all delivered")
        the_lane.finish()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_a_lane_pipelines_in_order_and_grows_its_window_with_every_success() -> None:
    async def scenario() -> None:
        the_lane, conn, stats, released = lane(pipeline=4)
        task = asyncio.create_task(the_lane.run())
        for i in range(8):
            the_lane.submit_many([item(b"t%d" % i)])
        await until(lambda: conn.written, "the first request")
        await asyncio.sleep(0.005)
        assert len(conn.written) == 1  # a new connection starts with one request in flight
        conn.answer(200)
        await until(lambda: len(conn.written) == 3, "two more requests")  # window 2
        conn.answer(200)
        conn.answer(200)
        await until(lambda: len(conn.written) == 7, "four more")  # window 4
        assert topics_written(conn) == [b"t%d" % i for i in range(7)]
        while conn.pending:
            conn.answer(200)
            await asyncio.sleep(0.001)
        await until(lambda: stats.forwarded == 8, "all delivered")
        assert sum(released) == 8 and the_lane.held == 0
        the_lane.finish()
        await asyncio.wait_for(task, 5)

    arun(scenario())


def test_a_rejected_message_is_skipped_and_a_transient_failure_resends_in_order(caplog) -> None:
    async def scenario() -> None:
        the_lane, conn, stats, released = lane(pipeline=1)
        task = asyncio.create_task(the_lane.run())
        for topic in (b"a", b"b", b"c"):
            the_lane.submit_many([item(topic)])
        await until(lambda: len(conn.written) == 1, "a")
        conn.answer(400, b"bad message")  # permanent: counted, skipped
        await until(lambda: len(conn.written) == 2, "b")
        conn.answer(503)  # transient: b again, after the backoff, then c
        await until(lambda: len(conn.written) == 3, "b again")
        conn.answer(200)
        await until(lambda: len(conn.written) == 4, "c")
        conn.answer(200)
        await until(lambda: stats.forwarded == 2, "b and c delivered")
        assert topics_written(conn) == [b"a", b"b", b"b", b"c"]
        assert stats.rejected == 1 and stats.retried == 1 and stats.duplicates_possible == 0
        assert sum(released) == 3
        the_lane.finish()
        await asyncio.wait_for(task, 5)

    arun(scenario())
    assert "message rejected; skipped" in caplog.text


def test_a_broken_connection_resends_what_it_held_and_counts_possible_duplicates() -> None:
    async def scenario() -> None:
        the_lane, conn, stats, _ = lane(pipeline=4)
        task = asyncio.create_task(the_lane.run())
        the_lane.submit_many([item(b"a")])
        await until(lambda: len(conn.written) == 1, "a")
        conn.answer(200)
        the_lane.submit_many([item(b"b")])
        the_lane.submit_many([item(b"c")])
        await until(lambda: len(conn.written) == 3, "b and c")
        conn.fail(ConnectionLost("reset"))  # written, unanswered: may have been forwarded
        await until(lambda: len(conn.written) == 4, "b again")  # a new connection: one first
        conn.answer(200)
        await until(lambda: len(conn.written) == 5, "c again")
        conn.answer(200)
        assert topics_written(conn) == [b"a", b"b", b"c", b"b", b"c"]
        assert stats.retried == 2 and stats.duplicates_possible == 2 and conn.connects == 2
        the_lane.finish()
        await asyncio.wait_for(task, 5)
        assert stats.forwarded == 3

    arun(scenario())


def test_the_retry_warning_repeats_once_per_interval_of_the_injected_clock(caplog) -> None:
    caplog.set_level(logging.INFO, "mgfast.client")
    clock = Clock()

    async def scenario() -> None:
        the_lane, conn, _, _ = lane(pipeline=1, clock=clock)
        task = asyncio.create_task(the_lane.run())
        the_lane.submit_many([item(b"a")])
        for attempt in range(1, 5):
            await until(lambda: len(conn.written) == attempt, f"attempt {attempt}")
            if attempt == 3:
                clock.now += RETRY_LOG_INTERVAL
            conn.answer(503)
        await until(lambda: len(conn.written) == 5, "attempt 5")
        conn.answer(200)
        the_lane.finish()
        await asyncio.wait_for(task, 5)

    arun(scenario())
    warnings = [r.failed_attempts for r in caplog.records
                if r.getMessage() == "delivery failed; retrying"]
    assert warnings == [1, 3]  # the first failure, then the first after the interval
    assert any(r.getMessage() == "delivery recovered" for r in caplog.records)


class FakeReader:
    """An in_stream that hands out what the test queued, recording each call's limit."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.limits: list[int] = []

    async def recv_many(self, limit: int):
        self.limits.append(limit)
        messages = [await self.queue.get()]
        while len(messages) < limit and not self.queue.empty():
            messages.append(self.queue.get_nowait())
        return messages


class FakeLane:
    def __init__(self) -> None:
        self.items: list[Message] = []

    def submit_many(self, items: list[Message]) -> None:
        self.items.extend(items)


@pytest.fixture
def client_config():
    return load_client_config(None)


def test_the_forwarder_routes_by_topic_and_reads_no_more_than_its_window(client_config):
    async def scenario() -> None:
        forwarder = Forwarder(client_config, None, ClientStats())
        forwarder.inflight_ops = 3
        reader = forwarder.reader = FakeReader()
        lanes = forwarder.lanes = [FakeLane() for _ in range(4)]
        task = asyncio.create_task(forwarder._read())
        topics = [b"cam-%d" % i for i in range(6)]
        for topic in topics:
            reader.queue.put_nowait(Message(topic, [topic, MESSAGE]))
        await until(lambda: forwarder.stats.in_flight == 3, "a full window")
        await asyncio.sleep(0.01)
        assert forwarder.stats.in_flight == 3 and reader.queue.qsize() == 3  # it stopped
        forwarder._release(2)  # two left the lanes: room for two more
        await until(lambda: forwarder.stats.read == 5, "two more")
        assert reader.limits == [3, 2] and forwarder.stats.in_flight == 3
        for i, the_lane in enumerate(lanes):
            assert all(crc32(p.topic) % 4 == i for p in the_lane.items)
        assert sorted(p.topic for lane_ in lanes for p in lane_.items) == sorted(topics[:5])
        task.cancel()

    arun(scenario())


@pytest.mark.parametrize("body, forwarded, rejected", [
    (all_accepted(3), 3, 0),  # the server's own bytes: settled without parsing
    (b'{"results": [200, 200, 200]}', 3, 0),  # the same answer spelt otherwise: parsed
    (b'{"results":[200,400,200]}', 2, 1),
])
def test_a_batch_answer_settles_its_items_however_it_is_spelt(body, forwarded, rejected):
    the_lane, _, stats, released = lane()
    the_lane.sent.extend(item(b"t%d" % i) for i in range(3))
    the_lane._on_response(3, ClientResponse(200, {}, body, True))
    assert (stats.forwarded, stats.rejected, sum(released)) == (forwarded, rejected, 3)
    assert not the_lane.sent and the_lane._failure is None
