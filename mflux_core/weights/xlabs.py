"""XLabs' own single-file FLUX ControlNets (flux-canny-controlnet-v3.safetensors, -depth-, -hed-: what ComfyUI's
x-flux nodes and InvokeAI load) in the layout diffusers' FluxControlNetModel has for XLabs' -diffusers repos.

The file holds a shortened FLUX trunk in BFL's names (img_in, txt_in, time_in, vector_in, guidance_in,
double_blocks.N: converted as a BFL transformer is, weights/bfl.py), `pos_embed_input` (diffusers'
controlnet_x_embedder), `controlnet_blocks.N` (the same names) and `input_hint_block.0` to `.14`: one Sequential of
eight convolutions with a SiLU between each two, so the convolutions sit at the even indices (diffusers: conv_in,
blocks.0 to blocks.5, conv_out). There is no config: the sizes come from the tensors' shapes, and the RoPE axes from
the base model the ControlNet steers (FLUX.1's (16, 56, 56) for its head dim 128).
"""

import math
import re

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.weights.bfl import bfl_to_diffusers, required_tensor, trunk_config

OWN_NAMES = {"pos_embed_input": "controlnet_x_embedder"}  # beside controlnet_blocks.N, named as diffusers does
HINT_CONVS = 8  # conv_in, the six blocks, conv_out
HINT_KEY = re.compile(r"input_hint_block\.(\d+)\.(weight|bias)$")
MARKERS = ("pos_embed_input.weight", "input_hint_block.0.weight", "controlnet_blocks.0.weight")


def is_xlabs_controlnet(keys) -> bool:
    keys = set(keys)
    return all(marker in keys for marker in MARKERS) and "controlnet_x_embedder.weight" not in keys


def hint_name(index: int) -> str:
    """diffusers' name for the Sequential's layer `index` (a convolution: even, 0 to 14)."""
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
        module = key.rsplit(".", 1)[0]
        if hint:
            converted[f"input_hint_block.{hint_name(int(hint.group(1)))}.{hint.group(2)}"] = value
        elif module in OWN_NAMES:
            converted[f"{OWN_NAMES[module]}.{key.rsplit('.', 1)[1]}"] = value
        elif key.startswith("controlnet_blocks."):
            converted[key] = value
        else:
            trunk[key] = value
    return {**bfl_to_diffusers(trunk), **converted}


def xlabs_controlnet_config(weights: dict[str, mx.array], axes_dims_rope: tuple[int, ...]) -> dict:
    """A diffusers ControlNet config.json dict read from an XLabs file's tensor shapes."""
    in_channels = required_tensor(weights, "img_in.weight").shape[1]
    head_dim = required_tensor(weights, "double_blocks.0.img_attn.norm.query_norm.scale").shape[0]
    if sum(axes_dims_rope) != head_dim:
        raise ModelLoadError(f"The XLabs ControlNet's attention heads are {head_dim} wide; the model it steers has "
                             f"RoPE axes {tuple(axes_dims_rope)} for heads of {sum(axes_dims_rope)}.")
    hint_channels = required_tensor(weights, f"input_hint_block.{2 * HINT_CONVS - 2}.weight").shape[0]
    return {"_class_name": "FluxControlNetModel", "patch_size": math.isqrt(in_channels // hint_channels),
            "conditioning_embedding_channels": hint_channels, **trunk_config(weights, head_dim, axes_dims_rope)}
