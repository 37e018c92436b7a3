"""The worker's side of the egress hand-off: a writer that batches per event-loop iteration.

Every ``write`` made during one loop iteration goes out as one ZeroMQ message at the end of it,
so under load a batch carries as many messages as there are requests ready, and the cost of the
hop is paid per batch. At most ``max_pending`` messages wait for their results
(``PendingLimit``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from array import array
from typing import Any, Sequence

import zmq

from mgfast._zmq_io import recv_multipart, send_multipart
from mgfast.server import egress_wire
from mgfast.server.pending_limit import PendingLimit
from mgfast.zmq.sockets import StreamClosed
from mgfast.zmq.writer import Buffer, WriteResult

log = logging.getLogger("mgfast.egress")


class EgressUnavailable(StreamClosed):
    """The egress process did not take or answer a batch (it is restarting): retry later."""


class EgressClient:
    def __init__(self, endpoint: str, *, max_pending: int, reply_timeout: float) -> None:
        self.endpoint = endpoint
        self.reply_timeout = reply_timeout
        self.loop = asyncio.get_running_loop()
        self.context = zmq.Context()
        self.sock: zmq.Socket[bytes] | None = None
        self.ids = itertools.count(1)
        # the batch being gathered in this loop iteration
        self.frames: list[Buffer] = []
        self.counts = array("I")
        self.waiters: list[_Waiter] = []  # one per submit / submit_group call
        self.flush_scheduled = False
        self.monitor: zmq.Socket[bytes] | None = None  # the socket's disconnect events
        # batches sent, awaiting results: id -> (waiters, timer, frames to send again)
        self.inflight: dict[int, tuple[list[_Waiter], asyncio.TimerHandle, list[Buffer]]] = {}
        self.limit = PendingLimit(max_pending)
        self.resent = 0  # batches sent again to a restarted egress

    async def start(self) -> None:
        self._open()

    def _open(self) -> None:
        sock = self.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)  # bounded by max_pending instead
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sock.connect(self.endpoint)
        self.sock = sock
        # ZeroMQ's fd is edge-triggered and any operation on the socket may consume the edge:
        # drain replies until EAGAIN on every wake-up and after every send.
        self.loop.add_reader(sock.getsockopt(zmq.FD), self._read_results)  # type: ignore[arg-type]
        self.loop.add_reader(self.monitor.getsockopt(zmq.FD), self._on_monitor)  # type: ignore[arg-type]
        self._on_monitor()  # a read that finds nothing arms the edge for the first event

    def _shut(self) -> None:
        """Close the socket and its monitor, with whatever libzmq still queues in them."""
        self.loop.remove_reader(self.sock.getsockopt(zmq.FD))  # type: ignore[arg-type, union-attr]
        self.loop.remove_reader(self.monitor.getsockopt(zmq.FD))  # type: ignore[arg-type, union-attr]
        self.sock.disable_monitor()  # type: ignore[union-attr]
        self.monitor.close(linger=0)  # type: ignore[union-attr]
        self.sock.close(linger=0)  # type: ignore[union-attr]

    def submit(self, frames: Sequence[Buffer], *, eos: bool, frame: bool = False
               ) -> asyncio.Future[WriteResult]:
        """One message; the future's result is its WriteResult. ``frame`` marks a video frame,
        for the egress's FPS statistics."""
        return self._submit(((frames, eos, frame),), grouped=False)

    def submit_group(self, items: Sequence[tuple[Sequence[Buffer], bool, bool]]
                     ) -> asyncio.Future[list[WriteResult]]:
        """(frames, eos, frame) items in order as one group: the first failure stops the rest
        (WriteResult.NOT_ATTEMPTED), so what was written is a prefix. The future's result
        lists a WriteResult per item."""
        return self._submit(items, grouped=True)

    def _submit(self, items: Sequence[tuple[Sequence[Buffer], bool, bool]], grouped: bool
                ) -> asyncio.Future[Any]:
        """Queue now unless the worker's bound on messages waiting for the egress is reached;
        then wait for room first."""
        return self.limit.admit(len(items), lambda: self._enqueue(items, grouped=grouped))

    def _enqueue(self, items: Sequence[tuple[Sequence[Buffer], bool, bool]], *, grouped: bool
                 ) -> asyncio.Future[Any]:
        """Add messages to this loop iteration's batch (the flush goes out at its end); the
        future gets their result (``grouped``: the list of their results)."""
        append_count = self.counts.append
        extend_frames = self.frames.extend
        for i, (frames, eos, frame) in enumerate(items):
            flags = len(frames) | (egress_wire.EOS_BIT if eos else 0)
            if frame:
                flags |= egress_wire.FRAME_BIT
            if grouped:
                flags |= egress_wire.GROUP_BIT | (egress_wire.GROUP_START_BIT if i == 0 else 0)
            extend_frames(frames)
            append_count(flags)
        future = self.loop.create_future()
        self.waiters.append(_Waiter(future, len(items), not grouped))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        for waiters, timer, _ in self.inflight.values():
            timer.cancel()
            _fail(waiters, "the worker is stopping")
        self.inflight.clear()
        if self.sock is not None:
            self._shut()
        self.context.term()

    # -- internals ---------------------------------------------------------------------------

    def _flush(self) -> None:
        self.flush_scheduled = False
        frames, counts, waiters = self.frames, self.counts, self.waiters
        self.frames, self.counts, self.waiters = [], array("I"), []
        batch_id = next(self.ids)
        frames.insert(0, egress_wire.encode_header(batch_id, counts))
        if not send_multipart(self.sock.underlying, frames):  # type: ignore[union-attr]  # no egress connected right now
            _fail(waiters, "the egress process is not connected")
            return
        timer = self.loop.call_later(self.reply_timeout, self._expire, batch_id)
        self.inflight[batch_id] = (waiters, timer, frames)
        self._read_results()

    def _on_monitor(self) -> None:
        """The egress process went away (it died, or is being replaced): what it had not
        answered is sent again, in order, on a new socket, so the sources stall only for the
        restart, not for the reply timeout. The new socket starts empty: nothing queued for
        the dead egress can arrive after (and out of order with) what is sent again; a
        message the dead egress had written may arrive twice (at least once)."""
        disconnected = False
        while True:
            try:
                self.monitor.recv_multipart(zmq.NOBLOCK)  # type: ignore[union-attr]
            except zmq.Again:
                break
            disconnected = True
        if not disconnected:
            return
        self._shut()
        self._open()
        if self.inflight:
            log.warning("the egress process went away; sending again what it had not answered",
                        extra={"batches": len(self.inflight)})
        for batch_id in sorted(self.inflight):
            send_multipart(self.sock.underlying, self.inflight[batch_id][2])  # type: ignore[union-attr]
            self.resent += 1
        self._read_results()

    def _expire(self, batch_id: int) -> None:
        entry = self.inflight.pop(batch_id, None)
        if entry is not None:
            _fail(entry[0], "no answer from the egress process in time")

    def _read_results(self) -> None:
        handle = self.sock.underlying  # type: ignore[union-attr]
        while True:
            parts = recv_multipart(handle)
            if parts is None:
                return
            try:
                batch_id, codes = egress_wire.decode_results(parts)
            except ValueError:
                log.error("malformed reply from the egress process")
                continue
            entry = self.inflight.pop(batch_id, None)
            if entry is None:
                continue  # expired already
            waiters, timer, _ = entry
            timer.cancel()
            if len(codes) != sum(w.count for w in waiters):
                log.error("egress reply does not match its batch")
                _fail(waiters, "the egress process answered a batch wrongly")
                continue
            at = 0
            for waiter in waiters:
                waiter.settle(codes[at:at + waiter.count])
                at += waiter.count


class _Waiter:
    """The caller of one submit (``single``) or submit_group, and its messages' count."""

    __slots__ = ("future", "count", "single")

    def __init__(self, future: asyncio.Future[Any], count: int, single: bool) -> None:
        self.future = future
        self.count = count
        self.single = single

    def settle(self, codes: bytes) -> None:
        if self.future.done():
            return
        results = [egress_wire.RESULTS_BY_CODE[code] for code in codes]
        if None in results:
            self.future.set_exception(RuntimeError("the out_stream writer failed"))
        else:
            self.future.set_result(results[0] if self.single else results)


def _fail(waiters: list[_Waiter], why: str) -> None:
    for waiter in waiters:
        if not waiter.future.done():
            waiter.future.set_exception(EgressUnavailable(why))
