"""glibc's allocator, set for streams of large frames that must still give memory back.

A stream of 100 KiB frames (or of 4 MiB batches of them) allocates and frees the same few MiB
over and over. Whatever glibc hands back to the kernel in between is faulted in anew, zeroed,
on the next touch: with glibc's defaults (and with the fixed 256 KiB mmap threshold this module
once set, so that a freed body was a returned body) that was 17 to 25 page faults per message in
a worker and in the client, a tenth of their CPU on single frames and half of it on batches
(``perf stat``, bench.pipeline large). So freed memory stays with the process for reuse:

- allocations up to ``MMAP_THRESHOLD`` (32 MiB: the default ``http.max_body_size``) come from
  the heap, not from a mapping of their own that is unmapped on free;
- a free does not trim the heap's top below ``TRIM_THRESHOLD``, and a trim keeps a top pad
  (4 MiB in the server's processes; the client, whose libzmq holds up to ``inflight_ops``
  frames and whose batches are 4 MiB each, keeps a 64 MiB pad and trims past 256 MiB: with the
  server's values a b=64 stream of 100 KiB frames still cost it 53k faults in 4 s, with these
  about a hundred);
- ``HeapTrimmer`` gives back what is free (``malloc_trim``: the top and whole free pages inside
  the heap) at a tick (every quarter of a second in the server) when the process was quiet over
  the last period (under a tenth of a CPU), or when more than ``MAX_FREE`` (64 MiB; 256 MiB in
  the client) lies free: a stream keeps its pages, and one hostile client's big bodies leave a
  worker no larger once it stops. A tick costs a few microseconds when there is nothing to return.

Setting any of these turns off glibc's dynamic thresholds. Elsewhere (musl, macOS) this does
nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _ctypes import CFuncPtr  # a foreign function, as CDLL's attributes are

M_TRIM_THRESHOLD = -1  # from <malloc.h>
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
SERVER_TOP_PAD = 4 * 1024 * 1024  # under the hostile-input tests' 8 MiB of idle slack
CLIENT_TOP_PAD = 64 * 1024 * 1024
CLIENT_TRIM_THRESHOLD = 256 * 1024 * 1024
CLIENT_MAX_FREE = 256 * 1024 * 1024
MAX_FREE = 64 * 1024 * 1024
SERVER_TRIM_PERIOD = 0.25  # seconds
CLIENT_TRIM_PERIOD = 1.0


def _libc_function(name: str) -> CFuncPtr | None:
    try:
        function: CFuncPtr = getattr(ctypes.CDLL(ctypes.util.find_library("c") or None), name)
        return function
    except (OSError, AttributeError):
        return None


def keep_freed_memory(top_pad: int = SERVER_TOP_PAD, trim_threshold: int = TRIM_THRESHOLD
                      ) -> bool:
    """Set glibc's thresholds and ``top_pad`` (see the module docs); True if it took all."""
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, trim_threshold)
                and mallopt(M_TOP_PAD, top_pad))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


class HeapTrimmer:
    """Calls ``malloc_trim(0)`` on the running loop every ``period`` seconds in which the
    process used less than ``quiet`` of a CPU, or when more than ``max_free`` bytes are free."""

    def __init__(self, period: float = SERVER_TRIM_PERIOD, *, quiet: float = 0.1,
                 max_free: int = MAX_FREE) -> None:
        self.period = period
        self.quiet = quiet
        self.max_free = max_free
        self.trim = _libc_function("malloc_trim")
        self.mallinfo2 = _libc_function("mallinfo2")  # glibc 2.33 and later
        self.cpu = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.trims = 0  # for tests

    def start(self) -> None:
        if self.trim is not None:
            self.trim.argtypes = (ctypes.c_size_t,)
            if self.mallinfo2 is not None:
                self.mallinfo2.restype = _MallInfo2
            self.cpu = time.process_time()
            self.timer = asyncio.get_running_loop().call_later(self.period, self._tick)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def free_bytes(self) -> int:
        """Bytes free inside the heaps (0 where glibc cannot tell)."""
        return int(self.mallinfo2().fordblks) if self.mallinfo2 is not None else 0

    def _tick(self) -> None:
        assert self.trim is not None  # start() arms the timer only then
        cpu = time.process_time()  # every thread's: libzmq's I/O thread moves frames too
        busy = (cpu - self.cpu) / self.period
        self.cpu = cpu
        if busy < self.quiet or self.free_bytes() > self.max_free:
            self.trim(0)
            self.trims += 1
        self.timer = asyncio.get_running_loop().call_later(self.period, self._tick)
