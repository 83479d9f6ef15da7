"""The C allocator set for a long-running server: a large block goes back to the system when it is freed.

glibc serves blocks of 128 KiB and more with mmap, and returns them on free, but
each such free raises that threshold to the freed block's size (up to 32 MiB):
from then on large buffers come from the heap, whose freed middle stays with the
process. 200 connections that each held a 255 KiB unfinished LDAP message left
the worker 16-37 MiB larger after they closed. With the threshold fixed at its
default, large blocks stay in mmap and the memory goes back when they are freed
(back to within 0.3 MiB). Python's small objects are not affected (its own arenas).
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
LARGE_BLOCK = 128 * 1024  # glibc's default for both: the heap's free top above it is returned too


def return_large_blocks() -> bool:
    """Fix glibc's mmap and trim thresholds at LARGE_BLOCK; False where the C library has no such settings."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK) == 1 and mallopt(M_TRIM_THRESHOLD, LARGE_BLOCK) == 1
