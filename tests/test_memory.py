"""mgfast.memory on glibc, in fresh interpreters (the allocator's settings are per process):
frames allocated and freed in a stream reuse the heap's pages instead of faulting in new ones,
and what is free goes back to the kernel at the trimmer's next tick."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from mgfast.memory import _libc_function

PROGRAM = """
import ctypes, resource, sys
from mgfast.memory import CLIENT_TOP_PAD, SERVER_TOP_PAD, keep_freed_memory
mode, size, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode != "default":
    assert keep_freed_memory(SERVER_TOP_PAD if mode == "server" else CLIENT_TOP_PAD)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
libc.malloc_trim.argtypes = (ctypes.c_size_t,)
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
idle = rss()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds = 100
for _ in range(rounds):  # frames in flight, written, then freed, over and over
    frames = [libc.malloc(size) for _ in range(in_flight)]
    for frame in frames:
        libc.memset(frame, 1, size)
    for frame in reversed(frames):
        libc.free(frame)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
held = rss() - idle
libc.malloc_trim(0)  # what HeapTrimmer does
print(faults / (rounds * in_flight * size / 4096), held, rss() - idle)
"""


def stream(mode: str, size: int, in_flight: int) -> tuple[float, int, int]:
    """(page faults per page of frame written, bytes held after the stream, after a trim)."""
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode, str(size), str(in_flight)],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    return float(out[0]), int(out[1]), int(out[2])


@pytest.mark.skipif(_libc_function("mallopt") is None, reason="not glibc: no mallopt")
@pytest.mark.parametrize("size, in_flight", [(100_000, 8), (4 << 20, 2)])  # frames, batches
def test_a_stream_of_large_frames_reuses_the_heap_and_a_trim_gives_it_back(size, in_flight):
    # glibc's defaults fault every page of every frame in anew (the heap's top is trimmed at
    # each free; a 4 MiB buffer is a mapping of its own, unmapped on free)
    assert stream("default", size, in_flight)[0] > 0.5
    for mode in ("server", "client"):
        faults, held, trimmed = stream(mode, size, in_flight)
        assert faults < 0.05, mode
        assert held >= size  # kept for the next frames...
        assert trimmed < 2 << 20, mode  # ...until the trimmer's tick


@pytest.mark.skipif(_libc_function("malloc_trim") is None, reason="not glibc: no malloc_trim")
def test_the_trimmer_trims_a_quiet_process_and_a_busy_one_only_past_its_free_bound():
    from mgfast.memory import HeapTrimmer

    def spin(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    async def ticks(trimmer: HeapTrimmer, busy: bool) -> int:
        trimmer.start()
        for _ in range(4):
            if busy:
                spin(trimmer.period)  # a whole period of CPU: a stream in full flow
            else:
                await asyncio.sleep(trimmer.period)
            await asyncio.sleep(0)  # let the tick run
        trimmer.stop()
        return trimmer.trims

    assert asyncio.run(ticks(HeapTrimmer(0.05), busy=False)) >= 2
    # (a bound no heap reaches: this process may hold much free from earlier tests)
    assert asyncio.run(ticks(HeapTrimmer(0.05, max_free=1 << 60), busy=True)) == 0
    assert asyncio.run(ticks(HeapTrimmer(0.05, max_free=-1), busy=True)) >= 2
