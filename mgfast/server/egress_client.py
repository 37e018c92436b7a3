"""The worker's side of the egress hand-off: a writer that batches per event-loop iteration.

Every ``write`` made during one loop iteration goes out as one ZeroMQ message at the end of it,
so under load a batch carries as many messages as there are requests ready, and the cost of the
hop is paid per batch. At most ``max_pending`` messages wait for their results: past that,
``write`` waits, requests wait, and TCP pushes back on the clients (bounded memory).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from array import array
from typing import Sequence

import zmq

from mgfast.server import egress_wire
from mgfast.zmq.sockets import NOBLOCK, NOBLOCK_MORE, StreamClosed, backend_send
from mgfast.zmq.writer import WriteResult

log = logging.getLogger("mgfast.egress")

ZERO_COPY_MIN = 65536  # below this pyzmq copies anyway, and copying is cheaper


class EgressUnavailable(StreamClosed):
    """The egress process did not take or answer a batch (it is restarting): retry later."""


class EgressClient:
    def __init__(self, endpoint: str, *, max_pending: int, reply_timeout: float) -> None:
        self.endpoint = endpoint
        self.max_pending = max_pending
        self.reply_timeout = reply_timeout
        self.loop = asyncio.get_running_loop()
        self.context = zmq.Context()
        self.sock: zmq.Socket | None = None
        self.ids = itertools.count(1)
        # the batch being gathered in this loop iteration
        self.frames: list = []
        self.counts = array("I")
        self.futures: list[asyncio.Future] = []
        self.flush_scheduled = False
        # batches sent, awaiting results: id -> (futures, timer)
        self.inflight: dict[int, tuple[list[asyncio.Future], asyncio.TimerHandle]] = {}
        self.pending = 0  # messages submitted and not yet resolved
        self.space = asyncio.Event()

    async def start(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)  # bounded by max_pending instead
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        self.sock = sock
        # ZeroMQ's fd is edge-triggered and any operation on the socket may consume the edge:
        # drain replies until EAGAIN on every wake-up and after every send.
        self.loop.add_reader(sock.getsockopt(zmq.FD), self._read_results)

    async def write(self, frames: Sequence, *, eos: bool, frame: bool = False) -> WriteResult:
        """``frame`` marks a video frame, for the egress's FPS statistics."""
        await self._room_for(1)
        try:
            return await self._enqueue(((frames, eos, frame),), grouped=False)[0]
        finally:
            self._release(1)

    async def write_group(self, items: Sequence[tuple[Sequence, bool, bool]]
                          ) -> list[WriteResult]:
        """Write (frames, eos, frame) items in order as one group: the first failure stops the
        rest (WriteResult.NOT_ATTEMPTED), so what was written is a prefix."""
        await self._room_for(len(items))
        try:
            return list(await asyncio.gather(*self._enqueue(items, grouped=True)))
        finally:
            self._release(len(items))

    async def _room_for(self, count: int) -> None:
        while self.pending >= self.max_pending:
            self.space.clear()
            await self.space.wait()
        self.pending += count

    def _release(self, count: int) -> None:
        self.pending -= count
        self.space.set()

    def _enqueue(self, items, *, grouped: bool) -> list[asyncio.Future]:
        """Add messages to this loop iteration's batch; the flush goes out at its end."""
        futures = []
        for i, (frames, eos, frame) in enumerate(items):
            flags = len(frames) | (egress_wire.EOS_BIT if eos else 0)
            if frame:
                flags |= egress_wire.FRAME_BIT
            if grouped:
                flags |= egress_wire.GROUP_BIT | (egress_wire.GROUP_START_BIT if i == 0 else 0)
            future = self.loop.create_future()
            self.frames.extend(frames)
            self.counts.append(flags)
            self.futures.append(future)
            futures.append(future)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return futures

    async def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.getsockopt(zmq.FD))
        for futures, timer in self.inflight.values():
            timer.cancel()
            _fail(futures, "the worker is stopping")
        self.inflight.clear()
        if self.sock is not None:
            self.sock.close()
        self.context.term()

    # -- internals ---------------------------------------------------------------------------

    def _flush(self) -> None:
        self.flush_scheduled = False
        frames, counts, futures = self.frames, self.counts, self.futures
        self.frames, self.counts, self.futures = [], array("I"), []
        batch_id = next(self.ids)
        sock = self.sock
        try:
            backend_send(sock, egress_wire.encode_header(batch_id, counts), NOBLOCK_MORE, True)
        except zmq.Again:  # no egress connected right now
            _fail(futures, "the egress process is not connected")
            return
        last = len(frames) - 1
        for i, frame in enumerate(frames):
            backend_send(sock, frame, NOBLOCK if i == last else NOBLOCK_MORE,
                         len(frame) < ZERO_COPY_MIN)
        timer = self.loop.call_later(self.reply_timeout, self._expire, batch_id)
        self.inflight[batch_id] = (futures, timer)
        self._read_results()

    def _expire(self, batch_id: int) -> None:
        entry = self.inflight.pop(batch_id, None)
        if entry is not None:
            _fail(entry[0], "no answer from the egress process in time")

    def _read_results(self) -> None:
        recv = self.sock.recv_multipart
        while True:
            try:
                parts = recv(NOBLOCK)
            except zmq.Again:
                return
            try:
                batch_id, codes = egress_wire.decode_results(parts)
            except ValueError:
                log.error("malformed reply from the egress process")
                continue
            entry = self.inflight.pop(batch_id, None)
            if entry is None:
                continue  # expired already
            futures, timer = entry
            timer.cancel()
            for future, code in zip(futures, codes):
                if future.done():
                    continue
                result = egress_wire.RESULTS_BY_CODE[code]
                if result is None:
                    future.set_exception(RuntimeError("the out_stream writer failed"))
                else:
                    future.set_result(result)


def _fail(futures: list[asyncio.Future], why: str) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(EgressUnavailable(why))
