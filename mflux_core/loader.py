"""Load the parts of a FLUX.1 model from a resolved source. The manager caches what these return."""

from functools import partial

import mlx.core as mx

from mflux_core.flux_model import FluxModel
from mflux_core.models.text_encoders import TEXT_COMPONENTS, TextEncoders
from mflux_core.models.transformer import FluxTransformer, load_transformer
from mflux_core.models.vae import AutoencoderKL, load_vae
from mflux_core.native_sizes import read_native_sizes
from mflux_core.weights.bfl import load_bfl_transformer
from mflux_core.weights.flux_config import scheduler_config
from mflux_core.weights.mflux_saved import is_mflux_folder, model_scheduler_config
from mflux_core.weights.float8_loading import load_held_in_fp8
from mflux_core.weights.quantize import quantize_model
from mflux_core.weights.resolve import ModelSource, single_file_has_guidance
from mflux_core.weights.safetensors_io import read_json


def load_running_transformer(source: ModelSource, dtype: mx.Dtype, bits: int | None = None) -> FluxTransformer:
    """The source's transformer as the tools run it: its FP8 layers held in FP8 (weights/float8.py), quantized to
    `bits`."""
    load = partial(load_source_transformer, source, dtype, bits=bits, fp8_scales=True)
    return quantize_model(load_held_in_fp8(load, source.transformer_file or source.folder / "transformer",
                                           "transformer"), bits)


def load_source_transformer(source: ModelSource, dtype: mx.Dtype, evaluated: bool = True,
                            bits: int | None = None, fp8_scales: bool = False) -> FluxTransformer:
    """The source's transformer; not `evaluated`, each weight is read from disk when first used. `bits`: what
    bitsandbytes layers become (weights/bnb_layers.py); the caller quantizes the rest. `fp8_scales`: a scaled FP8
    file's layers are held in FP8 (weights/float8.py)."""
    if source.transformer_file is not None:
        return load_bfl_transformer(source.transformer_file, dtype, base_rope_axes(source), evaluated=evaluated,
                                    bits=bits, fp8_scales=fp8_scales)
    return load_transformer(source.folder / "transformer", dtype, evaluated=evaluated, bits=bits,
                            fp8_scales=fp8_scales)


def base_rope_axes(source: ModelSource) -> tuple[int, ...] | None:
    """The position axes a single file's base folder names in transformer/config.json (a BFL file does not say
    its own; without a base, FLUX.1's are assumed)."""
    config = source.base_folder / "transformer" / "config.json" if source.base_folder else None
    axes = read_json(config).get("axes_dims_rope") if config is not None and config.is_file() else None
    return tuple(axes) if axes else None


def load_source_vae(source: ModelSource, dtype: mx.Dtype) -> AutoencoderKL:
    return load_vae(source.component("vae"), dtype)


def load_source_text_encoders(source: ModelSource, dtype: mx.Dtype, bits: int | None = None) -> TextEncoders:
    return TextEncoders.from_paths(*(source.component(name) for name in TEXT_COMPONENTS), dtype, bits)


def load_scheduler_config(source: ModelSource) -> dict:
    roots = [root for root in (source.folder, source.base_folder) if root is not None]
    if not any((root / "scheduler").is_dir() for root in roots):
        for root in filter(is_mflux_folder, roots):
            return model_scheduler_config(root)  # mflux saves no scheduler/
        if source.base_files:  # ComfyUI's separate files: the transformer file's kind tells
            return scheduler_config(single_file_has_guidance(source.transformer_file))
    return read_json(source.component("scheduler") / "scheduler_config.json")


def load_flux_model(source: ModelSource, dtype: mx.Dtype = mx.float32, name: str = "") -> FluxModel:
    return FluxModel(
        transformer=load_running_transformer(source, dtype),
        vae=load_source_vae(source, dtype),
        text_encoders=load_source_text_encoders(source, dtype),
        scheduler_config=load_scheduler_config(source),
        name=name,
        folder=source.folder,
        native_sizes=read_native_sizes(source.folder),
    )
