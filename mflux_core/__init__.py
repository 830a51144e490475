"""mflux_core: FLUX.1 in MLX. The engine of mflux-studio; never imports the UI."""

from mflux_core.blas import preload_openblas
from mflux_core.gpu_kernel_cache import keep_gpu_kernels

OPENBLAS_PATH = preload_openblas()
keep_gpu_kernels()
