"""The C heap of a large stage 2: freed blocks go back to the operating system.

glibc serves a large allocation by ``mmap`` and returns it on ``free``, but after the first
such free it raises that threshold (up to 32 MiB) and keeps later blocks below it in the heap
once freed. Stage 2 on ImageNet-LT-sized features allocates many short-lived blocks of a few
MiB (scoring chunks, logits); kept in the heap they added hundreds of MiB to the peak
resident memory (benchmarks/memory.py). :func:`return_large_blocks` fixes the threshold
instead, once per process.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
RETURNED_AT_BYTES = 4 << 20  # blocks of 4 MiB or more are mapped, and unmapped when freed


@functools.cache
def return_large_blocks() -> bool:
    """Ask glibc to map (and unmap on free) every block of ``RETURNED_AT_BYTES`` or more.
    Returns whether it was set; a no-op where the C library is not glibc, or where the user
    set ``MALLOC_MMAP_THRESHOLD_`` (theirs is kept)."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, RETURNED_AT_BYTES))
