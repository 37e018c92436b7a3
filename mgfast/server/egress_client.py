"""The worker's side of the egress hand-off: a writer that batches per event-loop iteration.

Every submit made during one loop iteration goes out as one record (``egress_wire``, over
the egress's Unix socket) at the end of it, each as a MediaBatch the egress writes as a group
(a client's batch as it came),
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

from mgfast._zmq_io import SendBuffer
from mgfast.media import check_media_batch, encode_frames_batch_pieces
from mgfast.server import egress_wire
from mgfast.server.pending_limit import PendingLimit
from mgfast.zmq.sockets import StreamClosed
from mgfast.zmq.writer import Buffer, Frames, WriteResult

log = logging.getLogger("mgfast.egress")

RECONNECT_INTERVAL = 0.05  # seconds between attempts to reach a (re)starting egress
JOIN_MAX = 16 * 1024  # messages framed up to this size are joined into one buffer


class EgressUnavailable(StreamClosed):
    """The egress process did not take or answer a batch (it is restarting): retry later."""


class EgressClient:
    def __init__(self, endpoint: str, *, max_pending: int, reply_timeout: float,
                 confirm: bool = True) -> None:
        self.path = endpoint.removeprefix("ipc://")  # the egress's Unix socket
        # False for a PUB out_stream, whose writes cannot fail: a message is answered once it
        # is handed to the egress (kept until the egress confirms it, and sent again to a
        # restarted one), while fewer than max_pending messages wait for confirmation.
        self.confirm = confirm
        self.unconfirmed = 0  # messages answered early, not yet confirmed
        self.reply_timeout = reply_timeout
        self.loop = asyncio.get_running_loop()
        self.ids = itertools.count(1)
        self.transport: asyncio.Transport | None = None  # None while not connected
        self.reader = egress_wire.RecordReader()
        self.connecting: asyncio.Task[None] | None = None
        self.ever_connected = False
        self.closing = False
        # the batch being gathered in this loop iteration: its entries' (items, length) pairs
        # and the pieces of their bodies
        self.entries = array("I")
        self.pieces: list[Buffer] = []
        self.waiters: list[_Waiter] = []  # one per submit / submit_group call
        self.flush_scheduled = False
        # batches sent (or waiting for a connection), awaiting results, by id
        self.inflight: dict[int, _Batch] = {}
        self.limit = PendingLimit(max_pending)

    async def start(self) -> None:
        """Connect now if the egress listens, else keep trying in the background (what is
        submitted meanwhile waits for the connection, bounded by the reply timeout)."""
        if not await self._connect_once():
            self.connecting = self.loop.create_task(self._reconnect())

    def submit(self, frames: Sequence[Buffer], *, eos: bool) -> asyncio.Future[WriteResult]:
        """One message; the future's result is its WriteResult."""
        return self._submit_messages([frames], single=True)

    def submit_group(self, messages: list[Frames], eos: list[bool] | None
                     ) -> asyncio.Future[list[WriteResult]]:
        """Messages in order as one group: the first failure stops the rest
        (WriteResult.NOT_ATTEMPTED), so what was written is a prefix. The future's result lists
        a WriteResult per message. (The egress reads which are EOSes from the messages.)"""
        return self._submit_messages(messages, single=False)

    def submit_batch(self, body: Buffer | SendBuffer
                     ) -> tuple[int, int, asyncio.Future[list[WriteResult]]] | None:
        """A client's MediaBatch body, handed on unopened as one group if every item is valid:
        (items, frame bytes, the group's future); else None (decode_media_batch then answers
        each item)."""
        checked = check_media_batch(body)
        if checked is None:
            return None
        count, size = checked
        view = memoryview(body)  # a SendBuffer too (a body of 32 KiB or more)
        return count, size, self.limit.admit(
            count, lambda: self._enqueue(count, view.nbytes, [view], single=False))

    def _submit_messages(self, messages: Sequence[Sequence[Buffer]], single: bool
                         ) -> asyncio.Future[Any]:
        length, pieces = encode_frames_batch_pieces(messages)
        if length <= JOIN_MAX:  # one copy beats a piece per field in the transport's write
            pieces = [b"".join(pieces)]
        return self.limit.admit(len(messages),
                                lambda: self._enqueue(len(messages), length, pieces, single))

    def _enqueue(self, count: int, length: int, pieces: list[Buffer], single: bool
                 ) -> asyncio.Future[Any]:
        """Add one entry (a MediaBatch body of ``count`` items) to this loop iteration's batch
        (the flush goes out at its end); the future gets its result (a list of them, unless
        ``single``)."""
        self.entries += array("I", (count, length))
        self.pieces += pieces
        future = self.loop.create_future()
        self.waiters.append(_Waiter(future, count, single))
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return future

    async def close(self) -> None:
        self.closing = True
        if self.connecting is not None:
            self.connecting.cancel()
        for batch in self.inflight.values():
            batch.timer.cancel()
            _fail(batch.waiters, "the worker is stopping")
        self.inflight.clear()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    # -- internals ---------------------------------------------------------------------------

    def _flush(self) -> None:
        self.flush_scheduled = False
        entries, pieces, waiters = self.entries, self.pieces, self.waiters
        self.entries, self.pieces, self.waiters = array("I"), [], []
        batch_id = next(self.ids)
        record = egress_wire.encode_batch(batch_id, entries, pieces)
        timer = self.loop.call_later(self.reply_timeout, self._expire, batch_id)
        batch = self.inflight[batch_id] = _Batch(waiters, timer, record)
        if self.transport is not None:
            self.transport.writelines(record)
            if not self.confirm and self.unconfirmed < self.limit.limit:
                batch.answered = sum(waiter.count for waiter in waiters)
                self.unconfirmed += batch.answered
                for waiter in waiters:
                    waiter.settle(bytes(waiter.count))  # SUCCESS: what a PUB write returns

    async def _connect_once(self) -> bool:
        try:
            await self.loop.create_unix_connection(lambda: _EgressConnection(self), self.path)
        except OSError:
            return False
        return True

    async def _reconnect(self) -> None:
        while not self.closing and not await self._connect_once():
            await asyncio.sleep(RECONNECT_INTERVAL)

    def _connected(self, transport: asyncio.Transport) -> None:
        """(Re)connected: what the egress had not answered is sent again, in order, so the
        sources stall only for its restart, not for the reply timeout; a message the dead
        egress had written may arrive twice (at least once)."""
        self.transport = transport
        self.reader = egress_wire.RecordReader()
        self.connecting = None
        if self.ever_connected and self.inflight:
            log.warning("the egress process went away; sending again what it had not answered",
                        extra={"batches": len(self.inflight)})
        self.ever_connected = True
        for batch_id in sorted(self.inflight):
            transport.writelines(self.inflight[batch_id].record)

    def _lost(self) -> None:
        """The egress process went away (it died, or is being replaced): reconnect at once."""
        self.transport = None
        if not self.closing and self.connecting is None:
            self.connecting = self.loop.create_task(self._reconnect())

    def _expire(self, batch_id: int) -> None:
        batch = self.inflight.pop(batch_id, None)
        if batch is not None:
            if batch.answered:
                self.unconfirmed -= batch.answered
                log.error("the egress process did not confirm messages already answered",
                          extra={"messages": batch.answered})
            _fail(batch.waiters, "no answer from the egress process in time")

    def _on_read(self, nbytes: int) -> None:
        try:
            records = self.reader.filled(nbytes)
        except ValueError as exc:
            log.error("malformed data from the egress process", extra={"error": str(exc)})
            if self.transport is not None:
                self.transport.abort()
            return
        for record in records:
            try:
                batch_id, codes = egress_wire.decode_results(record)
            except ValueError:
                log.error("malformed reply from the egress process")
                continue
            batch = self.inflight.pop(batch_id, None)
            if batch is None:
                continue  # expired already
            batch.timer.cancel()
            waiters = batch.waiters
            if batch.answered:  # answered when it was handed over: now confirmed
                self.unconfirmed -= batch.answered
                if codes.count(0) != len(codes):
                    log.error("the egress process failed to write messages already answered",
                              extra={"messages": len(codes) - codes.count(0)})
                continue
            if len(codes) != sum(w.count for w in waiters):
                log.error("egress reply does not match its batch")
                _fail(waiters, "the egress process answered a batch wrongly")
                continue
            at = 0
            for waiter in waiters:
                waiter.settle(codes[at:at + waiter.count])
                at += waiter.count


