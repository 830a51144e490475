"""A model component's folder read as config + tensors: diffusers' and transformers' own (config.json and
safetensors), or one mflux saved (weights/mflux_saved.py), which has no config.json."""

from pathlib import Path

import mlx.core as mx

from mflux_core.weights import mflux_saved
from mflux_core.weights.safetensors_io import load_folder_weights, read_json


def component_config(folder: Path) -> dict:
    folder = Path(folder)
    return mflux_saved.component_config(folder) if mflux_saved.is_mflux_component(folder) \
        else read_json(folder / "config.json")


def component_weights(folder: Path) -> dict[str, mx.array]:
    """The tensors under the published checkpoints' names (what each model's `sanitize` reads)."""
    return mflux_saved.component_weights(folder) if mflux_saved.is_mflux_component(folder) \
        else load_folder_weights(folder)
