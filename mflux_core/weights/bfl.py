"""BFL single-file FLUX.1 transformer checkpoints (flux1-dev.safetensors, ComfyUI files, and GGUF files in BFL's
names: weights/gguf_file.py).

BFL's names differ from diffusers' and some tensors are fused: a double block's q, k, v are one
`qkv` tensor per stream, a single block's `linear1` holds q, k, v and the MLP input projection,
and the final modulation's halves are (shift, scale) where diffusers' norm_out has (scale, shift).
There is no config.json: the dimensions are read from the tensor shapes. A quantized weight (a GGUF file's affine
types, or a bitsandbytes layer requantized: weights/bnb_layers.py) comes with its `.scales` and `.biases`; all
three are split and renamed alike, since every conversion here cuts or reorders rows, and a row's groups stay whole;
so is a scaled FP8 matrix's scale per row (weights/float8.py).
"""

import re
from pathlib import Path

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig
from mflux_core.weights import bnb_layers
from mflux_core.weights.float8 import float8_like_checkpoint
from mflux_core.weights.flux_config import FLUX1_AXES_DIMS_ROPE, shared_config
from mflux_core.weights.gguf_file import is_gguf, quantized_bits
from mflux_core.weights.gguf_mlx import load_gguf
from mflux_core.weights.loading import cast_floats, load_weights_strict
from mflux_core.weights.quantize import quantize_like_checkpoint
from mflux_core.weights.safetensors_io import load_safetensors

COMFY_PREFIX = "model.diffusion_model."

GLOBAL_NAMES = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
}
DOUBLE_BLOCK_NAMES = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
DOUBLE_BLOCK_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
SINGLE_BLOCK_NAMES = {
    "modulation.lin": "norm.linear",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
    "linear2": "proj_out",
}
SINGLE_BLOCK_FUSED_QKV_MLP = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")

BLOCK_KEY = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.(.+)\.(weight|bias|scale|scales|biases|fp8_scale)$")
GLOBAL_KEY = re.compile(r"(.+)\.(weight|bias|scales|biases|fp8_scale)$")


