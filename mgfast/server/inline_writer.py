"""The out_stream writer inside the only worker: no egress process, no hop."""

from __future__ import annotations

from typing import Sequence

from mgfast.config.model import OutStreamConfig
from mgfast.fps_log import FpsLog
from mgfast.zmq.writer import OutStreamWriter, WriteResult


class InlineWriter:
    """Adapts OutStreamWriter to the worker's writer interface (with the FPS statistics that
    the egress keeps when there is one)."""

    def __init__(self, out_stream: OutStreamConfig, fps: FpsLog | None) -> None:
        self.writer = OutStreamWriter(out_stream)
        self.fps = fps

    async def start(self) -> None:
        await self.writer.start()

    async def write(self, frames: Sequence, *, eos: bool, frame: bool = False) -> WriteResult:
        if self.fps is not None:
            self.fps.add(1 if frame else 0, 1)
        return await self.writer.submit(frames, eos)

    async def close(self) -> None:
        await self.writer.close()
