"""mgfast.memory on glibc, in fresh interpreters (the allocator's settings are per process):
frames allocated and freed in a stream reuse the heap's pages instead of faulting in new ones."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mgfast.memory import _libc_function

PROGRAM = """
import ctypes, resource, sys
from mgfast.memory import CLIENT_TOP_PAD, SERVER_TOP_PAD, return_large_buffers
pad = {"server": SERVER_TOP_PAD, "client": CLIENT_TOP_PAD, "none": 0}[sys.argv[1]]
assert return_large_buffers(pad)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(500):  # 8 frames of 100 KB in flight, written, then freed, over and over
    frames = [libc.malloc(100_000) for _ in range(8)]
    for frame in frames:
        libc.memset(frame, 1, 100_000)
    for frame in reversed(frames):
        libc.free(frame)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4000)
"""


def faults_per_frame(pad: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROGRAM, pad], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return float(out)


@pytest.mark.skipif(_libc_function("mallopt") is None, reason="not glibc: no mallopt")
def test_a_stream_of_large_frames_reuses_the_heaps_pages():
    # without a top pad every frame's 25 pages are faulted in anew (the heap's top is
    # trimmed at each free); with either process's pad, next to none are
    assert faults_per_frame("none") > 10
    assert faults_per_frame("server") < 1
    assert faults_per_frame("client") < 1
