"""The bound on messages a worker has handed to its writer and not yet had answered.

Past ``limit``, a submit waits for room before it is queued: requests then wait, the
connections' pipelines fill, reading pauses, and TCP pushes back on the clients, so a slow
out_stream costs bounded memory in every layout (``out_stream.inflight_ops``).
"""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

T = TypeVar("T")


class PendingLimit:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending = 0  # messages submitted and not yet resolved
        self.space = asyncio.Event()

    def admit(self, count: int, submit: Callable[[], asyncio.Future[T]]) -> asyncio.Future[T]:
        """``submit()`` now if there is room (no coroutine or task), else once there is; the
        returned future is its future's."""
        if self.pending >= self.limit:
            return asyncio.ensure_future(self._when_room(count, submit))
        self.pending += count
        future = submit()
        if future.done():  # written at once (OutStreamWriter's fast path)
            self._release(count)
        else:
            future.add_done_callback(lambda _: self._release(count))
        return future

    async def _when_room(self, count: int, submit: Callable[[], asyncio.Future[T]]) -> T:
        while self.pending >= self.limit:
            self.space.clear()
            await self.space.wait()
        return await self.admit(count, submit)

    def _release(self, count: int) -> None:
        self.pending -= count
        self.space.set()
