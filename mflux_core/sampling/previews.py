"""Cheap live previews: latents -> RGB by a linear map fitted to the VAE, no decoder pass per step.

The map (C latent channels -> RGB, with bias) is fitted once per VAE by least squares: inputs are
the encoder's latents of one synthetic probe image (solid colours and gradients) plus Gaussian
noise latents (where sampling starts), targets are what the decoder makes of those latents,
averaged over each latent pixel's block. Fitting to the decoder rather than to the probe's pixels
keeps the preview faithful for any VAE: for a trained one the two agree (decode(encode(x)) ~ x),
for a random test VAE only the decoder says what the final image will look like. The fit costs one
encode and five decodes at 64x64 (about 3-4 s for the full-size FLUX VAE on a CPU, once).
"""

import weakref

import mlx.core as mx
import numpy as np
from PIL import Image

from mflux_core.sampling.latents import unpack_latents

PROBE_SIZE = 64
NOISE_PROBES = 4
PROBE_COLOURS = [(-1, -1, -1), (1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1), (1, 1, -1), (0, 0, 0), (-1, 1, 1)]


def probe_image(size: int) -> np.ndarray:
    """(1, size, size, 3) in [-1, 1]: eight solid colour patches above, two colour gradients below."""
    image = np.zeros((size, size, 3), np.float32)
    patch, half = size // 4, size // 2
    for index, colour in enumerate(PROBE_COLOURS):
        row, column = divmod(index, 4)
        image[row * patch:(row + 1) * patch, column * patch:(column + 1) * patch] = colour
    ramp = np.linspace(-1, 1, half, dtype=np.float32)
    across, down = np.meshgrid(ramp, ramp)
    image[half:, :half] = np.stack([across, down, -across], -1)
    image[half:, half:] = np.stack([-down, across, down], -1)
    return image[None]


def fit_latent_to_rgb(vae) -> np.ndarray:
    """(C + 1, 3) least-squares map from latent channels (plus bias) to the decoder's RGB in [-1, 1]."""
    scale = vae.scale_factor
    encoded = vae.encode(mx.array(probe_image(max(PROBE_SIZE, 4 * scale)))).astype(mx.float32)  # (1, C, h, w)
    noise = np.random.default_rng(0).standard_normal((NOISE_PROBES, *encoded.shape[1:])).astype(np.float32)
    latents = mx.concatenate([encoded, mx.array(noise)], axis=0)
    decoded = np.array(vae.decode(latents).astype(mx.float32))  # (B, H, W, 3)
    latents = np.array(latents)
    b, c, h, w = latents.shape
    targets = decoded.reshape(b, h, scale, w, scale, 3).mean(axis=(2, 4)).reshape(-1, 3)
    features = latents.transpose(0, 2, 3, 1).reshape(-1, c)
    features = np.concatenate([features, np.ones((features.shape[0], 1), np.float32)], axis=1)
    weights, *_ = np.linalg.lstsq(features, targets, rcond=None)
    return weights.astype(np.float32)


class LatentPreviewer:
    """Fits its map on first use. Holds the VAE weakly, so an evicted VAE is freed, not kept alive here."""

    def __init__(self, vae):
        self._vae = weakref.ref(vae)
        self.scale_factor = vae.scale_factor
        self._weights: np.ndarray | None = None

    @property
    def vae(self):
        """The VAE this previewer was made for, or None once it is freed."""
        return self._vae()

    def __call__(self, packed_latents: mx.array, grid: tuple[int, int]) -> Image.Image:
        if self._weights is None:
            self._weights = fit_latent_to_rgb(self.vae)
        latents = np.array(unpack_latents(packed_latents, *grid)[0].astype(mx.float32))  # (C, h, w)
        rgb = np.einsum("chw,cd->hwd", latents, self._weights[:-1]) + self._weights[-1]
        image = Image.fromarray(np.clip((rgb + 1) * 127.5, 0, 255).round().astype(np.uint8))
        h, w = grid
        return image.resize((w * self.scale_factor, h * self.scale_factor), Image.Resampling.BILINEAR)
