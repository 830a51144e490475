"""The FLUX.1 ControlNet (diffusers' FluxControlNetModel, InstantX layout) in MLX.

A shortened transformer (the same FluxTrunk: embedders and the first few double- and single-stream
blocks), run on the noisy latents plus the control image's latents (through `controlnet_x_embedder`).
After each block a zero-initialised linear turns the image tokens into a residual that the main
transformer adds to its own image tokens (`ControlNetResiduals` in transformer.py). The published
Canny (InstantX) and Upscaler (jasperai) checkpoints are folders with one config.json and one
safetensors file whose keys match the module names here.

A Union ControlNet (InstantX's and Shakker-Labs' FLUX.1-dev-ControlNet-Union(-Pro); config `num_mode`) is one network
for several kinds of control image: an embedding of the kind (`controlnet_mode_embedder`) is put before the text
tokens, at the first text token's position.
"""

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.transformer import FluxTransformerConfig, FluxTrunk
from mflux_core.weights.loading import load_component
from mflux_core.weights.safetensors_io import read_json

CLASS_NAME = "FluxControlNetModel"


def read_controlnet_config(config_json: dict) -> FluxTransformerConfig:
    """Read a diffusers ControlNet config.json: the transformer's keys and defaults (its out_channels
    go unused), after refusing the variants this module does not implement."""
    if config_json.get("conditioning_embedding_channels") is not None:
        raise ModelLoadError(
            "ControlNets with a pixel-space input hint block (conditioning_embedding_channels) are not supported."
        )
    return FluxTransformerConfig.from_dict(config_json)


def union_mode_count(config_json: dict) -> int | None:
    """A Union ControlNet's number of control modes (config `num_mode`); None for a single-purpose ControlNet."""
    count = config_json.get("num_mode")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ModelLoadError(f"The ControlNet's config.json has num_mode {count!r}; a Union ControlNet needs a whole "
                             "number of control modes.")
    return count


class ResidualSamples:
    """The BlockTap that takes the ControlNet's samples: after each block, its zero-initialised
    projection of the image tokens, times the conditioning scale."""

    def __init__(self, controlnet: "FluxControlNet", scale: float):
        self.controlnet = controlnet
        self.scale = scale
        self.block_samples: list[mx.array] = []
        self.single_block_samples: list[mx.array] = []

    def after_double(self, block_index: int, image: mx.array) -> mx.array:
        self.block_samples.append(self.controlnet.controlnet_blocks[block_index](image) * self.scale)
        return image

    def after_single(self, block_index: int, x: mx.array, text_tokens: int) -> mx.array:
        project = self.controlnet.controlnet_single_blocks[block_index]
        self.single_block_samples.append(project(x[:, text_tokens:]) * self.scale)
        return x


class FluxControlNet(FluxTrunk):
    def __init__(self, config: FluxTransformerConfig, num_modes: int | None = None):
        super().__init__(config)
        dim = config.hidden_size
        self.num_modes = num_modes  # a Union ControlNet's count of control modes; None for a single-purpose one
        if num_modes is not None:
            self.controlnet_mode_embedder = nn.Embedding(num_modes, dim)
        self.controlnet_x_embedder = nn.Linear(config.in_channels, dim)
        self.controlnet_blocks = [nn.Linear(dim, dim) for _ in range(config.num_layers)]
        self.controlnet_single_blocks = [nn.Linear(dim, dim) for _ in range(config.num_single_layers)]

    @property
    def is_union(self) -> bool:
        return self.num_modes is not None

    def rope_tables(self, img_ids, txt_ids) -> tuple[mx.array, mx.array]:
        """A Union ControlNet's sequence has its mode token first, at the first text token's position."""
        if self.is_union:
            txt_ids = np.concatenate([np.asarray(txt_ids)[:1], np.asarray(txt_ids)])
        return super().rope_tables(img_ids, txt_ids)

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
        mode: int | None = None,
    ) -> tuple[list[mx.array], list[mx.array]]:
        """Packed latents and packed control latents (B, N, in_channels) -> the residuals for the transformer.

        Returns (one (B, N, dim) sample per double block, one per single block), already multiplied
        by `conditioning_scale`. timestep, guidance and the ids mean what they mean for FluxTransformer;
        `rope` must come from this ControlNet's `rope_tables`. `mode`: a Union ControlNet's control mode.
        """
        if self.is_union != (mode is not None):
            raise ValueError("A Union ControlNet needs a control mode, and only a Union ControlNet takes one.")
        if rope is None:
            rope = self.rope_tables(img_ids, txt_ids)
        image, text, temb = self.embed(hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance)
        if self.is_union:
            mode_token = self.controlnet_mode_embedder(mx.full((text.shape[0], 1), mode, dtype=mx.int32))
            text = mx.concatenate([mode_token.astype(text.dtype), text], axis=1)
        samples = ResidualSamples(self, conditioning_scale)
        self.run_blocks(image + self.controlnet_x_embedder(controlnet_cond), text, temb, rope, samples)
        return samples.block_samples, samples.single_block_samples


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
        folder, build=lambda cfg: FluxControlNet(read_controlnet_config(cfg), union_mode_count(cfg)), sanitize=sanitize,
        dtype=dtype
    )
