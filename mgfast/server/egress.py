"""The egress process: the one owner of the configured out_stream socket.

Only one process can bind the out_stream endpoint, so workers hand their messages here in
batches (``egress_wire``) over a ROUTER socket on a private ipc path, and get one writer result
per message back. Batches are submitted to the writer in arrival order, so the messages of one
worker connection reach the out_stream in the order that connection sent them.
"""

from __future__ import annotations

import asyncio
import logging

import zmq

from mgfast.config.model import OutStreamConfig
from mgfast.fps_log import FpsLog
from mgfast.server import egress_wire
from mgfast.zmq.sockets import NOBLOCK
from mgfast.zmq.writer import Group, OutStreamWriter

log = logging.getLogger("mgfast.egress")


class Egress:
    def __init__(self, out_stream: OutStreamConfig, endpoint: str,
                 fps: FpsLog | None = None) -> None:
        self.writer = OutStreamWriter(out_stream)
        self.fps = fps  # upstream ``statistics``, when configured
        self.endpoint = endpoint
        self.context = zmq.Context()
        self.sock: zmq.Socket | None = None
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
        fd = self.sock.getsockopt(zmq.FD)
        self.loop.add_reader(fd, self._receive)
        self._receive()
        try:
            await stop.wait()
        finally:
            self.loop.remove_reader(fd)
            if self.unanswered:
                self.all_answered.clear()
                await self.all_answered.wait()
            await self.writer.close()
            self.sock.close()
            self.context.term()

    def _receive(self) -> None:
        """Take every batch waiting. ZeroMQ's fd is edge-triggered and any operation on the
        socket may consume the edge, so this drains until EAGAIN, and runs after each reply."""
        recv = self.sock.recv_multipart
        while True:
            try:
                parts = recv(NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._submit(parts)

    def _submit(self, parts: list) -> None:
        routing_id = parts[0].bytes
        try:
            batch_id, messages = egress_wire.decode_batch([p.buffer for p in parts[1:]])
        except ValueError as exc:
            self.malformed += 1
            log.error("dropping a malformed batch from a worker", extra={"error": str(exc)})
            return
        submit = self.writer.submit
        futures = []
        group = None
        for frames, flags in messages:
            if flags & egress_wire.GROUP_START_BIT:
                group = Group()
            futures.append(submit(frames, bool(flags & egress_wire.EOS_BIT),
                                  group if flags & egress_wire.GROUP_BIT else None))
        if self.fps is not None:
            self.fps.add(sum(1 for _, flags in messages if flags & egress_wire.FRAME_BIT),
                         len(messages))
        if not futures:
            self._reply(routing_id, batch_id, futures)
            return
        self.unanswered += 1
        remaining = len(futures)

        def one_done(_: asyncio.Future) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self.unanswered -= 1
                self._reply(routing_id, batch_id, futures)
                if not self.unanswered:
                    self.all_answered.set()

        for future in futures:
            future.add_done_callback(one_done)

    def _reply(self, routing_id: bytes, batch_id: int, futures: list[asyncio.Future]) -> None:
        codes = bytearray()
        for future in futures:
            if future.exception() is not None:
                log.error("out_stream write failed", exc_info=future.exception())
                codes.append(egress_wire.ERROR)
            else:
                codes.append(egress_wire.RESULT_CODES[future.result()])
        self.sock.send_multipart([routing_id, *egress_wire.encode_results(batch_id, codes)],
                                 NOBLOCK)
        self._receive()
