"""Upstream's ``statistics`` setting: periodic FPS lines in the log.

``frame_period: N`` logs after every N video frames; ``timestamp_period: D`` logs every D.
Each line carries the frames and messages per second over the period just ended, like
upstream's "FPS counter triggered" lines. mgfast does not decode frames, so it reports no
objects-per-second figure.
"""

from __future__ import annotations

import asyncio
import logging
import time

from mgfast.config.model import Statistics

log = logging.getLogger("mgfast.statistics")


class FpsLog:
    def __init__(self, statistics: Statistics) -> None:
        self.frame_period = statistics.frame_period
        self.timestamp_period = statistics.timestamp_period
        self.frames = 0
        self.messages = 0
        self.mark = (time.monotonic(), 0, 0)  # time, frames, messages at the last line
        self.next_frame_mark = self.frame_period or 0

    def add(self, frames: int, messages: int) -> None:
        """Count forwarded messages, ``frames`` of them video frames."""
        self.frames += frames
        self.messages += messages
        if self.frame_period and self.frames >= self.next_frame_mark:
            self.next_frame_mark = self.frames + self.frame_period
            self._emit("Frame-based FPS counter triggered")

    async def run(self, stop: asyncio.Event) -> None:
        """With ``timestamp_period``, log every period until ``stop``."""
        if not self.timestamp_period:
            return
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.timestamp_period)
            except asyncio.TimeoutError:
                self._emit("Time-based FPS counter triggered")

    def _emit(self, what: str) -> None:
        now = time.monotonic()
        then, frames, messages = self.mark
        elapsed = max(now - then, 1e-9)
        frame_delta, message_delta = self.frames - frames, self.messages - messages
        self.mark = (now, self.frames, self.messages)
        log.info(what, extra={
            "fps": f"{frame_delta / elapsed:.2f}", "mps": f"{message_delta / elapsed:.2f}",
            "frame_delta": frame_delta, "message_delta": message_delta,
            "time_delta": f"{elapsed:.3f}"})
