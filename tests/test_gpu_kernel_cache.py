"""MLX's compiled CUDA kernels are kept in the user's cache folder, per MLX version (gpu_kernel_cache.py)."""

import os
import subprocess
import sys
from importlib.metadata import version

from mflux_core.gpu_kernel_cache import CACHE_VARIABLE


def cache_variable_after_import(environment: dict) -> str:
    code = f"import mflux_core, os; print(os.environ.get({CACHE_VARIABLE!r}, ''))"
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_engine_points_mlx_at_a_kernel_cache_per_mlx_version(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k != CACHE_VARIABLE} | {"XDG_CACHE_HOME": str(tmp_path)}
    assert cache_variable_after_import(environment) == str(tmp_path / "mflux-studio" / f"mlx-{version('mlx')}" / "ptx")


def test_a_cache_folder_the_user_chose_stays():
    chosen = {**os.environ, CACHE_VARIABLE: "/srv/kernels"}
    assert cache_variable_after_import(chosen) == "/srv/kernels"
