"""The worker's bound on messages handed to its writer and not yet answered (inflight_ops), in
the single-worker layout (InlineWriter on a real out_stream) and as a unit."""

from __future__ import annotations

import asyncio

from mgfast.config.model import OutStreamConfig
from mgfast.server.inline_writer import InlineWriter
from mgfast.server.pending_limit import PendingLimit
from mgfast.zmq.url import parse_socket_url
from mgfast.zmq.writer import WriteResult
from tests.util import arun, endpoint


def test_admit_queues_at_once_while_there_is_room_then_waits_in_order():
    async def go():
        limit = PendingLimit(2)
        loop = asyncio.get_running_loop()
        futures, started = [], []

        def submit(n):
            def start():
                started.append(n)
                future = loop.create_future()
                futures.append(future)
                return future
            return start

        answers = [limit.admit(1, submit(n)) for n in range(5)]
        assert started == [0, 1] and limit.pending == 2
        futures[0].set_result("a")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert started == [0, 1, 2] and limit.pending == 2
        for n in range(1, 5):
            while len(futures) <= n:
                await asyncio.sleep(0)
            futures[n].set_result(n)
        return [await a for a in answers], started, limit.pending
    results, started, pending = arun(go())
    assert results == ["a", 1, 2, 3, 4] and started == [0, 1, 2, 3, 4] and pending == 0


def test_a_stalled_out_stream_holds_at_most_inflight_ops_messages_in_the_only_worker(tmp_path):
    async def go():
        config = OutStreamConfig(
            url=parse_socket_url(f"dealer+bind:{endpoint('ipc', tmp_path)}", role="writer"),
            inflight_ops=10, send_timeout=0.2, send_retries=0, send_hwm=1)
        writer = InlineWriter(config, None)
        await writer.start()
        frames = [b"cam", b"\x0a\x03abc"]
        answers = [writer.submit(frames, eos=False) for _ in range(40)]
        answers.append(writer.submit_group([frames] * 5, None))
        await asyncio.sleep(0.05)
        depth = writer.writer.queue_depth  # no reader: nothing can be sent
        results = await asyncio.gather(*answers)
        await writer.close()
        return depth, results
    depth, results = arun(go())
    assert depth <= 10
    assert all(r is WriteResult.SEND_TIMEOUT for r in results[:40])
    assert results[40][0] is WriteResult.SEND_TIMEOUT
