"""Keep the 1 MiB buffers of the pipeline in the heap.

Every block read, decrypted or decompressed is a fresh buffer of about
1 MiB.  glibc serves such sizes with mmap(2) until its adaptive threshold
has risen, and returns freed heap tops to the kernel eagerly: each MiB then
costs page faults and zeroing, about a tenth of restore's CPU time.  A fixed
threshold above the buffers' size keeps them in the heap, where freed ones
are reused; the trim threshold bounds what the heap keeps unused.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 8 << 20
TRIM_THRESHOLD = 64 << 20
_done = False


def reuse_buffers() -> None:
    """Once per process; does nothing where the C library is not glibc."""
    global _done
    if _done:
        return
    _done = True
    try:                  # the process's own symbols: find_library would run ldconfig
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


# A long-running process with many threads (the mount) also keeps one heap
# for all of them (glibc otherwise gives threads heaps of their own, each
# keeping its freed buffers) and hands free pages back when a reader is done.

M_ARENA_MAX = -8


def one_heap() -> None:
    """All threads allocate from one heap: freed buffers serve any thread.
    Call before threads start; does nothing where the C library is not glibc."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)    # the process's own symbols
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 1)


def release_unused() -> None:
    """Hand the heap's free pages back to the kernel (after a reader is done)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)