def strip_comfy_prefix(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Keep the transformer of a ComfyUI file (keys under model.diffusion_model.), without the prefix."""
    if not any(key.startswith(COMFY_PREFIX) for key in weights):
        return weights
    return {key[len(COMFY_PREFIX):]: value for key, value in weights.items() if key.startswith(COMFY_PREFIX)}


def is_bfl_checkpoint(keys) -> bool:
    keys = {key.removeprefix(COMFY_PREFIX) for key in keys}
    return "img_in.weight" in keys and any(key.startswith(("double_blocks.", "single_blocks.")) for key in keys)


def _swap_halves(value: mx.array) -> mx.array:
    first, second = mx.split(value, 2, axis=0)
    return mx.concatenate([second, first], axis=0)


def bfl_to_diffusers(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """BFL (or ComfyUI) transformer weights -> diffusers FluxTransformer2DModel names and layout."""
    weights = strip_comfy_prefix(weights)
    hidden_size = matrix_shape(weights, "img_in.weight")[0]
    converted: dict[str, mx.array] = {}
    for key, value in weights.items():
        block = BLOCK_KEY.match(key)
        if block:
            kind, index, module, param = block.groups()
            param = "weight" if param == "scale" else param
            if kind == "double_blocks":
                prefix, names = f"transformer_blocks.{index}.", DOUBLE_BLOCK_NAMES
                if module in DOUBLE_BLOCK_FUSED:
                    for name, part in zip(DOUBLE_BLOCK_FUSED[module], mx.split(value, 3, axis=0)):
                        converted[f"{prefix}{name}.{param}"] = part
                    continue
            else:
                prefix, names = f"single_transformer_blocks.{index}.", SINGLE_BLOCK_NAMES
                if module == "linear1":  # rows: q, k, v (hidden_size each), then the MLP projection
                    splits = [hidden_size, 2 * hidden_size, 3 * hidden_size]
                    for name, part in zip(SINGLE_BLOCK_FUSED_QKV_MLP, mx.split(value, splits, axis=0)):
                        converted[f"{prefix}{name}.{param}"] = part
                    continue
            if module not in names:
                raise ModelLoadError(f"Unknown tensor {key} in the BFL FLUX.1 checkpoint.")
            converted[f"{prefix}{names[module]}.{param}"] = value
            continue
        name = GLOBAL_KEY.match(key)
        if not name or name.group(1) not in GLOBAL_NAMES:
            raise ModelLoadError(f"Unknown tensor {key} in the BFL FLUX.1 checkpoint.")
        module, param = name.groups()
        if module == "final_layer.adaLN_modulation.1":  # BFL: (shift, scale); diffusers: (scale, shift)
            value = _swap_halves(value)
        converted[f"{GLOBAL_NAMES[module]}.{param}"] = value
    return converted


def required_tensor(weights: dict[str, mx.array], key: str) -> mx.array:
    if key not in weights:
        raise ModelLoadError(f"The single-file checkpoint has no tensor {key}.")
    return weights[key]


def matrix_shape(weights: dict[str, mx.array], key: str) -> tuple[int, int]:
    """A weight's (rows, columns), a quantized one's columns unpacked."""
    weight = required_tensor(weights, key)
    bits = quantized_bits(weights, key.removesuffix(".weight"))
    return (weight.shape[0], weight.shape[1] * 32 // bits) if bits else tuple(weight.shape)


def block_count(weights: dict[str, mx.array], kind: str) -> int:
    indices = {int(key.split(".")[1]) for key in weights if key.startswith(f"{kind}.")}
    if indices != set(range(len(indices))):
        raise ModelLoadError(f"The BFL FLUX.1 checkpoint's {kind} are not numbered 0..{len(indices) - 1}.")
    return len(indices)


def infer_transformer_config(weights: dict[str, mx.array], axes_dims_rope: tuple[int, ...] | None = None) -> dict:
    """A diffusers transformer config.json dict read from the BFL tensors' shapes.

    The RoPE axes are not stored in the file: FLUX.1's (16, 56, 56) is used for head dim 128;
    any other head dim needs `axes_dims_rope` from the caller.
    """
    weights = strip_comfy_prefix(weights)
    in_channels = matrix_shape(weights, "img_in.weight")[1]
    if block_count(weights, "double_blocks"):
        head_dim = required_tensor(weights, "double_blocks.0.img_attn.norm.query_norm.scale").shape[0]
    else:
        head_dim = required_tensor(weights, "single_blocks.0.norm.query_norm.scale").shape[0]
    if axes_dims_rope is None:
        if head_dim != sum(FLUX1_AXES_DIMS_ROPE):
            raise ModelLoadError(
                f"This single-file checkpoint has attention head dim {head_dim}, not FLUX.1's 128: it is not a "
                "FLUX.1 transformer the studio can read from one file (the file does not say its position axes)."
            )
        axes_dims_rope = FLUX1_AXES_DIMS_ROPE
    elif sum(axes_dims_rope) != head_dim:
        raise ModelLoadError(
            f"This single-file checkpoint's attention heads are {head_dim} wide, but the model folder it runs with "
            f"(for its VAE, text encoders and position axes) has heads of {sum(axes_dims_rope)}: the file was made "
            "for another base model; put that model's folder into the models folder.")
    out_channels = matrix_shape(weights, "final_layer.linear.weight")[0]
    return {"patch_size": 1, "out_channels": None if out_channels == in_channels else out_channels,
            **trunk_config(weights, head_dim, axes_dims_rope)}


def trunk_config(weights: dict[str, mx.array], head_dim: int, axes_dims_rope: tuple[int, ...]) -> dict:
    """shared_config from BFL-named tensors (a transformer's or an XLabs ControlNet's)."""
    return shared_config(matrix_shape(weights, "img_in.weight"), matrix_shape(weights, "txt_in.weight"),
                         matrix_shape(weights, "vector_in.in_layer.weight"), head_dim, axes_dims_rope,
                         layers=(block_count(weights, "double_blocks"), block_count(weights, "single_blocks")),
                         guidance_embeds="guidance_in.in_layer.weight" in weights)


def load_bfl_transformer(
    path: Path, dtype: mx.Dtype = mx.float32, axes_dims_rope: tuple[int, ...] | None = None, evaluated: bool = True,
    bits: int | None = None, fp8_scales: bool = False,
) -> FluxTransformer:
    """Build and load a FluxTransformer from one BFL (or ComfyUI, or Forge) .safetensors or .gguf file (not
    `evaluated`: read as used, see load_component). A GGUF file's quantized layers become QuantizedLinear at the
    file's bits; a bitsandbytes file's at `bits` (by default its own: bnb_layers.FILE_BITS); with `fp8_scales`, a
    scaled FP8 file's layers are held in FP8 (weights/float8.py)."""
    weights = strip_comfy_prefix(load_gguf(path) if is_gguf(path) else load_safetensors(path, fp8_scales))
    if bnb_layers.has_bnb_layers(weights):
        weights = bnb_layers.requantized(weights, bits, dtype)
    if not is_bfl_checkpoint(weights):
        raise ModelLoadError(f"{path} is not a BFL FLUX.1 transformer checkpoint.")
    config = FluxTransformerConfig.from_dict(infer_transformer_config(weights, axes_dims_rope))
    model = FluxTransformer(config)
    converted = float8_like_checkpoint(model, cast_floats(bfl_to_diffusers(weights), dtype), dtype)
    quantize_like_checkpoint(model, converted)
    load_weights_strict(model, converted, str(path))
    if evaluated:
        mx.eval(model.parameters())
    return model