class _EgressConnection(asyncio.BufferedProtocol):
    """The worker's connection to the egress: hands everything to its EgressClient."""

    def __init__(self, client: EgressClient) -> None:
        self.client = client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client._connected(transport)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.client.reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.client._on_read(nbytes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._lost()


class _Batch:
    """A batch sent (or waiting for a connection) and not yet answered by the egress."""

    __slots__ = ("waiters", "timer", "record", "answered")

    def __init__(self, waiters: list[_Waiter], timer: asyncio.TimerHandle,
                 record: list[Buffer]) -> None:
        self.waiters = waiters
        self.timer = timer
        self.record = record  # the pieces to send again to a restarted egress
        self.answered = 0  # messages answered before the egress confirmed them (PUB)


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
        if codes.count(0) == len(codes):  # all written: the usual case
            results = [WriteResult.SUCCESS] * len(codes)
        else:
            coded = [egress_wire.RESULTS_BY_CODE[code] for code in codes]
            if None in coded:
                self.future.set_exception(RuntimeError("the out_stream writer failed"))
                return
            results = coded  # type: ignore[assignment]  # no None left
        self.future.set_result(results[0] if self.single else results)


def _fail(waiters: list[_Waiter], why: str) -> None:
    for waiter in waiters:
        if not waiter.future.done():
            waiter.future.set_exception(EgressUnavailable(why))
