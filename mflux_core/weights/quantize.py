"""MLX affine quantization of the transformer's and T5's linear layers (3, 4, 5, 6 or 8 bits, groups of 64).

A layer is quantized when its input width divides by the group size; the others (the tiny test
models have some, the real ones few) stay in the compute dtype. A saved quantized model records
the settings in its config.json ("quantization": {"bits", "group_size"}) and safetensors header;
loading rebuilds exactly the layers whose `.scales` are in the file as QuantizedLinear.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core.errors import ModelLoadError
from mflux_core.weights.float8 import Float8Linear

GROUP_SIZE = 64
BITS = (3, 4, 5, 6, 8)
CONFIG_KEY = "quantization"


def quantizable(_path: str, module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Float8Linear)) and module.weight.shape[1] % GROUP_SIZE == 0


def quantized_bits(model: nn.Module) -> int | None:
    """The bit width of the model's quantized layers, or None if it has none."""
    bits = {m.bits for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    return min(bits) if bits else None


def quantize_model(model: nn.Module, bits: int | None) -> nn.Module:
    """Quantize the model's linear layers in place (None: leave it). A model already quantized to
    `bits` is left as is; one quantized to another width is refused (re-quantizing loses quality)."""
    if bits is None:
        return model
    quantize_lazily(model, bits)
    mx.eval(model.parameters())
    return model


def quantize_lazily(model: nn.Module, bits: int | None) -> None:
    """quantize_model without computing: the quantized weights are computed when evaluated (weights.save does
    it one tensor at a time, for its progress and Stop)."""
    if bits is None:
        return
    if bits not in BITS:
        raise ModelLoadError(f"Quantization to {bits} bits is not supported; choose one of {', '.join(map(str, BITS))}.")
    existing = quantized_bits(model)
    if existing is not None and existing != bits:
        raise ModelLoadError(
            f"This model is quantized to {existing} bits already (a saved quantized model, a GGUF or bitsandbytes "
            f"4-bit file); load it without quantizing (no -q) or at {existing} bits: quantizing again would lose "
            "quality."
        )
    nn.quantize(model, group_size=GROUP_SIZE, bits=bits, class_predicate=quantizable)


def quantized_group_size(model: nn.Module) -> int | None:
    """The group size of the model's quantized layers (the smallest where they differ), or None if it has none."""
    sizes = {m.group_size for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)}
    return min(sizes) if sizes else None


def quantization_config(bits: int, group_size: int) -> dict:
    """What a saved model's config.json records (loading reads each layer's settings from its tensors)."""
    return {"bits": bits, "group_size": group_size}


def quantize_like_checkpoint(model: nn.Module, weights: dict[str, mx.array]) -> None:
    """Before loading a quantized checkpoint: turn the layers it stores quantized (those with `.scales`) into
    QuantizedLinear (or QuantizedEmbedding), each at its own bits and group size, read from its stored widths against
    the layer's input width (a GGUF file's types differ by layer; a requantized NF4 file's groups differ from those
    `-q` adds)."""
    def layer_settings(path: str, module: nn.Module) -> dict | bool:
        if f"{path}.scales" not in weights:
            return False
        columns = module.weight.shape[-1]
        return {"group_size": columns // weights[f"{path}.scales"].shape[-1],
                "bits": weights[f"{path}.weight"].shape[-1] * 32 // columns}

    nn.quantize(model, class_predicate=layer_settings)


def parameter_bytes(module: nn.Module | None) -> int:
    if module is None:
        return 0
    return sum(value.nbytes for _, value in tree_flatten(module.parameters()))


def t5_encoder(text_encoders) -> nn.Module | None:
    """The T5 module of a TextEncoders (None while released)."""
    return text_encoders._t5  # TextEncoders keeps its encoders private; this is the one place that looks


def clip_encoder(text_encoders) -> nn.Module | None:
    return text_encoders._clip


def quantize_text_encoders(text_encoders, bits: int | None):
    """Quantize T5's linear layers (CLIP is small and stays as it is)."""
    t5 = t5_encoder(text_encoders)
    if t5 is not None:
        quantize_model(t5, bits)
    return text_encoders


def text_encoder_bytes(text_encoders) -> int:
    return parameter_bytes(clip_encoder(text_encoders)) + parameter_bytes(t5_encoder(text_encoders))
