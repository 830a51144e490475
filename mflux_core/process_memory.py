"""The process's memory beside MLX's: what the C allocator keeps after MLX frees a buffer.

MLX's CPU backend takes its buffers from malloc. glibc serves a request below its mmap threshold from
the heap and raises that threshold (up to 32 MiB) each time a mapped buffer is freed, so after the
first large frees the VAE's band-sized buffers come from the heap, where freed ones stay in the
process's resident memory though MLX no longer counts them. A fixed threshold keeps every buffer of
128 KiB or more mapped (given back to the system when freed), and trimming the heap before the
process is measured for a plan keeps earlier runs' free pages out of the figure. Linux with glibc
only: elsewhere (macOS, whose allocator returns large blocks itself; musl) nothing changes.

Mapped buffers cost time: every new one is fresh pages the kernel must fault in and zero (a 512x512
whole-process run on a full-width FLUX.1: 4.6 million minor faults and 6 s of 42 against 2.2 million
with glibc's default). So the memory plan keeps buffers mapped only for a run whose plan leaves too
little of the budget for the heap's extra (`reuse_large_buffers` otherwise, as glibc does once warm).
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's own starting value, kept fixed
TRIM_THRESHOLD = 128 << 10  # glibc's default: free memory above this at the heap's top goes back
HEAP_MMAP_THRESHOLD = 32 << 20  # the ceiling glibc's dynamic threshold climbs to, and where it stays once warm
HEAP_TRIM_THRESHOLD = 2 * HEAP_MMAP_THRESHOLD  # what glibc's dynamic rule pairs with it


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_large_buffers_mapped() -> None:
    """Buffers of 128 KiB or more mapped, given back when freed: RSS follows MLX's count."""
    _set_thresholds(MMAP_THRESHOLD, TRIM_THRESHOLD)


def reuse_large_buffers() -> None:
    """Buffers below 32 MiB from the heap, reused without page faults; freed ones stay in RSS until trimmed."""
    _set_thresholds(HEAP_MMAP_THRESHOLD, HEAP_TRIM_THRESHOLD)


def _set_thresholds(mmap_threshold: int, trim_threshold: int) -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)


def return_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
