"""One sweep per loop for connection deadlines (mgfast.http.deadlines)."""

from __future__ import annotations

import asyncio

from mgfast.http.deadlines import Deadlines
from tests.util import arun


def test_an_armed_deadline_fires_once_near_its_time_and_a_disarmed_one_never():
    async def go():
        loop = asyncio.get_running_loop()
        sweep = Deadlines.of(loop)
        fired: list[tuple[str, float]] = []
        due, cancelled = sweep.watch(0.1), sweep.watch(0.1)
        start = loop.time()
        for deadline, name in ((due, "due"), (cancelled, "cancelled")):
            deadline.at = start + 0.1
            deadline.action = lambda name=name: fired.append((name, loop.time() - start))
        cancelled.action = None  # what _disarm does
        while not fired and loop.time() - start < 2:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.1)
        for deadline in (due, cancelled):
            sweep.forget(deadline)
        return fired, sweep
    fired, sweep = arun(go())
    assert [name for name, _ in fired] == ["due"]
    # not early (up to float rounding: at <= now does not give now - start >= 0.1 exactly),
    # and at most a period late
    assert 0.1 - 1e-9 <= fired[0][1] < 0.1 + 2 * sweep.period + 0.05
    assert sweep.timer is None or not sweep.watched  # nothing watched: the sweep winds down


def test_the_period_follows_the_shortest_timeout_in_use():
    async def go():
        sweep = Deadlines.of(asyncio.get_running_loop())
        first = sweep.period
        deadline = sweep.watch(0.05)
        sweep.forget(deadline)
        return first, sweep.period
    first, after = arun(go())
    assert first == 1.0 and after == 0.005
