"""Loading a model with its FP8 layers held in FP8 (weights/float8.py). Apart from the layer since it reads the files'
headers with weights/resolve.py, whose imports reach the transformer, which imports the layer."""

from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from mflux_core.weights.float8 import hold_float8
from mflux_core.weights.resolve import stores_fp8
from mflux_core.weights.safetensors_io import weight_files


def load_held_in_fp8(load: Callable[..., nn.Module], path: Path, part: str | None = None) -> nn.Module:
    """The model `load(evaluated=...)` reads from `path` (a component folder or file; of an all-in-one checkpoint,
    its `part`) with its FP8 layers held in FP8, read lazily then; a model whose headers show no FP8 loads as
    always, unscanned. The loader reads first, so what it refuses (a folder that is not the model) it words."""
    model = load(evaluated=False)
    if not stores_fp8(weight_files(path), part):
        mx.eval(model.parameters())
        return model
    return hold_float8(model)
