"""The egress process: the one owner of the configured out_stream socket.

Only one process can bind the out_stream endpoint, so workers hand their messages here in
batches (``egress_wire``) over a ROUTER socket on a private ipc path, and get one writer result
per message back. Batches are submitted to the writer in arrival order, so the messages of one
worker connection reach the out_stream in the order that connection sent them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import zmq

from mgfast._zmq_io import recv_multipart, send_multipart
from mgfast.zmq.settings import OutStreamConfig
from mgfast.fps_log import FpsLog
from mgfast.server import egress_wire
from mgfast.zmq.writer import OutStreamWriter, WriteResult

Run = tuple[list[Any], list[bool]]  # a writer run: messages (frame lists), their EOS flags

log = logging.getLogger("mgfast.egress")


class Egress:
    def __init__(self, out_stream: OutStreamConfig, endpoint: str,
                 fps: FpsLog | None = None) -> None:
        self.writer = OutStreamWriter(out_stream)
        self.fps = fps  # upstream ``statistics``, when configured
        self.endpoint = endpoint
        self.context = zmq.Context()
        self.sock: zmq.Socket[bytes] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.unanswered = 0  # batches received, not yet answered
        self.all_answered = asyncio.Event()
        self.malformed = 0

    async def start(self) -> None:
        await self.writer.start()  # raises EndpointError naming the out_stream URL
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.SNDHWM, 0)  # workers bound what they send; never drop a reply
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.bind(self.endpoint)
        self.sock = sock
        self.loop = asyncio.get_running_loop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve batches until ``stop``; then answer what was received and close the writer."""
        fd = self.sock.getsockopt(zmq.FD)  # type: ignore[union-attr]
        self.loop.add_reader(fd, self._receive)  # type: ignore[arg-type, union-attr]
        self._receive()
        try:
            await stop.wait()
        finally:
            self.loop.remove_reader(fd)  # type: ignore[arg-type, union-attr]
            if self.unanswered:
                self.all_answered.clear()
                await self.all_answered.wait()
            await self.writer.close()
            self.sock.close()  # type: ignore[union-attr]
            self.context.term()

    def _receive(self) -> None:
        """Take every batch waiting. ZeroMQ's fd is edge-triggered and any operation on the
        socket may consume the edge, so this drains until EAGAIN, and runs after each reply."""
        handle = self.sock.underlying  # type: ignore[union-attr]
        while True:
            parts = recv_multipart(handle)
            if parts is None:
                return
            self._submit(parts)

    def _submit(self, parts: list[Any]) -> None:
        routing_id = parts[0]
        try:
            batch_id, messages = egress_wire.decode_batch(parts[1:])
        except ValueError as exc:
            self.malformed += 1
            log.error("dropping a malformed batch from a worker", extra={"error": str(exc)})
            return
        runs = _runs(messages)
        writer = self.writer
        futures = [writer.submit_group(frames, eos) for frames, eos in runs]
        if self.fps is not None:
            self.fps.add(len(messages))
        if not futures:
            self._reply(routing_id, batch_id, futures, runs)
            return
        self.unanswered += 1
        remaining = len(futures)

        def one_done(_: asyncio.Future[list[WriteResult]]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self.unanswered -= 1
                self._reply(routing_id, batch_id, futures, runs)
                if not self.unanswered:
                    self.all_answered.set()

        for future in futures:
            future.add_done_callback(one_done)

    def _reply(self, routing_id: bytes, batch_id: int,
               futures: list[asyncio.Future[list[WriteResult]]], runs: list[Run]) -> None:
        codes = bytearray()
        for future, (messages, _) in zip(futures, runs):
            if future.exception() is not None:
                log.error("out_stream write failed", exc_info=future.exception())
                codes += bytes((egress_wire.ERROR,)) * len(messages)
            else:
                codes += bytes(egress_wire.RESULT_CODES[r] for r in future.result())
        send_multipart(self.sock.underlying,  # type: ignore[union-attr]
                       [routing_id, *egress_wire.encode_results(batch_id, codes)])
        self._receive()


def _runs(messages: list[tuple[list[Any], int]]) -> list[Run]:
    """Split a batch into writer runs: each group is one run, every other message its own."""
    runs: list[Run] = []
    grouping = False
    for frames, flags in messages:
        eos = bool(flags & egress_wire.EOS_BIT)
        if flags & egress_wire.GROUP_BIT and grouping and not flags & egress_wire.GROUP_START_BIT:
            runs[-1][0].append(frames)
            runs[-1][1].append(eos)
            continue
        grouping = bool(flags & egress_wire.GROUP_BIT)
        runs.append(([frames], [eos]))
    return runs
