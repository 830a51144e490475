"""`--stepwise-image-output-dir`: the decoded image after every step, to watch a generation unfold."""

from pathlib import Path

import mlx.core as mx
import numpy as np

from mflux_core.flux_model import FluxModel
from mflux_core.images.io import pixels_to_pil
from mflux_core.sampling.latents import unpack_latents


class StepwiseWriter:
    def __init__(self, model: FluxModel, folder: Path, seed: int):
        self.model = model
        self.folder = folder
        self.seed = seed
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, step: int, total: int, latents: mx.array, grid: tuple[int, int]) -> None:
        pixels = self.model.vae.decode(unpack_latents(latents, *grid).astype(self.model.vae_dtype))
        image = pixels_to_pil(np.array(pixels.astype(mx.float32)))
        image.save(self.folder / f"seed_{self.seed}_step_{step}of{total}.png")
