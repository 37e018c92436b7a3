"""The egress process: the one owner of the configured out_stream socket.

Only one process can bind the out_stream endpoint, so workers hand their messages here in
batches (``egress_wire``) over a private Unix stream socket, and get one writer result per
message back. Each entry of a batch is a MediaBatch the worker checked: the writer sends its
items from the record straight to libzmq (``OutStreamWriter.submit_batch``). Entries are
submitted to the writer in arrival order, so the messages of one worker connection reach the
out_stream in the order that connection sent them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from mgfast.zmq.settings import OutStreamConfig
from mgfast.fps_log import FpsLog
from mgfast.server import egress_wire
from mgfast.zmq.sockets import StreamClosed
from mgfast.zmq.writer import OutStreamWriter, WriteResult

log = logging.getLogger("mgfast.egress")

# How long a stopping egress keeps serving workers still connected: their drain, plus a margin.
WORKERS_DRAIN = 12.0


class Egress:
    def __init__(self, out_stream: OutStreamConfig, endpoint: str,
                 fps: FpsLog | None = None) -> None:
        self.writer = OutStreamWriter(out_stream)
        self.fps = fps  # upstream ``statistics``, when configured
        self.path = endpoint.removeprefix("ipc://")
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.workers: set[_WorkerConnection] = set()  # connected worker processes
        self.unanswered = 0  # batches received, not yet answered
        self.all_answered = asyncio.Event()
        self.malformed = 0

    async def start(self) -> None:
        await self.writer.start()  # raises EndpointError naming the out_stream URL
        self.loop = asyncio.get_running_loop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket file left by a predecessor that was killed
        self.server = await self.loop.create_unix_server(lambda: _WorkerConnection(self),
                                                         self.path)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve batches until ``stop``; then, while workers are still connected (a SIGTERM to
        the whole process group reaches the egress as the workers start draining), go on
        serving them for up to the workers' drain time; then answer what was received and
        close the writer."""
        try:
            await stop.wait()
        finally:
            if self.server is not None:
                self.server.close()
            deadline = self.loop.time() + WORKERS_DRAIN if self.loop is not None else 0.0
            while self.workers and self.loop is not None and self.loop.time() < deadline:
                await asyncio.sleep(0.01)
            if self.unanswered:
                self.all_answered.clear()
                await self.all_answered.wait()
            await self.writer.close()

    def _submit(self, connection: _WorkerConnection, record: memoryview) -> None:
        try:
            batch_id, entries = egress_wire.decode_batch(record)
        except ValueError as exc:
            self.malformed += 1
            log.error("dropping a malformed batch from a worker", extra={"error": str(exc)})
            return
        futures = [self._write(count, body) for count, body in entries]
        counts = [count for count, _ in entries]
        if self.fps is not None:
            self.fps.add(sum(counts))
        remaining = sum(not future.done() for future in futures)
        if not remaining:  # all written at once: the usual case
            connection.reply(batch_id, futures, counts)
            return
        self.unanswered += 1

        def one_done(_: asyncio.Future[list[WriteResult]]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self.unanswered -= 1
                connection.reply(batch_id, futures, counts)
                if not self.unanswered:
                    self.all_answered.set()

        for future in futures:
            if not future.done():
                future.add_done_callback(one_done)

    def _write(self, count: int, body: memoryview) -> asyncio.Future[list[WriteResult]]:
        """One entry (a MediaBatch the worker checked) written as a group."""
        try:
            done = self.writer.submit_batch(body, check=False)
        except (StreamClosed, RuntimeError) as exc:
            return _failed(exc)
        if done is None or done[0] != count:
            self.malformed += 1
            return _failed(ValueError(f"an entry of {count} messages from a worker does not "
                                      f"hold them"))
        return done[2]


class _WorkerConnection(asyncio.BufferedProtocol):
    """One worker's connection: batch records in (read straight into their buffers), result
    records out."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.reader = egress_wire.RecordReader()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.egress.workers.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            records = self.reader.filled(nbytes)
        except ValueError as exc:
            self.egress.malformed += 1
            log.error("dropping a worker connection that sent garbage",
                      extra={"error": str(exc)})
            self.transport.abort()  # type: ignore[union-attr]
            return
        for record in records:
            self.egress._submit(self, record)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.egress.workers.discard(self)

    def reply(self, batch_id: int, futures: list[asyncio.Future[list[WriteResult]]],
              counts: list[int]) -> None:
        codes = bytearray()
        for future, count in zip(futures, counts):
            if future.exception() is not None:
                log.error("out_stream write failed", exc_info=future.exception())
                codes += bytes((egress_wire.ERROR,)) * count
            else:
                results = future.result()
                if results.count(WriteResult.SUCCESS) == len(results):
                    codes += bytes(len(results))  # all SUCCESS (code 0): the usual case
                else:
                    codes += bytes(egress_wire.RESULT_CODES[r] for r in results)
        if self.transport is not None:  # else the worker is gone, and so is its waiter
            self.transport.write(egress_wire.encode_results(batch_id, codes))


def _failed(exc: Exception) -> asyncio.Future[list[WriteResult]]:
    """A future that failed with ``exc``: its entry is answered ERROR."""
    future: asyncio.Future[list[WriteResult]] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
