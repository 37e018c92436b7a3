"""Connection deadlines without a timer per request: one sweep per event loop.

A connection states its next deadline as a timestamp and what to do then (``arm``); moving it,
which happens several times per request, is two attribute stores instead of cancelling and
creating a timer. One timer per loop wakes every ``period`` seconds and runs the actions whose
time has come, so a deadline fires up to one period late. The period follows the shortest
timeout in use (a tenth of it, at most one second), so short test timeouts stay precise.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Callable

MAX_PERIOD = 1.0


class Deadline:
    """One connection's deadline; ``action`` None means none is set."""

    __slots__ = ("at", "action")

    def __init__(self) -> None:
        self.at = 0.0
        self.action: Callable[[], None] | None = None


class Deadlines:
    _per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines] = \
        weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Deadlines:
        """The loop's sweep, made on first use."""
        sweep = cls._per_loop.get(loop)
        if sweep is None:
            sweep = cls._per_loop[loop] = cls(loop)
        return sweep

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.period = MAX_PERIOD
        self.watched: set[Deadline] = set()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, shortest_timeout: float) -> Deadline:
        """A deadline to check until ``forget``; ``shortest_timeout`` is the shortest delay it
        will be armed with."""
        self.period = min(self.period, max(0.001, shortest_timeout / 10))
        deadline = Deadline()
        self.watched.add(deadline)
        if self.timer is None:
            self.timer = self.loop.call_later(self.period, self._sweep)
        return deadline

    def forget(self, deadline: Deadline) -> None:
        deadline.action = None
        self.watched.discard(deadline)

    def _sweep(self) -> None:
        now = self.loop.time()
        for deadline in [d for d in self.watched if d.action is not None and d.at <= now]:
            action, deadline.action = deadline.action, None
            if action is not None:  # an earlier action may have disarmed it
                action()
        self.timer = (self.loop.call_later(self.period, self._sweep) if self.watched
                      else None)
