"""Keep the GPU kernels MLX compiles across restarts of the machine.

MLX's CUDA backend compiles its kernels when they first run: a FLUX.1-dev step's first call took
22-34 s on an H200, and 0.6-0.9 s in a later process once they were compiled (bench/gpu_step.py).
MLX keeps them in /tmp/mlx/<version>/ptx, which a reboot empties; the user's cache folder keeps them,
one folder per MLX version, since the compiled kernels are that version's.
"""

import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CACHE_VARIABLE = "MLX_PTX_CACHE_DIR"  # read by MLX when it compiles its first kernel


def kernel_cache_folder() -> Path | None:
    try:
        mlx_version = version("mlx")
    except PackageNotFoundError:
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mflux-studio" / f"mlx-{mlx_version}" / "ptx"


def keep_gpu_kernels() -> None:
    """Points MLX's compiled-kernel cache at the user's cache folder, unless the user chose one."""
    folder = kernel_cache_folder()
    if folder is not None and CACHE_VARIABLE not in os.environ:
        os.environ[CACHE_VARIABLE] = str(folder)
