"""Which MLX backend we run on, and the compute dtype that is fast there."""

import mlx.core as mx

from mflux_core import OPENBLAS_PATH

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def backend_name() -> str:
    if mx.default_device().type != mx.DeviceType.gpu:
        return "CPU (OpenBLAS)" if OPENBLAS_PATH else "CPU"
    if getattr(mx, "cuda", None) is not None and mx.cuda.is_available():
        return "CUDA"
    return "Metal"


def default_dtype_name() -> str:
    """float32 on the CPU backend (bfloat16 never reaches BLAS there), bfloat16 on Metal and CUDA."""
    return "bfloat16" if mx.default_device().type == mx.DeviceType.gpu else "float32"


def resolve_dtype(name: str | None) -> mx.Dtype:
    return DTYPES[name or default_dtype_name()]
