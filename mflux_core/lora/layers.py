"""A linear layer with LoRA adapters added at run time, so they can be rescaled and removed.

The base layer (nn.Linear or nn.QuantizedLinear) is never changed. All adapters of a layer are
kept concatenated, with their scales folded into the up matrix, so one layer costs two small
matmuls whatever the number of LoRAs: y = base(x) + (x @ downs) @ (scaled ups).
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mflux_core.lora.formats import LoraWeights

LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear)


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(out features, in features) of a Linear or QuantizedLinear."""
    if isinstance(layer, nn.QuantizedLinear):
        return layer.weight.shape[0], layer.weight.shape[1] * 32 // layer.bits
    return tuple(layer.weight.shape)


def compute_dtype(layer: nn.Module) -> mx.Dtype:
    return layer.scales.dtype if isinstance(layer, nn.QuantizedLinear) else layer.weight.dtype


@dataclass
class Adapter:
    weights: LoraWeights
    scale: float  # the user's scale; the format's own alpha scale is in weights.scale


class AdapterTable:
    """Named adapters in the order they were added (a plain object: not part of the parameter tree)."""

    def __init__(self):
        self.by_name: dict[str, Adapter] = {}


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.table = AdapterTable()
        self.lora_down = mx.zeros((0,))  # (in, total rank): every adapter's down matrix, transposed
        self.lora_up = mx.zeros((0,))  # (total rank, out): every adapter's up matrix, transposed and scaled

    @property
    def names(self) -> list[str]:
        return list(self.table.by_name)

    def scale_of(self, name: str) -> float:
        return self.table.by_name[name].scale

    def add(self, name: str, weights: LoraWeights, scale: float) -> None:
        out_features, in_features = linear_shape(self.base)
        if weights.down.shape[1] != in_features or weights.up.shape[0] != out_features:
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

    def _rebuild(self) -> None:
        adapters = list(self.table.by_name.values())
        if not adapters:
            self.lora_down, self.lora_up = mx.zeros((0,)), mx.zeros((0,))
            return
        dtype = compute_dtype(self.base)
        self.lora_down = mx.concatenate([a.weights.down.T for a in adapters], axis=1).astype(dtype)
        self.lora_up = mx.concatenate(
            [a.weights.up.T * (a.scale * a.weights.scale) for a in adapters], axis=0).astype(dtype)
        mx.eval(self.lora_down, self.lora_up)

    def delta(self) -> mx.array:
        """The weight change (out, in) all adapters make together, in float32."""
        return sum((a.scale * a.weights.scale) * (a.weights.up.astype(mx.float32) @ a.weights.down.astype(mx.float32))
                   for a in self.table.by_name.values())

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        if not self.table.by_name:
            return y
        return mx.addmm(y, x @ self.lora_down, self.lora_up)
