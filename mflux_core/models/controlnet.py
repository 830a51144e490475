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

XLabs' ControlNets in diffusers' layout (XLabs-AI/flux-controlnet-*-diffusers; config
`conditioning_embedding_channels`) or in XLabs' own single files read the control image in pixels: a small conv
net (`input_hint_block`) brings it to an eighth of its size, packed patch x patch into tokens like the latents';
and the main transformer adds sample i % n after its double block i instead of spreading the samples over the
blocks. Single files without a config.json (either layout): weights/controlnet_files.py.
"""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.transformer import FluxTransformerConfig, FluxTrunk
from mflux_core.models.vae import BAND_BYTES, Rows, conv_in_bands, inference, settle
from mflux_core.weights.flux_config import FLUX1_AXES_DIMS_ROPE
from mflux_core.weights.loading import cast_floats, load_component, load_weights_strict
from mflux_core.weights.safetensors_io import load_safetensors, read_json
from mflux_core.weights.controlnet_files import controlnet_from_file, is_controlnet_file

CLASS_NAME = "FluxControlNetModel"
HINT_WIDTHS = (16, 16, 16, 16)  # the input hint block's conv widths, as diffusers builds it for FLUX
HINT_SCALE = 2 ** (len(HINT_WIDTHS) - 1)  # pixels a side of one hint feature (its stride-2 convolutions)


@dataclass(frozen=True)
class HintConfig:
    """An XLabs ControlNet's pixel input: `channels` feature maps from the hint block, packed `patch` x `patch`."""

    channels: int
    patch: int


def read_hint_config(config_json: dict) -> HintConfig | None:
    """An XLabs ControlNet's hint block (config `conditioning_embedding_channels`); None for the others."""
    channels = config_json.get("conditioning_embedding_channels")
    if channels is None:
        return None
    patch = config_json.get("patch_size", 1)
    in_channels = config_json.get("in_channels", 64)
    if not all(isinstance(n, int) and n > 0 for n in (channels, patch)) or channels * patch * patch != in_channels:
        raise ModelLoadError(f"The ControlNet's input hint block gives {channels!r} channels in patches of {patch!r}, "
                             f"which does not make its {in_channels!r} input channels.")
    return HintConfig(channels, patch)


def read_controlnet_config(config_json: dict) -> FluxTransformerConfig:
    """Read a diffusers ControlNet config.json: the transformer's keys and defaults (its out_channels
    go unused; an XLabs ControlNet's patch_size is its hint block's, see HintConfig)."""
    if config_json.get("conditioning_embedding_channels") is not None:
        config_json = {key: value for key, value in config_json.items() if key != "patch_size"}
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


