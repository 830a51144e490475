"""GGUF FLUX.1 transformers, as ComfyUI-GGUF and Forge users download them (city96's flux1-dev-Q8_0.gguf,
flux1-dev-Q4_K_S.gguf, ...): BFL's tensor names, each tensor in one of ggml's types, read with the `gguf` package
(llama.cpp's own reader).

Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K and Q5_K layers become MLX's own affine quantization at 8, 4 or 5 bits in groups
of 32, holding exactly the file's values (weights/ggml_blocks.py; a file of only MLX's own types goes through MLX's
reader, which makes the same groups in C++); F32, F16 and BF16 tensors are read as floats; the
types that do not fit groups of 32 (Q6_K, Q3_K, Q2_K, the IQ types) are dequantized into float16 (each value rounded
to float16's 11 bits: a file's worth of float32 would be twice a bfloat16 model). The memory a file takes once
loaded is read from its header.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from mflux_core.errors import ModelLoadError
from mflux_core.weights.ggml_blocks import EXACT_BITS, GROUP_SIZE, affine_matrix

GGUF_SUFFIX = ".gguf"
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)  # kept as stored
# what MLX's own GGUF reader reads exactly (its quantized types as the same affine groups of 32 as ggml_blocks.py)
MLX_READS = (*FLOAT_TYPES, GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0, GGMLQuantizationType.Q4_1)


def is_gguf(path: Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX


def _reader(path: Path) -> GGUFReader:
    try:
        return GGUFReader(path)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ModelLoadError(f"{Path(path).name} is not a readable GGUF file ({error}).") from None


def _header(path: Path) -> list[tuple[str, GGMLQuantizationType, int]]:
    """(name, type, element count) of each tensor; the data is mapped, not read."""
    return [(tensor.name, tensor.tensor_type, int(tensor.n_elements)) for tensor in _reader(path).tensors]


def mlx_reads_all(path: Path) -> bool:
    return all(kind in MLX_READS for _, kind, _ in _header(path))


def gguf_tensor_names(path: Path) -> set[str]:
    return {name for name, _, _ in _header(path)}


def gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's logical shape (a quantized matrix's rows and columns of values), from the header."""
    return {tensor.name: tuple(int(size) for size in reversed(tensor.shape)) for tensor in _reader(path).tensors}


def gguf_resident_bytes(path: Path, float_bytes: float) -> int:
    """Memory the file's tensors take once loaded: the quantized ones MLX keeps as they are (the packed codes, and a
    scale and an offset per group of 32 in the compute dtype, at least float16's 2 bytes), the others as floats of
    `float_bytes` each."""
    total = 0.0
    for _, kind, count in _header(path):
        if kind in EXACT_BITS:
            total += count * EXACT_BITS[kind] / 8 + count / GROUP_SIZE * 2 * max(float_bytes, 2)
        elif kind == GGMLQuantizationType.F32:
            total += count * float_bytes
        else:  # read as float16, then cast to the compute dtype
            total += count * max(float_bytes, 2)
    return int(total)


def read_gguf(path: Path) -> dict[str, np.ndarray]:
    """The file's tensors under their own names, in their logical shapes; a `<name>.weight` of an affine block type
    as MLX's QuantizedLinear holds it: the packed codes there, with `<name>.scales` and `<name>.biases`."""
    tensors = {}
    for tensor in _reader(path).tensors:
        try:
            tensors.update(_read_tensor(tensor))
        except NotImplementedError:
            raise ModelLoadError(f"{Path(path).name} has {tensor.tensor_type.name} tensors, which the studio cannot "
                                 "read yet: use a file of another type (Q8_0, Q5_K, Q4_K, ...).") from None
        except ValueError as error:
            raise ModelLoadError(f"{Path(path).name} is not a readable GGUF file ({error}).") from None
    return tensors


def _read_tensor(tensor) -> dict[str, np.ndarray]:
    shape = tuple(int(size) for size in reversed(tensor.shape))  # ggml lists the fastest-moving axis first
    kind, name = tensor.tensor_type, tensor.name
    if kind in EXACT_BITS and name.endswith(".weight") and len(shape) == 2:
        stem = name.removesuffix(".weight")
        return dict(zip((name, f"{stem}.scales", f"{stem}.biases"), affine_matrix(tensor.data, kind, shape)))
    if kind in FLOAT_TYPES:
        return {name: np.asarray(tensor.data).reshape(shape)}
    return {name: dequantize(tensor.data, kind).reshape(shape).astype(np.float16)}


def check_not_gguf(path: Path | None, what: str) -> None:
    """Refuse a GGUF file where float weights are needed (`what`: "a merge", ...)."""
    if path is not None and is_gguf(path):
        raise ModelLoadError(f"{Path(path).name} is a GGUF file, whose layers are quantized in ggml's blocks: "
                             f"{what} needs float weights; use its safetensors original.")


def quantized_bits(weights: dict, module: str) -> int | None:
    """The bit width of `module`'s quantized weight (from its packed width against its groups), None for floats."""
    scales = weights.get(f"{module}.scales")
    if scales is None:
        return None
    return weights[f"{module}.weight"].shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
