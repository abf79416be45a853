"""The C heap of a process that runs a model on the CPU: what one batch frees stays for the next.

glibc serves a large request (above a threshold that adapts up to 32 MiB) with a fresh ``mmap`` and hands
it back to the kernel on ``free``; it also trims the top of its heap once 128 KiB there are free. A forward
pass on the CPU allocates and frees the same tens of MiB of activations batch after batch, so every batch
page-faults zeroed pages in again. Keeping the freed memory avoids that (the gain is measured by
``benchmarks/bench_allocator.py``, docs/benchmarks.md); the cost is that the process keeps its peak heap
(up to ``KEEP_BYTES`` of it free) instead of returning it between batches.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# Requests up to this size come from the heap, and this much free memory at its top is kept.
KEEP_BYTES = 1 << 30

# The environment of a process that runs a CPU model on a thread other than its main one, as a Ray Data
# actor does (its batches run on a thread of their own): the CPU scorer's and the CPU rewriter's, through
# runtime.actor_pool_kwargs. glibc gives such a thread its own arena, whose heaps are at most 64 MiB and are
# unmapped whole once free, whatever the thresholds say: a batch's activations fault in again each time.
# One arena puts every thread on the main heap, where the thresholds hold (page faults and time a row:
# docs/benchmarks.md). glibc reads it when the process starts, hence an environment variable.
CPU_ACTOR_ENV = {"MALLOC_ARENA_MAX": "1"}

_kept = False


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds to ``KEEP_BYTES`` for this process (once), and put the threads
    it starts from now on on the main heap (one arena: the CPU scorer's row-shard threads). False where the
    C library has no ``mallopt`` (macOS, musl): those allocators are left as they are.

    The arena limit holds only for threads that have no arena yet, which is why a Ray actor, whose batch
    thread exists before its ``__init__``, gets ``CPU_ACTOR_ENV`` when its process starts."""
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept = bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    mallopt(M_ARENA_MAX, 1)  # best effort: the thresholds are what keeps the heap
    if not _kept:
        log.debug("mallopt refused the thresholds: glibc's defaults stay")
    return _kept
