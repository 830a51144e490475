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
little of the budget for the heap's extra. Otherwise (`reuse_large_buffers`) every buffer comes from the heap,
the VAE's 64 MB bands and 512 MB activations too (glibc would still map those: its threshold stops at 32 MiB),
and up to the plan's slack of freed memory stays there for the next buffer: the 1024x1024 decode of a full-width
FLUX.1 took 3.8 million faults and 84 s, now 0.25 million and 57 s (bench/RESULTS.md, 2026-12-05).
"""

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameter numbers (glibc's malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's own starting value, kept fixed
TRIM_THRESHOLD = 128 << 10  # glibc's default: free memory above this at the heap's top goes back
MMAP_MAX = 65536  # glibc's default count of mapped buffers at once
HEAP_MMAP_THRESHOLD = 32 << 20  # the most glibc takes (unused while MMAP_MAX is 0, where glibc falls back to a map)
MIN_HEAP_KEPT = 64 << 20  # free memory the heap keeps at least, in the heap mode
MAX_MALLOPT_VALUE = 2**31 - 1  # mallopt takes an int


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_large_buffers_mapped() -> None:
    """Buffers of 128 KiB or more mapped, given back when freed: RSS follows MLX's count."""
    _set_options(MMAP_THRESHOLD, TRIM_THRESHOLD, MMAP_MAX)


def reuse_large_buffers(kept_bytes: int) -> None:
    """Every buffer from the heap, reused without page faults; up to `kept_bytes` of freed memory at the heap's
    top stays in RSS (the rest goes back, and malloc_trim gives back all of it)."""
    kept = min(max(kept_bytes, MIN_HEAP_KEPT), MAX_MALLOPT_VALUE)
    _set_options(HEAP_MMAP_THRESHOLD, kept, 0)


def _set_options(mmap_threshold: int, trim_threshold: int, mmap_max: int) -> None:
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)
        libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
        libc.mallopt(M_MMAP_MAX, mmap_max)


def return_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