class InputHintBlock(nn.Module):
    """diffusers' ControlNetConditioningEmbedding as FLUX's XLabs ControlNets have it: pixels (B, H, W, 3) in [-1, 1]
    -> (B, H/8, W/8, channels), through SiLU-activated 3x3 convolutions, three of them of stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, HINT_WIDTHS[0], 3, padding=1)
        self.blocks = []
        for width, next_width in zip(HINT_WIDTHS, HINT_WIDTHS[1:]):
            self.blocks += [nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, next_width, 3, padding=1, stride=2)]
        self.conv_out = nn.Conv2d(HINT_WIDTHS[-1], channels, 3, padding=1)

    def __call__(self, pixels: mx.array) -> mx.array:
        """A band of rows at a time, each layer finished before the next, as the VAE runs (MLX's CPU conv2d over the
        whole image took 1.4 KB a pixel: 5.5 GB at 2048 x 2048)."""
        with inference():
            x = settle(nn.silu(conv_in_bands(self.conv_in, Rows.of(pixels))))
            for conv in self.blocks:
                x = settle(nn.silu(conv_in_bands(conv, Rows.of(x))))
            return conv_in_bands(self.conv_out, Rows.of(x))


class FluxControlNet(FluxTrunk):
    def __init__(self, config: FluxTransformerConfig, num_modes: int | None = None, hint: HintConfig | None = None):
        super().__init__(config)
        dim = config.hidden_size
        self.num_modes = num_modes  # a Union ControlNet's count of control modes; None for a single-purpose one
        if num_modes is not None:
            self.controlnet_mode_embedder = nn.Embedding(num_modes, dim)
        self.hint = hint
        if hint is not None:
            self.input_hint_block = InputHintBlock(hint.channels)
        self.controlnet_x_embedder = nn.Linear(config.in_channels, dim)
        self.controlnet_blocks = [nn.Linear(dim, dim) for _ in range(config.num_layers)]
        self.controlnet_single_blocks = [nn.Linear(dim, dim) for _ in range(config.num_single_layers)]

    @property
    def is_union(self) -> bool:
        return self.num_modes is not None

    @property
    def takes_pixels(self) -> bool:
        """An XLabs ControlNet: its control tokens come from the image's pixels (`hint_tokens`), not the VAE, and its
        samples repeat over the main blocks (diffusers' controlnet_blocks_repeat)."""
        return self.hint is not None

    def hint_peak_bytes(self, width: int, height: int) -> int:
        """Peak bytes of `hint_tokens` for an image (above it and the weights): two full-size feature maps (a
        layer's input and output) and one band's unfolded input; measured 179 / 533 MB at 1024 / 2048 px, float32,
        against 198 / 601 planned."""
        return 2 * HINT_WIDTHS[0] * width * height * self.dtype.size + BAND_BYTES

    def hint_tokens(self, pixels: mx.array) -> mx.array:
        """An XLabs ControlNet's control tokens (B, N, in_channels) from pixels (B, H, W, 3) in [-1, 1], packed as
        diffusers packs them: channel-major within each patch."""
        x = self.input_hint_block(pixels.astype(self.dtype))
        batch, height, width, channels = x.shape
        patch = self.hint.patch
        x = x.reshape(batch, height // patch, patch, width // patch, patch, channels)
        return x.transpose(0, 1, 3, 5, 2, 4).reshape(batch, (height // patch) * (width // patch), -1)

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
    """diffusers' ControlNet keys already match the module names one to one; the hint block's conv weights go
    OIHW -> OHWI."""
    return {name: value.transpose(0, 2, 3, 1) if value.ndim == 4 else value for name, value in weights.items()}


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


def load_controlnet(path: Path, dtype: mx.Dtype = mx.float32, axes_dims_rope: tuple[int, ...] = FLUX1_AXES_DIMS_ROPE,
                    evaluated: bool = True) -> FluxControlNet:
    """Load a diffusers FLUX ControlNet folder (config.json + safetensors), e.g. InstantX's Canny, or a single file
    as ComfyUI users keep one (weights/controlnet_files.py), whose RoPE axes are the base model's `axes_dims_rope`.
    Not `evaluated`, each weight is read from the file when first used (weights/float8_loading.py)."""
    path = Path(path)
    if path.is_file():
        return load_controlnet_file(path, dtype, axes_dims_rope, evaluated)
    if not path.is_dir():
        raise ModelLoadError(f"The ControlNet {path} is not a folder or a .safetensors file.")
    check_is_controlnet(path)
    return load_component(path, build=built_controlnet, sanitize=sanitize, dtype=dtype, evaluated=evaluated)


def built_controlnet(config: dict) -> FluxControlNet:
    return FluxControlNet(read_controlnet_config(config), union_mode_count(config), read_hint_config(config))


def load_controlnet_file(path: Path, dtype: mx.Dtype, axes_dims_rope: tuple[int, ...],
                         evaluated: bool = True) -> FluxControlNet:
    if path.suffix != ".safetensors":
        raise ModelLoadError(f"The ControlNet {path} is not a folder or a .safetensors file.")
    weights = load_safetensors(path)
    if not is_controlnet_file(weights):
        raise ModelLoadError(f"{path} is not a FLUX ControlNet: its tensors are neither diffusers' "
                             "FluxControlNetModel's (controlnet_x_embedder, controlnet_blocks) nor XLabs' "
                             "(pos_embed_input, input_hint_block, controlnet_blocks).")
    config, weights = controlnet_from_file(weights, axes_dims_rope)
    model = built_controlnet(config)
    load_weights_strict(model, cast_floats(sanitize(weights), dtype), str(path))
    if evaluated:
        mx.eval(model.parameters())
    return model
