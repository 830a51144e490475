"""mflux_core: FLUX.1 in MLX. The engine of mflux-studio; never imports the UI."""

from mflux_core.blas import preload_openblas

OPENBLAS_PATH = preload_openblas()
