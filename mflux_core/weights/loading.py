"""Build a model from a component folder (config.json + safetensors, or mflux's save) with strict name checking."""

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core.errors import ModelLoadError
from mflux_core.weights import bnb_layers
from mflux_core.weights.comfy_fp8 import FP8_SCALE
from mflux_core.weights.float8 import float8_like_checkpoint
from mflux_core.weights.quantize import quantize_like_checkpoint
from mflux_core.weights.component_folder import component_config, component_weights


def load_weights_strict(model: nn.Module, weights: dict[str, mx.array], what: str) -> None:
    """Load weights into `model`; a missing, unexpected or wrong-shaped tensor is an error naming it."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise ModelLoadError(f"{what}: the checkpoint does not fit this model: {'; '.join(parts)}.")
    for name, value in weights.items():
        if value.shape != expected[name].shape:
            raise ModelLoadError(
                f"{what}: tensor {name} has shape {tuple(value.shape)}, expected {tuple(expected[name].shape)}."
            )
    model.load_weights(list(weights.items()), strict=True)


def cast_floats(weights: dict[str, mx.array], dtype: mx.Dtype) -> dict[str, mx.array]:
    """The floating weights in `dtype`; an FP8 layer's scale stays float32 (weights/float8.py)."""
    return {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) and not k.endswith(FP8_SCALE) else v
            for k, v in weights.items()}


def load_component(
    folder: Path,
    build: Callable[[dict], nn.Module],
    sanitize: Callable[[dict[str, mx.array]], dict[str, mx.array]],
    dtype: mx.Dtype = mx.float32,
    evaluated: bool = True,
    part: str | None = None,
    bits: int | None = None,
    fp8_scales: bool = False,
) -> nn.Module:
    """config.json -> build(config) -> sanitize(checkpoint weights) -> strict load, cast to dtype. Not `evaluated`,
    each weight is read from the file when first used (MLX loads lazily: a merge reads one tensor at a time). `part`:
    which component of an all-in-one checkpoint `folder` is (weights/split_files.py); `bits`: what bitsandbytes layers
    (a diffusers or transformers bnb folder) become (weights/bnb_layers.py); `fp8_scales`: a scaled FP8 file's layers
    are held in FP8 (weights/float8.py)."""
    folder = Path(folder)
    if not folder.exists():
        raise ModelLoadError(f"Missing model component folder {folder}.")
    config = component_config(folder, part)
    model = build(config)
    weights = component_weights(folder, part, fp8_scales)
    if bnb_layers.has_bnb_layers(weights):
        weights = bnb_layers.requantized(weights, bits, dtype)
    weights = float8_like_checkpoint(model, cast_floats(sanitize(weights), dtype), dtype)
    quantize_like_checkpoint(model, weights)  # a model saved quantized (weights/save.py), a GGUF T5, mflux's save
    load_weights_strict(model, weights, str(folder))
    if evaluated:
        mx.eval(model.parameters())
    return model
