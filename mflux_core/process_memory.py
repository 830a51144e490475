"""The process's memory beside MLX's: what the C allocator keeps after MLX frees a buffer.

MLX's CPU backend takes its buffers from malloc. glibc serves a request below its mmap threshold from
the heap and raises that threshold (up to 32 MiB) each time a mapped buffer is freed, so after the
first large frees the VAE's band-sized buffers come from the heap, where freed ones stay in the
process's resident memory though MLX no longer counts them. A fixed threshold keeps every buffer of
128 KiB or more mapped (given back to the system when freed), and trimming the heap before the
process is measured for a plan keeps earlier runs' free pages out of the figure. Linux with glibc
only: elsewhere (macOS, whose allocator returns large blocks itself; musl) nothing changes.
"""

import ctypes
import sys

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
MMAP_THRESHOLD = 128 << 10  # glibc's own starting value, kept fixed


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_large_buffers_mapped() -> None:
    """Fix glibc's mmap threshold at 128 KiB for the rest of the process."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def return_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
