"""Upstream's ``statistics`` setting: the FPS counter lines of savant-rs's pipeline statistics.

Upstream (MediaGateway 0.2.0 on savant-rs 0.3.5) counts every message as one frame: the server
each message it handled (whatever the write result), the client each message the server
accepted. Counting starts at the first message: it records an initial mark (time, frame 0) and
counts that message as frame 1. Then

* ``frame_period: N``: when N frames have been counted since the last mark, a new mark is
  taken and ``Frame-based FPS counter triggered: ...`` compares it with the previous one;
* ``timestamp_period: D``: from the first message on, every D (checked each millisecond, as
  upstream's timer thread does) a mark is taken, with or without traffic, and
  ``Time-based FPS counter triggered: ...`` is logged.

The message text is upstream's to the byte, including Rust's number formatting: ``FPS`` and
``OPS`` with two decimals (``inf`` / ``NaN`` for a zero time delta), ``time_delta`` in seconds
as Rust prints an f64 (``1`` rather than ``1.0``), the period as wall-clock Unix milliseconds.
OPS is objects per second; the gateway never sees objects, so it is 0.00, as upstream.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from mgfast.config.model import Statistics

log = logging.getLogger("mgfast.statistics")

TICK = 0.001  # upstream's timer thread wakes every millisecond


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _rust_f64(value: float) -> str:
    """``format!("{}", value)`` for an f64: shortest round-trip digits, no exponent, no ``.0``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(value)
    if "e" in text or "E" in text:
        text = f"{value:.17f}".rstrip("0")
    return text.removesuffix(".0")


def _rust_fixed2(value: float) -> str:
    """``format!("{:.2}", value)`` for an f64."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.2f}"


def _rate(delta: int, seconds: float) -> float:
    if seconds:
        return delta / seconds
    return math.nan if delta == 0 else math.inf  # f64 division by zero, as in Rust


def format_line(kind: str, frame_delta: int, t0_ms: int, t1_ms: int) -> str:
    """One upstream FPS line; ``kind`` is ``"Frame"`` or ``"Time"``."""
    time_delta = (t1_ms - t0_ms) / 1000.0
    fps = _rust_fixed2(_rate(frame_delta, time_delta))
    ops = _rust_fixed2(_rate(0, time_delta))
    # Upstream's time-based line has a space before the comma after "sec"; kept to the byte.
    sec = "sec ," if kind == "Time" else "sec,"
    return (f"{kind}-based FPS counter triggered: FPS = {fps}, OPS = {ops}, "
            f"frame_delta = {frame_delta}, time_delta = {_rust_f64(time_delta)} {sec} "
            f"period=[{t0_ms}, {t1_ms}] ms")


class FpsLog:
    """Counts messages and logs upstream's lines; ``run`` drives the time-based variant."""

    def __init__(self, statistics: Statistics, clock: Callable[[], int] = _now_ms) -> None:
        self.clock = clock  # wall-clock Unix milliseconds, as upstream prints them
        self.frame_period = statistics.frame_period
        self.timestamp_period_ms = (int(statistics.timestamp_period * 1000)
                                    if statistics.timestamp_period is not None else None)
        self.frames = 0  # counted since the first message
        self.mark: tuple[int, int] | None = None  # (ms, frames) of the last record; None: idle
        self._started = asyncio.Event()

    def add(self, messages: int) -> None:
        """Count ``messages`` handled messages (each one is a frame to upstream)."""
        for _ in range(messages):
            mark = self.mark
            if mark is None:
                mark = self.mark = (self.clock(), 0)
                self._started.set()
            self.frames += 1
            if self.frame_period is not None and self.frames - mark[1] >= self.frame_period:
                self._record("Frame", mark)

    async def run(self, stop: asyncio.Event) -> None:
        """With ``timestamp_period``, from the first message on, log every period until ``stop``."""
        period_ms = self.timestamp_period_ms
        if period_ms is None:
            return
        waiter = asyncio.ensure_future(stop.wait())
        started = asyncio.ensure_future(self._started.wait())
        try:
            await asyncio.wait([waiter, started], return_when=asyncio.FIRST_COMPLETED)
            while not stop.is_set():
                mark = self.mark
                assert mark is not None  # _started is set with the first mark
                delay = max(TICK, (mark[0] + period_ms - self.clock()) / 1000)
                done, _ = await asyncio.wait([waiter], timeout=delay)
                if done:
                    return
                if self.clock() - mark[0] >= period_ms:
                    self._record("Time", mark)
        finally:
            waiter.cancel()
            started.cancel()

    def _record(self, kind: str, mark: tuple[int, int]) -> None:
        now = self.clock()
        t0, frames0 = mark
        self.mark = (now, self.frames)
        log.info(format_line(kind, self.frames - frames0, t0, now))
