"""Give freed request buffers back to the operating system at once (glibc's allocator).

glibc serves a large allocation from its own mapping and unmaps it on free, but after the first
such free it raises that threshold (up to 32 MiB), so later bodies of a few MiB come from the
heap and stay in the process's RSS after they are freed. One hostile client sending big bodies
would then leave a worker tens of MiB larger for good. A fixed threshold keeps every buffer
over 256 KiB a mapping of its own: freed means returned, and a growing body buffer is resized
by ``mremap`` without a copy. Elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1  # from <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold; True if the allocator took it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # Setting either threshold turns off glibc's dynamic adjustment of both.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))
