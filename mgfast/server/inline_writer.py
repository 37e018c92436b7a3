"""The out_stream writer inside the only worker: no egress process, no hop."""

from __future__ import annotations

import asyncio
from typing import Sequence

from mgfast._zmq_io import SendBuffer
from mgfast.zmq.settings import OutStreamConfig
from mgfast.fps_log import FpsLog
from mgfast.server.pending_limit import PendingLimit
from mgfast.zmq.writer import Buffer, Frames, OutStreamWriter, WriteResult


class InlineWriter:
    """Adapts OutStreamWriter to the worker's writer interface (with the FPS statistics that
    the egress keeps when there is one)."""

    def __init__(self, out_stream: OutStreamConfig, fps: FpsLog | None) -> None:
        self.writer = OutStreamWriter(out_stream)
        self.fps = fps
        self.limit = PendingLimit(out_stream.inflight_ops)

    async def start(self) -> None:
        await self.writer.start()

    def submit(self, frames: Sequence[Buffer], *, eos: bool) -> asyncio.Future[WriteResult]:
        """Queue one message; the future's result is its WriteResult (no coroutine, no task
        while there is room)."""
        if self.fps is not None:
            self.fps.add(1)
        return self.limit.admit(1, lambda: self.writer.submit(frames, eos))

    def submit_group(self, messages: list[Frames], eos: list[bool] | None
                     ) -> asyncio.Future[list[WriteResult]]:
        """As EgressClient.submit_group: in order, stopping at the first failure."""
        if self.fps is not None:
            self.fps.add(len(messages))
        return self.limit.admit(len(messages),
                                lambda: self.writer.submit_group(messages, eos))

    def submit_batch(self, body: Buffer | SendBuffer
                     ) -> tuple[int, int, asyncio.Future[list[WriteResult]]] | None:
        """OutStreamWriter.submit_batch (items written straight from a MediaBatch body), within
        the same bound on pending messages as submit_group: None when the bound is reached
        (then submit_group waits for room) or an item is malformed."""
        limit = self.limit
        if limit.pending >= limit.limit:
            return None
        done = self.writer.submit_batch(body)
        if done is None:
            return None
        count, size, future = done
        if self.fps is not None:
            self.fps.add(count)
        return count, size, limit.admit(count, lambda: future)

    async def close(self) -> None:
        await self.writer.close()
