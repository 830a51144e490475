"""Make MLX's CPU backend use an optimised BLAS on Linux.

The Linux `mlx[cpu]` wheel links the reference BLAS (~4 GFLOP/s for float32 matmul). Loading
Debian's OpenBLAS globally before `mlx.core` is first imported makes MLX's `cblas_sgemm` calls
resolve there (20-40x faster, identical results). This must run before any `import mlx.core`,
which is why `mflux_core/__init__.py` calls it.
"""

import ctypes
import os
import sys

OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)


def preload_openblas() -> str | None:
    """Load OpenBLAS with RTLD_GLOBAL if we are on Linux and it is installed; return its path."""
    if not sys.platform.startswith("linux") or "mlx.core" in sys.modules:
        return None
    if os.environ.get("MFLUX_STUDIO_NO_OPENBLAS"):
        return None
    for path in OPENBLAS_CANDIDATES:
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
    return None
