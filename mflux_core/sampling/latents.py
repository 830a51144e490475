"""Latent geometry: sizes, 2x2 packing into tokens, position ids, and the initial noise."""

from pathlib import Path

import mlx.core as mx
import numpy as np

from mflux_core.errors import InvalidRequest


def latent_grid(height: int, width: int, vae_scale_factor: int) -> tuple[int, int]:
    """Unpacked latent (h, w) for an image size: whole 2x2 tokens, rounded down as diffusers rounds, at least one (a
    side smaller than a token runs at one token's size: native_sizes.whole_tokens_size)."""
    token = vae_scale_factor * 2
    return 2 * max(1, height // token), 2 * max(1, width // token)


def pack_latents(latents: mx.array) -> mx.array:
    """(B, C, h, w) -> (B, h/2 * w/2, C * 4), each token a 2x2 patch, channel-major like diffusers."""
    b, c, h, w = latents.shape
    x = latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(tokens: mx.array, h: int, w: int) -> mx.array:
    """Inverse of pack_latents for a latent grid of (h, w)."""
    b, _, d = tokens.shape
    x = tokens.reshape(b, h // 2, w // 2, d // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5)
    return x.reshape(b, d // 4, h, w)


def image_position_ids(h: int, w: int, first: float = 0.0) -> mx.array:
    """(h/2 * w/2, 3) ids [first, row, col] of the packed image tokens."""
    rows, cols = np.meshgrid(np.arange(h // 2), np.arange(w // 2), indexing="ij")
    ids = np.stack([np.full_like(rows, first), rows, cols], axis=-1).reshape(-1, 3)
    return mx.array(ids.astype(np.float32))


def text_position_ids(length: int) -> mx.array:
    return mx.zeros((length, 3), dtype=mx.float32)


def seeded_noise(seed: int, shape: tuple[int, ...]) -> mx.array:
    """Standard normal float32 noise from MLX's counter-based generator keyed by `seed`.

    Deterministic across runs and platforms for the same seed and shape; it does not (cannot)
    reproduce torch's generator: pass `--init-noise` for image-for-image equality with diffusers.
    """
    return mx.random.normal(shape, dtype=mx.float32, key=mx.random.key(seed))


def slerp(strength: float, start: mx.array, end: mx.array) -> mx.array:
    """The point `strength` of the way from `start` to `end` along the great circle between them (A1111's blend of
    a seed's noise with its variation seed's; two gaussian draws are nearly orthogonal, so the result keeps their
    spread where a straight blend would shrink it). Nearly parallel ones are blended straight, as A1111 does."""
    cosine = mx.sum(start * end) / mx.sqrt(mx.sum(start * start) * mx.sum(end * end))
    if cosine.item() > 0.9995:
        return (1 - strength) * start + strength * end
    angle = mx.arccos(cosine)
    return (mx.sin((1 - strength) * angle) * start + mx.sin(strength * angle) * end) / mx.sin(angle)


def load_init_noise(path: Path, shape: tuple[int, ...]) -> mx.array:
    """The unpacked initial noise from a .npy file; it must have exactly `shape` (B, C, h, w)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise InvalidRequest(f"Cannot read the initial noise file {path} ({error}).") from None
    if tuple(array.shape) != tuple(shape):
        raise InvalidRequest(
            f"The initial noise in {path} has shape {tuple(array.shape)}; this model and size need {tuple(shape)}."
        )
    if not np.isfinite(array).all():
        raise InvalidRequest(f"The initial noise in {path} contains NaN or infinite values.")
    return mx.array(array.astype(np.float32))
