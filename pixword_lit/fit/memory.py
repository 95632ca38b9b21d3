"""Host memory allocation settings for CPU training (glibc's malloc, Linux).

A training step allocates and frees the same large activations every step. glibc serves
allocations above its mmap threshold with fresh mmap pages and trims the top of its heap back
to the kernel on free, so steps keep touching new pages (minor page faults, each a trip into
the kernel). `keep_freed_memory` raises the mmap threshold to its maximum (32 MiB) and the
trim threshold to 1 GiB: after the first step the heap already holds what a step needs and
most faults stop (counted by `pixword bench ab`; results/README.md, "Speed"). The cost: freed
memory stays with the process, which a training process wants anyway.

Intel's PyTorch CPU tuning guide gets the same from jemalloc or tcmalloc by LD_PRELOAD; this
needs no extra library. It is a no-op off glibc (macOS, musl) and when the user set any
MALLOC_* environment variable (their choice wins).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's maximum on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's thresholds once per process; -> whether they are set."""
    global _done
    if _done is None:
        _done = _apply()
    return _done


def _apply() -> bool:
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
