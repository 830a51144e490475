"""FP8 (E4M3) linear weights held as FP8: a FLUX.1 file stored in FP8 (Comfy-Org's flux1-dev-fp8, Kijai's
flux1-dev-fp8-e4m3fn, t5xxl_fp8_e4m3fn) takes one byte per weight once loaded, as ComfyUI and Forge keep such files,
rather than the two or four of the compute dtype.

A linear layer whose weights are all E4M3 values (those an FP8 file loads into, whatever dtype they were cast to and
however loading renamed or split them: BFL's fused q/k/v) becomes a Float8Linear holding the codes. It decodes them into
its compute dtype when called; E4M3 -> float16, bfloat16 and float32 is exact, so it computes what the dense layer did
and the images are the same. Layers are found by value, since loading renames and splits tensors. A scaled FP8 file's
layers (ComfyUI's `_fp8_scaled`: stored values times a scale, weights/comfy_fp8.py) are not E4M3 values: their loaders
keep each scale beside its matrix (one per row, so renaming and row splits carry it), and the layer becomes a
Float8Linear with that scale before it loads, decoding as ComfyUI computes the weight (the values times the scale in
float32, then the compute dtype).

Why not MLX's quantized matmul (mode "mxfp8" holds E4M3 codes exactly, with a scale exponent of 0): on the CPU backend
it ran over 800x slower than the dense matmul it replaces (1024 x 3072 by 3072 x 3072: 64 s against 76 ms in
float32), where decoding then multiplying costs the decode (45 ms) on top of the matmul.
"""

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mflux_core.weights.comfy_fp8 import FP8_SCALE


class Float8Linear(nn.Module):
    """nn.Linear's computation on weights kept as E4M3 codes (uint8, (out, in)), times a scale per row (float32,
    (out, 1)) for a scaled file's layer, decoded into `compute_dtype`."""

    def __init__(self, codes: mx.array, bias: mx.array | None, compute_dtype: mx.Dtype, scale: mx.array | None = None):
        super().__init__()
        self.weight = codes
        if bias is not None:
            self.bias = bias
        if scale is not None:
            self.fp8_scale = scale
        self.compute_dtype = compute_dtype

    def dense_weight(self) -> mx.array:
        if "fp8_scale" in self:
            return (mx.from_fp8(self.weight, dtype=mx.float32) * self.fp8_scale).astype(self.compute_dtype)
        return mx.from_fp8(self.weight, dtype=self.compute_dtype)

    def __call__(self, x: mx.array) -> mx.array:
        weight = self.dense_weight()
        if "bias" in self:
            return mx.addmm(self["bias"], x, weight.T)
        return x @ weight.T

    def to_quantized(self, group_size: int | None = None, bits: int | None = None, mode: str = "affine",
                     quantize_input: bool = False) -> nn.Module:
        """-q on a model held in FP8: quantized from the FP8 values, as from the dense layer."""
        dense = nn.Linear(self.weight.shape[1], self.weight.shape[0], bias="bias" in self)
        dense.update({"weight": self.dense_weight(), **({"bias": self.bias} if "bias" in self else {})})
        return dense.to_quantized(group_size=group_size, bits=bits, mode=mode, quantize_input=quantize_input)


def _as_float8(layer: nn.Linear) -> Float8Linear | None:
    """The layer held in FP8 if its weights are all E4M3 values, else None (its codes computed now, one layer at a
    time, so a lazily loaded model never holds all its dense weights at once)."""
    weight = layer.weight
    codes = mx.to_fp8(weight)
    exact = mx.array_equal(mx.from_fp8(codes, dtype=weight.dtype), weight)
    mx.eval(codes, exact)
    if not exact.item():
        return None
    return Float8Linear(codes, layer.bias if "bias" in layer else None, weight.dtype)


def hold_float8(model: nn.Module) -> nn.Module:
    """Hold the model's E4M3-valued linear layers as Float8Linear and compute the rest; returns the model."""
    held = {}
    for path, module in model.named_modules():
        if type(module) is nn.Linear and (layer := _as_float8(module)) is not None:
            held[path] = layer
    model.update_modules(tree_unflatten(list(held.items())))
    for _, value in tree_flatten(model.parameters()):  # one at a time: a lazily read tensor's source is freed after it
        mx.eval(value)
    return model


def float8_like_checkpoint(model: nn.Module, weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """Before loading weights whose scaled FP8 layers kept their scales (`<layer>.fp8_scale`, weights/comfy_fp8.py):
    those linear layers become Float8Linear, and the weights to load hold their E4M3 codes; other scaled matrices (an
    embedding) are multiplied out as before. Returns the weights to load."""
    scaled = {name.removesuffix(FP8_SCALE) for name in weights if name.endswith(FP8_SCALE)}
    if not scaled:
        return weights
    layers = {}
    for path, module in model.named_modules():
        if path in scaled and type(module) is nn.Linear:
            layers[path] = Float8Linear(mx.zeros(module.weight.shape, dtype=mx.uint8),
                                        module.bias if "bias" in module else None, dtype, weights[path + FP8_SCALE])
    model.update_modules(tree_unflatten(list(layers.items())))
    loaded = {}
    for name, value in weights.items():
        layer = name.removesuffix(".weight")
        if name.endswith(FP8_SCALE) and name.removesuffix(FP8_SCALE) not in layers:
            continue
        if layer in layers:
            value = mx.to_fp8(value)
        elif layer in scaled:
            value = (value.astype(mx.float32) * weights[layer + FP8_SCALE]).astype(dtype)
        loaded[name] = value
    return loaded
