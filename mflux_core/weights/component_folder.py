"""A model component read as config + tensors, whatever holds it: a folder as diffusers and transformers write one
(config.json and safetensors), a folder mflux saved (weights/mflux_saved.py), or one file as ComfyUI and Forge keep
the VAE and text encoders, alone or bundled in an all-in-one checkpoint as its `part` (weights/split_files.py); the last
two have no config.json."""

from pathlib import Path

import mlx.core as mx

from mflux_core.weights import mflux_saved, split_files
from mflux_core.weights.safetensors_io import load_folder_weights, read_json


def component_config(path: Path, part: str | None = None) -> dict:
    path = Path(path)
    if path.is_file():
        return split_files.file_config(path, part)
    return mflux_saved.component_config(path) if mflux_saved.is_mflux_component(path) \
        else read_json(path / "config.json")


def component_weights(path: Path, part: str | None = None, fp8_scales: bool = False) -> dict[str, mx.array]:
    """The tensors under the published checkpoints' names (what each model's `sanitize` reads); a scaled FP8 file's
    scales beside their matrices with `fp8_scales` (weights/comfy_fp8.py)."""
    path = Path(path)
    if path.is_file():
        return split_files.file_weights(path, part, fp8_scales)
    return mflux_saved.component_weights(path) if mflux_saved.is_mflux_component(path) \
        else load_folder_weights(path, fp8_scales)
