"""Give freed request buffers back to the operating system (glibc's allocator).

glibc serves a large allocation from its own mapping and unmaps it on free, but after the first
such free it raises that threshold (up to 32 MiB), so later bodies of a few MiB come from the
heap and stay in the process's RSS after they are freed. One hostile client sending big bodies
would then leave a worker tens of MiB larger for good. A fixed threshold keeps every buffer
over 256 KiB a mapping of its own: freed means returned, and a growing body buffer is resized
by ``mremap`` without a copy. Small allocations are another matter: a burst of them (the
event loop's write buffers for a client that reads no answers, say) leaves free pages inside
the heap that glibc returns only on ``malloc_trim``; ``HeapTrimmer`` calls it once a second
(about 2 us when there is nothing to return). Elsewhere (musl, macOS) this does nothing.

The other side of returning memory is taking it again: each page the kernel hands back is
zeroed on first touch. A stream of 100 KiB frames allocates and frees a few MiB at the heap's
top over and over; trimmed at every free, that was 17 page faults per message in a worker and
26 in the client (``perf stat``, bench.pipeline large), a tenth of their CPU. A top pad keeps
that much of the heap's top mapped: the worker's faults fell to 0.3 per message with 4 MiB,
the client's (whose libzmq holds up to ``inflight_ops`` frames) needed 8 MiB.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _ctypes import CFuncPtr  # a foreign function, as CDLL's attributes are

M_TRIM_THRESHOLD = -1  # from <malloc.h>
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024
SERVER_TOP_PAD = 4 * 1024 * 1024  # under the hostile-input tests' 8 MiB of idle slack
CLIENT_TOP_PAD = 16 * 1024 * 1024


def _libc_function(name: str) -> CFuncPtr | None:
    try:
        function: CFuncPtr = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None), name)
        return function
    except (OSError, AttributeError):
        return None


def return_large_buffers(top_pad: int = SERVER_TOP_PAD) -> bool:
    """Fix glibc's mmap threshold and keep ``top_pad`` bytes of the heap's top mapped; True if
    the allocator took both."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # Setting either threshold turns off glibc's dynamic adjustment of both.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)
                and mallopt(M_TOP_PAD, top_pad))


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` every ``period`` seconds on the running loop."""

    def __init__(self, period: float = 1.0) -> None:
        self.period = period
        self.trim = _libc_function("malloc_trim")
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self.trim is not None:
            self.trim.argtypes = (ctypes.c_size_t,)
            self.timer = asyncio.get_running_loop().call_later(self.period, self._tick)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _tick(self) -> None:
        assert self.trim is not None  # start() arms the timer only then
        self.trim(0)
        self.timer = asyncio.get_running_loop().call_later(self.period, self._tick)
