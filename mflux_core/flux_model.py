"""A loaded FLUX.1 model: the transformer of one variant plus the shared VAE and text encoders."""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mflux_core.lora.layers import input_channels
from mflux_core.memory import vae_tile

from mflux_core.models.text_encoders import TextEncoders
from mflux_core.models.transformer import FluxTransformer
from mflux_core.models.vae import AutoencoderKL


@dataclass
class FluxModel:
    transformer: FluxTransformer
    vae: AutoencoderKL
    text_encoders: TextEncoders
    scheduler_config: dict
    name: str = ""
    folder: Path | None = None
    memory_allowance: int | None = None  # bytes one VAE pass may use above the resident weights; None: no limit
    native_sizes: tuple[tuple[int, int], ...] = ()  # the only (width, height) it can make; (): any (native_sizes.py)

    @property
    def config(self):
        return self.transformer.config

    @property
    def input_channels(self) -> int:
        """Channels per token the transformer takes: its config's, or more while a control LoRA widens it."""
        return input_channels(self.transformer)

    @property
    def has_guidance(self) -> bool:
        return self.transformer.config.guidance_embeds

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def vae_scale_factor(self) -> int:
        return self.vae.scale_factor

    @property
    def token_side(self) -> int:
        """Pixels along a side of one packed 2x2 latent token: sizes are whole tokens (16 px for FLUX.1's VAE)."""
        return 2 * self.vae_scale_factor

    @property
    def native_side(self) -> int:
        return self.vae.config.native_side

    @property
    def dtype(self) -> mx.Dtype:
        return self.transformer.dtype

    @property
    def default_steps(self) -> int:
        """mflux's defaults: 4 for schnell-style (distilled, no guidance embedding), 14 otherwise."""
        return 14 if self.has_guidance else 4

    def vae_tile(self, height: int, width: int, direction: str, forced: int = 0) -> int | None:
        """The tile size in pixels for a VAE pass over a height x width image, or None to run it whole (`forced`:
        the request's forced_vae_tile)."""
        return vae_tile(self.vae.config, height, width, self.vae.dtype.size, direction, self.memory_allowance, forced)
