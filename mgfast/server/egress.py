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

from mgfast._zmq_io import recv_multipart, send_multipart
from mgfast.zmq.settings import OutStreamConfig
from mgfast.fps_log import FpsLog
from mgfast.server import egress_wire
from mgfast.zmq.writer import OutStreamWriter, WriteResult

log = logging.getLogger("mgfast.egress")


class Egress:
    def __init__(self, out_stream: OutStreamConfig, endpoint: str,
                 fps: FpsLog | None = None) -> None:
        self.writer = OutStreamWriter(out_stream)
        # A PUB send never fails (ZeroMQ drops at the high-water mark instead), so a whole
        # batch can be one run whatever its groups: one submit, one future, one reply.
        self.one_run = out_stream.url.socket_type == "pub"
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
        handle = self.sock.underlying
        while True:
            parts = recv_multipart(handle)
            if parts is None:
                return
            self._submit(parts)

    def _submit(self, parts: list) -> None:
        routing_id = parts[0]
        try:
            batch_id, messages = egress_wire.decode_batch(parts[1:])
        except ValueError as exc:
            self.malformed += 1
            log.error("dropping a malformed batch from a worker", extra={"error": str(exc)})
            return
        runs = _one_run(messages) if self.one_run else _runs(messages)
        writer = self.writer
        futures = [writer.submit_group(frames, eos) for frames, eos in runs]
        if self.fps is not None:
            self.fps.add(len(messages))
        if not futures:
            self._reply(routing_id, batch_id, futures, runs)
            return
        self.unanswered += 1
        remaining = len(futures)

        def one_done(_: asyncio.Future) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self.unanswered -= 1
                self._reply(routing_id, batch_id, futures, runs)
                if not self.unanswered:
                    self.all_answered.set()

        for future in futures:
            future.add_done_callback(one_done)

    def _reply(self, routing_id: bytes, batch_id: int, futures: list[asyncio.Future],
               runs: list) -> None:
        codes = bytearray()
        for future, (messages, _) in zip(futures, runs):
            if future.exception() is not None:
                log.error("out_stream write failed", exc_info=future.exception())
                codes += bytes((egress_wire.ERROR,)) * len(messages)
            else:
                results = future.result()
                if results.count(WriteResult.SUCCESS) == len(results):
                    codes += bytes(len(results))  # all SUCCESS (code 0): the pub case
                else:
                    codes += bytes(egress_wire.RESULT_CODES[r] for r in results)
        send_multipart(self.sock.underlying,
                       [routing_id, *egress_wire.encode_results(batch_id, codes)])
        self._receive()


def _one_run(messages: list[tuple[list, int]]) -> list[tuple[list, list[bool]]]:
    if not messages:
        return []
    return [([frames for frames, _ in messages],
             [bool(flags & egress_wire.EOS_BIT) for _, flags in messages])]


def _runs(messages: list[tuple[list, int]]) -> list[tuple[list, list[bool]]]:
    """Split a batch into writer runs: each group is one run, every other message its own."""
    runs: list[tuple[list, list[bool]]] = []
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
