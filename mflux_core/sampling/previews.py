"""Cheap live previews: latents -> RGB by a linear map fitted to the VAE, no decoder pass.

The map (C latent channels -> RGB, with bias) is fitted once per VAE by least squares on the
latents of a few synthetic colour images (solid colours and gradients), so it works for any
latent width, tiny test VAEs included.
"""

import mlx.core as mx
import numpy as np
from PIL import Image

from mflux_core.sampling.latents import unpack_latents

PROBE_SIZE = 64


def _probe_images(size: int) -> np.ndarray:
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    colours = [(-1, -1, -1), (1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1), (0, 0, 0), (-1, 1, 1)]
    images = [np.broadcast_to(np.array(c, np.float32), (size, size, 3)) for c in colours]
    images.append(np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), -ramp[None, :].repeat(size, 0)], -1))
    images.append(np.stack([-ramp[:, None].repeat(size, 1), ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1)], -1))
    return np.stack(images)


def fit_latent_to_rgb(vae) -> np.ndarray:
    """(C + 1, 3) least-squares map from latent channels (plus bias) to RGB in [-1, 1]."""
    scale = vae.scale_factor
    size = max(PROBE_SIZE, 4 * scale)
    pixels = _probe_images(size)
    latents = np.array(vae.encode(mx.array(pixels)).astype(mx.float32))  # (B, C, h, w)
    b, c, h, w = latents.shape
    targets = pixels.reshape(b, h, scale, w, scale, 3).mean(axis=(2, 4)).reshape(-1, 3)
    features = latents.transpose(0, 2, 3, 1).reshape(-1, c)
    features = np.concatenate([features, np.ones((features.shape[0], 1), np.float32)], axis=1)
    weights, *_ = np.linalg.lstsq(features, targets, rcond=None)
    return weights.astype(np.float32)


class LatentPreviewer:
    def __init__(self, vae):
        self.vae = vae
        self._weights: np.ndarray | None = None

    def __call__(self, packed_latents: mx.array, grid: tuple[int, int]) -> Image.Image:
        if self._weights is None:
            self._weights = fit_latent_to_rgb(self.vae)
        latents = np.array(unpack_latents(packed_latents, *grid)[0].astype(mx.float32))  # (C, h, w)
        rgb = np.einsum("chw,cd->hwd", latents, self._weights[:-1]) + self._weights[-1]
        image = Image.fromarray(np.clip((rgb + 1) * 127.5, 0, 255).round().astype(np.uint8))
        h, w = grid
        return image.resize((w * self.vae.scale_factor, h * self.vae.scale_factor), Image.Resampling.BILINEAR)
