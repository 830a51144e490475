"""GGUF FLUX.1 transformers, as ComfyUI-GGUF and Forge users download them (city96's flux1-dev-Q8_0.gguf, ...): BFL's
tensor names, each tensor in one of ggml's types.

MLX reads GGUF itself and keeps Q8_0, Q4_0 and Q4_1 as its own affine quantization (groups of 32: a block's scale
and its offset, -128 d, -8 d or m), so those layers stay quantized, bit for bit what the file holds; F32, F16 and
BF16 tensors are read as floats. ggml's other types (Q5_0, Q5_1, the K-quants, the IQ types) MLX cannot read: such a
file is refused, by name, before anything loads. The `gguf` package (llama.cpp's own reader) reads the header: the
types and shapes, for that check and for the memory a file takes once loaded.
"""

from pathlib import Path

from gguf import GGMLQuantizationType, GGUFReader

from mflux_core.errors import ModelLoadError

GGUF_SUFFIX = ".gguf"
GROUP_SIZE = 32  # ggml's block of the Q4_0, Q4_1 and Q8_0 types
QUANTIZED_BITS = {GGMLQuantizationType.Q8_0: 8, GGMLQuantizationType.Q4_0: 4, GGMLQuantizationType.Q4_1: 4}
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


def is_gguf(path: Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX


def _header(path: Path) -> list[tuple[str, GGMLQuantizationType, int]]:
    """(name, type, element count) of each tensor; the data is mapped, not read."""
    try:
        reader = GGUFReader(path)
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise ModelLoadError(f"{Path(path).name} is not a readable GGUF file ({error}).") from None
    return [(tensor.name, tensor.tensor_type, int(tensor.n_elements)) for tensor in reader.tensors]


def gguf_tensor_names(path: Path) -> set[str]:
    return {name for name, _, _ in _header(path)}


def check_gguf_types(path: Path) -> None:
    """Refuse a file with tensors of a type MLX cannot read, naming the types."""
    unreadable = sorted({kind.name for _, kind, _ in _header(path) if kind not in QUANTIZED_BITS and
                         kind not in FLOAT_TYPES})
    if unreadable:
        raise ModelLoadError(
            f"{Path(path).name} has {', '.join(unreadable)} tensors, which MLX cannot read: the studio reads GGUF "
            "files of Q8_0, Q4_0 or Q4_1 (and F16, BF16, F32). Use one of those files, or the safetensors "
            "original quantized to 8 or 4 bits (-q 8 or -q 4).")


def gguf_resident_bytes(path: Path, float_bytes: float) -> int:
    """Memory the file's tensors take once loaded: the quantized ones as MLX keeps them (the packed values, and a
    scale and an offset per group of 32 in the compute dtype, at least float16's 2 bytes), the others cast to
    `float_bytes` each."""
    total = 0.0
    for _, kind, count in _header(path):
        if kind in QUANTIZED_BITS:
            total += count * QUANTIZED_BITS[kind] / 8 + count / GROUP_SIZE * 2 * max(float_bytes, 2)
        else:
            total += count * float_bytes
    return int(total)


def check_not_gguf(path: Path | None, what: str) -> None:
    """Refuse a GGUF file where float weights are needed (`what`: "a merge", ...)."""
    if path is not None and is_gguf(path):
        raise ModelLoadError(f"{Path(path).name} is a GGUF file, whose layers are quantized in ggml's groups of 32: "
                             f"{what} needs float weights; use its safetensors original.")


def quantized_bits(weights: dict, module: str) -> int | None:
    """The bit width of `module`'s quantized weight (from its packed width against its groups), None for floats."""
    scales = weights.get(f"{module}.scales")
    if scales is None:
        return None
    return weights[f"{module}.weight"].shape[-1] * 32 // (scales.shape[-1] * GROUP_SIZE)
