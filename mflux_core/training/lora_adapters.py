"""Trainable LoRA adapters on a FLUX.1 transformer, saved in the diffusers / PEFT format.

The matrices live in one `LoraAdapters` module, which is all the training loop and its checkpoints
see (the base weights never enter a gradient or a checkpoint). The transformer's chosen linear
layers are wrapped so they read those same matrices: y = base(x) + (alpha / rank) (x A^T) B^T, with
A (rank, in) and B (out, rank) named and laid out as PEFT names them, B starting at zero so a new
adapter changes nothing. (lora/layers.py's LoRALinear is the inference side: several stacked,
rescalable adapters; this is one adapter whose matrices are parameters.)

The saved file has `transformer.<module>.lora_A.weight` / `lora_B.weight` keys and PEFT's adapter
metadata (rank, alpha) in its header: what diffusers' `save_lora_weights` writes, and what
`--lora-paths` reads.
"""

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mflux_core.errors import InvalidRequest
from mflux_core.lora.apply import get_module, set_module
from mflux_core.lora.formats import PEFT_METADATA_KEY
from mflux_core.lora.layers import LINEAR_TYPES, linear_shape
from mflux_core.training.lora_config import LayerSelection


class LoraMatrices(nn.Module):
    def __init__(self, lora_A: mx.array, lora_B: mx.array):
        super().__init__()
        self.lora_A = lora_A  # (rank, in)
        self.lora_B = lora_B  # (out, rank)


class TrainableLoRALinear(nn.Module):
    def __init__(self, base: nn.Module, matrices: LoraMatrices, scale: float):
        super().__init__()
        self.base = base
        self.adapter = matrices  # the same module object LoraAdapters holds
        self.scale = scale

    def __call__(self, x: mx.array) -> mx.array:
        down = x @ self.adapter.lora_A.T.astype(x.dtype)
        return self.base(x) + self.scale * (down @ self.adapter.lora_B.T.astype(x.dtype))


@dataclass(frozen=True)
class AdapterLayout:
    paths: tuple[str, ...]  # module paths in the transformer, in the order of LoraAdapters.layers
    rank: int
    alpha: float


class LoraAdapters(nn.Module):
    """Every adapted layer's matrices: the whole trainable state."""

    def __init__(self, layout: AdapterLayout, layers: list[LoraMatrices]):
        super().__init__()
        self.layout = layout  # a plain attribute, not a parameter
        self.layers = layers

    def peft_weights(self) -> dict[str, mx.array]:
        weights = {}
        for path, layer in zip(self.layout.paths, self.layers):
            weights[f"transformer.{path}.lora_A.weight"] = layer.lora_A
            weights[f"transformer.{path}.lora_B.weight"] = layer.lora_B
        return weights

    def save(self, path: Path) -> Path:
        """Write the adapter as a diffusers / PEFT LoRA file (atomically)."""
        config = {"r": self.layout.rank, "lora_alpha": self.layout.alpha, "target_modules": list(self.layout.paths)}
        metadata = {f"transformer.{key}": value for key, value in config.items()}  # as a pipeline saves it
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial.safetensors")
        # Kohya's family key too, which LoRA listings (ours, A1111's, Civitai's) read
        mx.save_safetensors(str(partial), self.peft_weights(), metadata={
            "format": "pt", PEFT_METADATA_KEY: json.dumps(metadata), "ss_base_model_version": "flux1"})
        os.replace(partial, path)
        return path


def linear_names(block: nn.Module) -> list[str]:
    return [name for name, module in block.named_modules() if isinstance(module, LINEAR_TYPES)]


def adapted_paths(transformer: nn.Module, selections: tuple[LayerSelection, ...]) -> tuple[str, ...]:
    """The module paths a config's lora_layers choose; a layer type that is no linear layer is an error."""
    paths = []
    for selection in selections:
        blocks = getattr(transformer, selection.kind)
        for index in selection.block_indices(len(blocks)):
            for layer_type in selection.layer_types:
                if not isinstance(get_module(blocks[index], layer_type), LINEAR_TYPES):
                    raise InvalidRequest(
                        f"The training config's lora_layers.{selection.kind}.layer_types names {layer_type!r}, which "
                        f"is not a linear layer of these blocks; choose from {', '.join(linear_names(blocks[index]))}.")
                paths.append(f"{selection.kind}.{index}.{layer_type}")
    return tuple(dict.fromkeys(paths))


def attach_lora(transformer: nn.Module, selections: tuple[LayerSelection, ...], rank: int, alpha: float,
                seed: int) -> LoraAdapters:
    """Wrap the chosen layers with new adapters (A ~ U(+-1/sqrt(in)) keyed by the seed, B = 0)."""
    paths = adapted_paths(transformer, selections)
    keys = mx.random.split(mx.random.key(seed), len(paths))
    layers = []
    for path, key in zip(paths, keys):
        base = get_module(transformer, path)
        out_features, in_features = linear_shape(base)
        bound = 1.0 / math.sqrt(in_features)
        matrices = LoraMatrices(mx.random.uniform(-bound, bound, (rank, in_features), key=key),
                                mx.zeros((out_features, rank)))
        set_module(transformer, path, TrainableLoRALinear(base, matrices, alpha / rank))
        layers.append(matrices)
    adapters = LoraAdapters(AdapterLayout(paths, rank, alpha), layers)
    mx.eval(adapters.parameters())
    return adapters
