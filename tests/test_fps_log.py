"""``statistics``: upstream's FPS counter lines (savant-rs 0.3.5 pipeline stats) to the byte,
and their timing: counting starts at the first message, each message is one frame."""

from __future__ import annotations

import asyncio
import logging

import pytest

from mgfast import fps_log
from mgfast.config.model import Statistics
from mgfast.fps_log import FpsLog, format_line


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


@pytest.fixture
def clock() -> Clock:
    return Clock(1_700_000_000_000)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mgfast.statistics"]


def test_frame_line_is_upstreams_format() -> None:
    # savant_core::pipeline::stats::log_frame_fps: FPS/OPS {:.2}, time_delta {} (Rust f64).
    assert format_line("Frame", 1000, 1_700_000_000_000, 1_700_000_002_000) == (
        "Frame-based FPS counter triggered: FPS = 500.00, OPS = 0.00, frame_delta = 1000, "
        "time_delta = 2 sec, period=[1700000000000, 1700000002000] ms")
    assert format_line("Frame", 3, 10, 1244) == (
        "Frame-based FPS counter triggered: FPS = 2.43, OPS = 0.00, frame_delta = 3, "
        "time_delta = 1.234 sec, period=[10, 1244] ms")


def test_time_line_keeps_upstreams_space_before_the_comma() -> None:
    assert format_line("Time", 0, 5000, 6001) == (
        "Time-based FPS counter triggered: FPS = 0.00, OPS = 0.00, frame_delta = 0, "
        "time_delta = 1.001 sec , period=[5000, 6001] ms")


def test_zero_time_delta_prints_as_rust_does() -> None:
    assert format_line("Frame", 1, 7, 7) == (
        "Frame-based FPS counter triggered: FPS = inf, OPS = NaN, frame_delta = 1, "
        "time_delta = 0 sec, period=[7, 7] ms")


def test_frame_period_counts_every_message_from_the_first(clock, caplog) -> None:
    caplog.set_level(logging.INFO, "mgfast.statistics")
    fps = FpsLog(Statistics(frame_period=3), clock)
    clock.ms += 10_000  # process start is not the start of counting
    start = clock.ms
    fps.add(2)
    assert lines(caplog) == []
    clock.ms += 1500
    fps.add(1)
    assert lines(caplog) == [
        f"Frame-based FPS counter triggered: FPS = 2.00, OPS = 0.00, frame_delta = 3, "
        f"time_delta = 1.5 sec, period=[{start}, {start + 1500}] ms"]
    clock.ms += 500
    fps.add(4)  # the 6th message closes the next period; the 7th starts another
    assert len(lines(caplog)) == 2 and "frame_delta = 3, time_delta = 0.5 sec" in lines(caplog)[1]


@pytest.mark.parametrize("period", [1, 0, -5])
def test_frame_period_of_one_or_less_logs_every_message(clock, caplog, period) -> None:
    caplog.set_level(logging.INFO, "mgfast.statistics")
    fps = FpsLog(Statistics(frame_period=period), clock)
    fps.add(3)
    assert len(lines(caplog)) == 3


def test_timestamp_period_starts_at_the_first_message(caplog) -> None:
    caplog.set_level(logging.INFO, "mgfast.statistics")
    fps = FpsLog(Statistics(timestamp_period=0.05))

    async def scenario() -> list[str]:
        stop = asyncio.Event()
        task = asyncio.create_task(fps.run(stop))
        await asyncio.sleep(0)  # the timer waits for the first message, however long
        assert lines(caplog) == []
        first_ms = fps_log._now_ms()
        fps.add(1)
        deadline = asyncio.get_running_loop().time() + 5
        while len(lines(caplog)) < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)
        got = lines(caplog)
        assert got[0].startswith("Time-based FPS counter triggered: ")
        assert "frame_delta = 1, " in got[0] and "frame_delta = 0, " in got[1]
        t0 = int(got[0].rsplit("period=[", 1)[1].split(",")[0])
        assert t0 >= first_ms
        return got

    assert len(asyncio.run(scenario())) >= 2


def test_timestamp_period_marks_come_from_the_injected_clock(clock, caplog) -> None:
    """The time-based line's period is the clock's: a mark every period of clock time, with
    or without traffic, each line covering exactly one period."""
    caplog.set_level(logging.INFO, "mgfast.statistics")
    fps = FpsLog(Statistics(timestamp_period=0.01), clock)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(fps.run(stop))
        start = clock.ms
        fps.add(2)
        for _ in range(3):
            clock.ms += 10  # the clock says the period is over; the timer checks every TICK
            deadline = asyncio.get_running_loop().time() + 5
            count = len(lines(caplog))
            while len(lines(caplog)) == count and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.002)
        stop.set()
        await asyncio.wait_for(task, 5)
        assert lines(caplog) == [
            format_line("Time", 2, start, start + 10),
            format_line("Time", 0, start + 10, start + 20),
            format_line("Time", 0, start + 20, start + 30),
        ]

    asyncio.run(scenario())
