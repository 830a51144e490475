"""Single-file FLUX ControlNets, as ComfyUI and InvokeAI users keep them (one .safetensors, no config.json), read
into the layout of diffusers' FluxControlNetModel with a config made from the tensors' shapes. The RoPE axes are not
in any file: they are the base model's, which the ControlNet steers (FLUX.1's (16, 56, 56) for its head dim 128).

Two layouts:
- diffusers' names in one file (InstantX's FLUX.1-dev-Controlnet-Canny and -Union, Shakker-Labs' Union-Pro(-2.0),
  jasperai's Upscaler and XLabs' -diffusers repos, saved under their own names, e.g. instantx_flux_canny.safetensors):
  only the config is missing; a Union ControlNet is told by its `controlnet_mode_embedder`, an XLabs one by its
  `input_hint_block`.
- XLabs' own (flux-canny-controlnet-v3.safetensors, -depth-, -hed-: x-flux's ControlNetFlux): a shortened FLUX trunk
  in BFL's names (img_in, txt_in, time_in, vector_in, guidance_in, double_blocks.N: converted as a BFL transformer
  is, weights/bfl.py), `pos_embed_input` (diffusers' controlnet_x_embedder), `controlnet_blocks.N` (the same names)
  and `input_hint_block.0` to `.14`: one Sequential of eight convolutions with a SiLU between each two, so the
  convolutions sit at the even indices (diffusers: conv_in, blocks.0 to blocks.5, conv_out).
"""

import math
import re

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.weights.bfl import bfl_to_diffusers, block_count, required_tensor, trunk_config
from mflux_core.weights.flux_config import shared_config

CLASS_NAME = "FluxControlNetModel"
XLABS_MARKERS = ("pos_embed_input.weight", "input_hint_block.0.weight", "controlnet_blocks.0.weight")
DIFFUSERS_MARKERS = ("controlnet_x_embedder.weight", "controlnet_blocks.0.weight")
XLABS_NAMES = {"pos_embed_input": "controlnet_x_embedder"}  # beside controlnet_blocks.N, named as diffusers does
HINT_CONVS = 8  # conv_in, the six blocks, conv_out
HINT_KEY = re.compile(r"input_hint_block\.(\d+)\.(weight|bias)$")


def is_xlabs_controlnet(keys) -> bool:
    keys = set(keys)
    return all(marker in keys for marker in XLABS_MARKERS)


def is_controlnet_file(keys) -> bool:
    """Whether a safetensors file's tensor names are a ControlNet's, in either layout."""
    keys = set(keys)
    return is_xlabs_controlnet(keys) or all(marker in keys for marker in DIFFUSERS_MARKERS)


def controlnet_from_file(weights: dict[str, mx.array], axes_dims_rope: tuple[int, ...]) -> tuple[dict, dict]:
    """(a diffusers config.json dict, the tensors in diffusers' names) of a single-file ControlNet."""
    if is_xlabs_controlnet(weights):
        return xlabs_config(weights, axes_dims_rope), xlabs_to_diffusers(weights)
    return diffusers_config(weights, axes_dims_rope), weights


def checked_head_dim(head_dim: int, axes_dims_rope: tuple[int, ...]) -> int:
    if sum(axes_dims_rope) != head_dim:
        raise ModelLoadError(f"The ControlNet's attention heads are {head_dim} wide; the model it steers has RoPE "
                             f"axes {tuple(axes_dims_rope)} for heads of {sum(axes_dims_rope)}.")
    return head_dim


def diffusers_config(weights: dict[str, mx.array], axes_dims_rope: tuple[int, ...]) -> dict:
    """The config of a ControlNet whose file has diffusers' names (InstantX's layout)."""
    image_in = required_tensor(weights, "x_embedder.weight")
    layers = (block_count(weights, "transformer_blocks"), block_count(weights, "single_transformer_blocks"))
    norm = "transformer_blocks.0.attn.norm_q.weight" if layers[0] else "single_transformer_blocks.0.attn.norm_q.weight"
    head_dim = checked_head_dim(required_tensor(weights, norm).shape[0], axes_dims_rope)
    modes = weights.get("controlnet_mode_embedder.weight")
    hint = weights.get("input_hint_block.conv_out.weight")  # XLabs' -diffusers files: the pixels' hint block
    hint_config = {} if hint is None else {"conditioning_embedding_channels": hint.shape[0],
                                           "patch_size": math.isqrt(image_in.shape[1] // hint.shape[0])}
    shared = shared_config(image_in.shape, required_tensor(weights, "context_embedder.weight").shape,
                           required_tensor(weights, "time_text_embed.text_embedder.linear_1.weight").shape, head_dim,
                           axes_dims_rope, layers,
                           guidance_embeds="time_text_embed.guidance_embedder.linear_1.weight" in weights)
    return {"_class_name": CLASS_NAME, "patch_size": 1, **shared, "num_mode": None if modes is None else modes.shape[0],
            **hint_config}


def hint_name(index: int) -> str:
    """diffusers' name for XLabs' Sequential layer `index` (a convolution: even, 0 to 14)."""
    if index % 2 or not 0 <= index < 2 * HINT_CONVS:
        raise ModelLoadError(f"The XLabs ControlNet has a tensor at input_hint_block.{index}, where its hint block "
                             "has no convolution.")
    position = index // 2
    return "conv_in" if position == 0 else "conv_out" if position == HINT_CONVS - 1 else f"blocks.{position - 1}"


def xlabs_to_diffusers(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """An XLabs ControlNet file's tensors -> diffusers' FluxControlNetModel names (hint convolutions still OIHW)."""
    converted, trunk = {}, {}
    for key, value in weights.items():
        hint = HINT_KEY.match(key)
        module, param = key.rsplit(".", 1)
        if hint:
            converted[f"input_hint_block.{hint_name(int(hint.group(1)))}.{hint.group(2)}"] = value
        elif module in XLABS_NAMES:
            converted[f"{XLABS_NAMES[module]}.{param}"] = value
        elif key.startswith("controlnet_blocks."):
            converted[key] = value
        else:
            trunk[key] = value
    return {**bfl_to_diffusers(trunk), **converted}


def xlabs_config(weights: dict[str, mx.array], axes_dims_rope: tuple[int, ...]) -> dict:
    """The config of an XLabs ControlNet file, from its tensors' shapes."""
    in_channels = required_tensor(weights, "img_in.weight").shape[1]
    head_dim = required_tensor(weights, "double_blocks.0.img_attn.norm.query_norm.scale").shape[0]
    hint_channels = required_tensor(weights, f"input_hint_block.{2 * HINT_CONVS - 2}.weight").shape[0]
    return {"_class_name": CLASS_NAME, "patch_size": math.isqrt(in_channels // hint_channels),
            "conditioning_embedding_channels": hint_channels,
            **trunk_config(weights, checked_head_dim(head_dim, axes_dims_rope), axes_dims_rope)}
