"""The FLUX.1 ControlNet (diffusers' FluxControlNetModel, InstantX layout) in MLX.

A shortened copy of the transformer: the first few double- and single-stream blocks, run on the
noisy latents plus the control image's latents (through `controlnet_x_embedder`). After each block
a zero-initialised linear turns the image tokens into a residual that the main transformer adds
to its own image tokens (see `controlnet_residual` in transformer.py). The published Canny
(InstantX) and Upscaler (jasperai) checkpoints are folders with one config.json and one
safetensors file whose keys match the module names here.
"""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.rope import rope_tables
from mflux_core.models.transformer import (DoubleStreamBlock, FluxTransformerConfig, SingleStreamBlock,
                                           TimeTextEmbedding)
from mflux_core.weights.loading import load_component
from mflux_core.weights.safetensors_io import read_json

CLASS_NAME = "FluxControlNetModel"


def read_controlnet_config(config_json: dict) -> FluxTransformerConfig:
    """Read a diffusers ControlNet config.json: the transformer's keys and defaults (its out_channels
    go unused), after refusing the variants this module does not implement."""
    if config_json.get("num_mode") is not None:
        raise ModelLoadError("Union ControlNets (several control modes, controlnet_mode_embedder) are not supported.")
    if config_json.get("conditioning_embedding_channels") is not None:
        raise ModelLoadError(
            "ControlNets with a pixel-space input hint block (conditioning_embedding_channels) are not supported."
        )
    return FluxTransformerConfig.from_dict(config_json)


class FluxControlNet(nn.Module):
    def __init__(self, config: FluxTransformerConfig):
        super().__init__()
        self.config = config
        dim, heads, head_dim = config.hidden_size, config.num_attention_heads, config.attention_head_dim
        self.x_embedder = nn.Linear(config.in_channels, dim)
        self.controlnet_x_embedder = nn.Linear(config.in_channels, dim)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.time_text_embed = TimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.transformer_blocks = [DoubleStreamBlock(dim, heads, head_dim) for _ in range(config.num_layers)]
        self.single_transformer_blocks = [
            SingleStreamBlock(dim, heads, head_dim) for _ in range(config.num_single_layers)
        ]
        self.controlnet_blocks = [nn.Linear(dim, dim) for _ in range(config.num_layers)]
        self.controlnet_single_blocks = [nn.Linear(dim, dim) for _ in range(config.num_single_layers)]

    def rope_tables(self, img_ids, txt_ids) -> tuple[mx.array, mx.array]:
        """RoPE tables for [text; image]; compute once per resolution and pass as `rope`."""
        ids = np.concatenate([np.asarray(txt_ids, dtype=np.float64), np.asarray(img_ids, dtype=np.float64)])
        return rope_tables(ids, self.config.axes_dims_rope)

    def __call__(
        self,
        hidden_states: mx.array,
        controlnet_cond: mx.array,
        encoder_hidden_states: mx.array,
        pooled_projections: mx.array,
        timestep: mx.array,
        img_ids: mx.array,
        txt_ids: mx.array,
        guidance: mx.array | None = None,
        conditioning_scale: float = 1.0,
        rope: tuple | None = None,
    ) -> tuple[list[mx.array], list[mx.array]]:
        """Packed latents and packed control latents (B, N, in_channels) -> the residuals for the transformer.

        Returns (one (B, N, dim) sample per double block, one per single block), already multiplied
        by `conditioning_scale`. timestep, guidance and the ids mean what they mean for FluxTransformer.
        """
        if rope is None:
            rope = self.rope_tables(img_ids, txt_ids)
        image = self.x_embedder(hidden_states) + self.controlnet_x_embedder(controlnet_cond)
        text = self.context_embedder(encoder_hidden_states)
        temb = self.time_text_embed(timestep, pooled_projections, guidance)

        block_samples = []
        for block, project in zip(self.transformer_blocks, self.controlnet_blocks):
            text, image = block(image, text, temb, rope)
            block_samples.append(project(image) * conditioning_scale)

        text_tokens = text.shape[1]
        x = mx.concatenate([text, image], axis=1)
        single_block_samples = []
        for block, project in zip(self.single_transformer_blocks, self.controlnet_single_blocks):
            x = block(x, temb, rope)
            single_block_samples.append(project(x[:, text_tokens:]) * conditioning_scale)
        return block_samples, single_block_samples


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """diffusers' ControlNet keys already match the module names one to one."""
    return weights


def check_is_controlnet(folder: Path) -> None:
    """Refuse, in one sentence, a folder that is not a diffusers FLUX ControlNet."""
    if (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder} is a full model folder, not a FLUX ControlNet (config.json + weights).")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} is not a FLUX ControlNet folder: it has no config.json.")
    config = read_json(folder / "config.json")
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name != CLASS_NAME:
        raise ModelLoadError(
            f"{folder} is not a FLUX ControlNet: its config.json describes {class_name or 'an unnamed model'}, "
            f"not a {CLASS_NAME}."
        )


def load_controlnet(folder: Path, dtype: mx.Dtype = mx.float32) -> FluxControlNet:
    """Load a diffusers FLUX ControlNet folder (config.json + safetensors), e.g. InstantX's Canny."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"The ControlNet {folder} is not a folder.")
    check_is_controlnet(folder)
    return load_component(
        folder, build=lambda cfg: FluxControlNet(read_controlnet_config(cfg)), sanitize=sanitize, dtype=dtype
    )
