"""A linear layer with LoRA adapters added at run time, so they can be rescaled and removed.

The base layer (nn.Linear, nn.QuantizedLinear or an FP8 Float8Linear) is never changed. All adapters of a layer are
kept concatenated, with their scales folded into the up matrix, so one layer costs two small
matmuls whatever the number of LoRAs: y = base(x) + (x @ downs) @ (scaled ups).

A DoRA rescales the adapted weight W' = W + dW so each output row (or input column) has its stored
magnitude m: W'' = W' * f with f = m / |W'| per row (column). As a layer's output that is the base's
output without its bias times f (or the base applied to x * f), plus the low-rank path times f, so it
too runs without a merged weight; f is computed once from the weights. The user's scale s follows the
file's maker: LyCORIS (dora_scale keys) blends the rescale, f = s (m / |W + dW| - 1) + 1, with dW
unscaled; PEFT (lora_magnitude_vector) scales dW by s before the norms. Several adapters' changes
add, each measured against the base weight, as plain LoRAs' do.

An adapter may take more inputs than the base layer (a BFL control LoRA's `img_in`: the control image's latents
beside the noise); the base then reads the first of them, as diffusers' layer widened with zero columns would.
An adapter may also add to the layer's bias.
"""

from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn

from mflux_core.lora.formats import LoraWeights
from mflux_core.weights.float8 import Float8Linear

LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear, Float8Linear)
NORM_EPSILON = 1.1920929e-07  # float32's machine epsilon, added to the norms as LyCORIS and PEFT do


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(out features, in features) of a Linear, QuantizedLinear or Float8Linear."""
    if isinstance(layer, nn.QuantizedLinear):
        return layer.weight.shape[0], layer.weight.shape[1] * 32 // layer.bits
    return tuple(layer.weight.shape)


def linear_shapes(root: nn.Module) -> dict[str, tuple[int, int]]:
    """Module path -> (out, in) of every linear layer under `root` (before LoRAs wrap them)."""
    return {path: linear_shape(module) for path, module in root.named_modules() if isinstance(module, LINEAR_TYPES)}


def compute_dtype(layer: nn.Module) -> mx.Dtype:
    if isinstance(layer, Float8Linear):
        return layer.compute_dtype
    return layer.scales.dtype if isinstance(layer, nn.QuantizedLinear) else layer.weight.dtype


def dense_weight(layer: nn.Module) -> mx.array:
    """The layer's (out, in) weight, dequantized where it is quantized or held in FP8, in its compute dtype."""
    if isinstance(layer, Float8Linear):
        return layer.dense_weight()
    if isinstance(layer, nn.QuantizedLinear):
        return mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=layer.group_size, bits=layer.bits)
    return layer.weight


def input_channels(transformer: nn.Module) -> int:
    """Channels per token the transformer's image input takes: its config's, or more while a control LoRA widens
    it."""
    embedder = transformer.x_embedder
    return embedder.input_features if isinstance(embedder, LoRALinear) else transformer.config.in_channels


@dataclass
class Adapter:
    weights: LoraWeights
    scale: float  # the user's scale; the format's own alpha scale is in weights.scale
    norms: tuple[float, mx.array] | None = None  # a DoRA's |W + dW| and the user's scale inside dW (PEFT's way)

    def dora_rescale(self, base: nn.Module) -> tuple[mx.array, float]:
        """(f, the low-rank path's scalar scale) of a DoRA adapter at its current scale."""
        w, dora = self.weights, self.weights.dora
        inside = self.scale if dora.strength_inside else 1.0
        if self.norms is None or self.norms[0] != inside:  # computed once, or again when PEFT's scale changes
            change = (w.scale * inside) * (w.up.astype(mx.float32) @ w.down.astype(mx.float32))
            merged = dense_weight(base).astype(mx.float32) + change
            norms = mx.sqrt(mx.sum(mx.square(merged), axis=0 if dora.on_input else 1)) + NORM_EPSILON
            mx.eval(norms)
            self.norms = (inside, norms)
        ratio = dora.magnitude / self.norms[1]
        if dora.strength_inside:
            return ratio, w.scale * self.scale
        return self.scale * (ratio - 1) + 1, w.scale


class Factors(NamedTuple):
    """All adapters of a layer as one, in float32 (None where no adapter adds that part)."""

    downs: mx.array  # (in, total rank), in as wide as the widest adapter's
    ups: mx.array  # (total rank, out), scaled
    output_rescale: mx.array | None  # (out,): DoRAs' rescale of the base's output
    input_rescale: mx.array | None  # (in,): DoRAs' rescale of the base's input
    bias: mx.array | None  # (out,): added to the output


