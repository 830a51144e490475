"""A GGUF file's tensors as MLX arrays (weights/gguf_file.py reads them without MLX)."""

from pathlib import Path

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.weights.gguf_file import mlx_reads_all, read_gguf


def load_gguf(path: Path) -> dict[str, mx.array]:
    """A GGUF file's tensors under their own names; a quantized one as `<name>.weight` (packed uint32),
    `<name>.scales` and `<name>.biases`, as MLX's QuantizedLinear holds them (weights/gguf_file.py). A file of only
    the types MLX's own GGUF reader knows loads through it, in C++ (a 12 B Q8_0 file: seconds, not a minute)."""
    if mlx_reads_all(path):
        try:
            return mx.load(str(path), format="gguf")
        except (RuntimeError, ValueError) as error:
            raise ModelLoadError(f"{Path(path).name} is not a readable GGUF file ({error}).") from None
    return {name: mx.array(value) for name, value in read_gguf(path).items()}
