"""The client's data path: in_stream reader -> in-flight window -> lanes -> server.

    forwarder = Forwarder(config, ssl_context, stats)
    await forwarder.start(on_failure)         # opens the in_stream (EndpointError names it)
    ...
    undelivered = await forwarder.stop(drain_timeout)

A topic always goes to lane ``crc32(topic) % connections``. At most ``inflight_ops`` messages
are read and neither accepted nor rejected; while that window is full the in_stream is not read
(back-pressure reaches the producer through ZeroMQ's high-water marks). ``stop`` stops reading,
lets the lanes deliver for up to ``drain_timeout`` seconds and returns what was left. Why, and
what ``wait_strategy`` means here: docs/design.md, "Client process model".
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from mgfast._messages import split_by_topic
from mgfast.client.lane import Lane
from mgfast.client.stats import ClientStats
from mgfast.client.target import ServerTarget
from mgfast.config.model import ClientConfig
from mgfast.fps_log import FpsLog
from mgfast.media import is_end_of_stream
from mgfast.zmq.reader import InStreamReader
from mgfast.zmq.sockets import StreamClosed

log = logging.getLogger("mgfast.client")


# The reader's end-of-stream test: one C call that reads the message's top-level fields alone
# (MediaError if those cannot be read: the reader drops it). What is broken deeper goes on to
# the server, which checks every message and answers 400: logged and skipped here.
is_eos = is_end_of_stream


class Forwarder:
    def __init__(self, config: ClientConfig, ssl_context: ssl.SSLContext | None,
                 stats: ClientStats) -> None:
        self.config = config
        self.stats = stats
        self.target = ServerTarget(config.url, ssl_context=ssl_context, auth=config.auth,
                                   tls=config.tls)
        self.reader = InStreamReader(config.in_stream, is_eos)
        self.inflight_ops = config.in_stream.inflight_ops
        self._room = asyncio.Event()  # set when stats.in_flight drops below inflight_ops
        self.fps = FpsLog(config.statistics) if config.statistics is not None else None
        self.lanes = [Lane(i, self.target, batch=config.batch, pipeline=config.pipeline,
                           retry=config.retry_strategy,
                           stats=stats, release=self._release, fps=self.fps)
                      for i in range(config.connections)]
        self._read_task: asyncio.Task[None] | None = None
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._on_failure: Callable[[BaseException], None] | None = None
        self.failure: BaseException | None = None  # what killed a task, if anything did

    async def start(self, on_failure: Callable[[BaseException], None] | None = None) -> None:
        """Open the in_stream and start the tasks; ``on_failure`` hears of a task that died
        of an exception (a bug: the tasks handle every expected failure themselves)."""
        await self.reader.start()
        self._lane_tasks = [asyncio.create_task(lane.run(), name=f"lane {lane.index}")
                            for lane in self.lanes]
        self._read_task = asyncio.create_task(self._read(), name="in_stream")
        for task in (self._read_task, *self._lane_tasks):
            task.add_done_callback(self._on_done)
        self._on_failure = on_failure

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not isinstance(exc, StreamClosed):
            self.failure = exc
            if self._on_failure is not None:
                self._on_failure(exc)

    def _release(self, count: int) -> None:
        """``count`` messages left the lanes (delivered or rejected): room for as many more."""
        self.stats.in_flight -= count
        if self.stats.in_flight < self.inflight_ops:
            self._room.set()

    async def _read(self) -> None:
        recv_many = self.reader.recv_many
        lanes = self.lanes
        n = len(lanes)
        stats = self.stats
        room = self._room
        while True:
            free = self.inflight_ops - stats.in_flight
            if free <= 0:
                room.clear()
                await room.wait()
                continue
            messages = await recv_many(free)
            stats.in_flight += len(messages)
            stats.read += len(messages)
            per_lane, size = split_by_topic(messages, n)
            stats.read_bytes += size
            for lane, items in zip(lanes, per_lane):
                if items:
                    lane.submit_many(items)

    async def stop(self, drain_timeout: float, force: asyncio.Event | None = None) -> int:
        """Stop reading, deliver what was read (bounded), return the undelivered count."""
        if self._read_task is not None:
            self._read_task.cancel()
            await asyncio.gather(self._read_task, return_exceptions=True)
        await self.reader.close()
        for lane in self.lanes:
            lane.finish()
        pending = [t for t in self._lane_tasks if not t.done()]
        if pending:
            waiters: list[asyncio.Future[object]] = [asyncio.ensure_future(asyncio.wait(pending))]
            if force is not None:
                waiters.append(asyncio.ensure_future(force.wait()))
            await asyncio.wait(waiters, timeout=drain_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
        for task in self._lane_tasks:
            task.cancel()
        await asyncio.gather(*self._lane_tasks, return_exceptions=True)
        undelivered = sum(lane.held for lane in self.lanes)
        self.stats.undelivered = undelivered
        return undelivered