class AdapterTable:
    """Named adapters in the order they were added (a plain object: not part of the parameter tree)."""

    def __init__(self):
        self.by_name: dict[str, Adapter] = {}


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.base_inputs = linear_shape(base)[1]
        self.table = AdapterTable()
        # an empty array stands for none in the parameter tree (made here, not once at import: an array is
        # evaluated on its thread's stream, and the server runs models on other threads)
        self.lora_down = mx.zeros((0,))  # (in, total rank): every adapter's down matrix, transposed
        self.lora_up = mx.zeros((0,))  # (total rank, out): every adapter's up matrix, transposed and scaled
        self.output_rescale = mx.zeros((0,))  # (out,): DoRAs' rescale of the base's output (its bias kept)
        self.input_rescale = mx.zeros((0,))  # (in,): DoRAs' rescale of the base's input
        self.lora_bias = mx.zeros((0,))  # (out,): adapters' bias

    @property
    def names(self) -> list[str]:
        return list(self.table.by_name)

    def scale_of(self, name: str) -> float:
        return self.table.by_name[name].scale

    @property
    def input_features(self) -> int:
        """The inputs the layer takes: the base's, or the widest adapter's when wider."""
        return max([self.base_inputs, *(a.weights.down.shape[1] for a in self.table.by_name.values())])

    def add(self, name: str, weights: LoraWeights, scale: float) -> None:
        out_features, in_features = linear_shape(self.base)
        if weights.down.shape[1] < in_features or weights.up.shape[0] != out_features:
            raise ValueError(f"adapter {tuple(weights.up.shape)} @ {tuple(weights.down.shape)} "
                             f"does not fit a {out_features}x{in_features} layer")
        self.table.by_name[name] = Adapter(weights, scale)
        self._rebuild()

    def set_scale(self, name: str, scale: float) -> None:
        self.table.by_name[name].scale = scale
        self._rebuild()

    def remove(self, name: str) -> None:
        del self.table.by_name[name]
        self._rebuild()

    def _factors(self) -> Factors:
        downs, ups, biases, rescales = [], [], [], {False: None, True: None}
        width = self.input_features
        for adapter in self.table.by_name.values():
            down, up = adapter.weights.down.T.astype(mx.float32), adapter.weights.up.T.astype(mx.float32)
            if adapter.weights.dora is None:
                up_scale = adapter.scale * adapter.weights.scale
            else:
                f, path_scale = adapter.dora_rescale(self.base)
                on_input = adapter.weights.dora.on_input
                down, up_scale = (down * f[:, None], path_scale) if on_input else (down, path_scale * f)
                rescales[on_input] = (f - 1) + (1 if rescales[on_input] is None else rescales[on_input])
            downs.append(mx.pad(down, [(0, width - down.shape[0]), (0, 0)]))
            ups.append(up * up_scale)
            if adapter.weights.bias is not None:
                biases.append(adapter.weights.bias.astype(mx.float32) * up_scale)
        return Factors(mx.concatenate(downs, axis=1), mx.concatenate(ups, axis=0), rescales[False], rescales[True],
                       sum(biases) if biases else None)

    def _rebuild(self) -> None:
        factors = self._factors() if self.table.by_name else (None,) * len(Factors._fields)
        dtype = compute_dtype(self.base)
        factors = [mx.zeros((0,)) if f is None else f.astype(dtype) for f in factors]
        self.lora_down, self.lora_up, self.output_rescale, self.input_rescale, self.lora_bias = factors
        mx.eval([f for f in factors if f.size])

    def delta(self) -> tuple[mx.array, mx.array | None]:
        """The weight change (out, in) all adapters make together, in float32, `in` as wide as input_features; and
        the bias change (None for none)."""
        factors = self._factors()
        change = (factors.downs @ factors.ups).T
        if factors.output_rescale is None and factors.input_rescale is None:
            return change, factors.bias
        weight = dense_weight(self.base).astype(mx.float32)
        rescaled = weight * (1 if factors.output_rescale is None else factors.output_rescale[:, None]) * (
            1 if factors.input_rescale is None else factors.input_rescale[None, :])
        return mx.pad(rescaled - weight, [(0, 0), (0, change.shape[1] - weight.shape[1])]) + change, factors.bias

    def __call__(self, x: mx.array) -> mx.array:
        if not self.table.by_name:
            return self.base(x)
        base_x = x[..., :self.base_inputs] if x.shape[-1] > self.base_inputs else x
        y = self.base(base_x * self.input_rescale if self.input_rescale.size else base_x)
        if self.output_rescale.size:
            bias = self.base.bias if "bias" in self.base else None
            y = y * self.output_rescale if bias is None else (y - bias) * self.output_rescale + bias
        if self.lora_bias.size:
            y = y + self.lora_bias
        return mx.addmm(y, x @ self.lora_down, self.lora_up)
