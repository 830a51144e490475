"""Loss weights that make the demo's small shapes count as much as the big flat backgrounds."""

import numpy as np

from mflux_core.demo import family


def shape_pixels(images: np.ndarray) -> np.ndarray:
    """(B, H, W) bool: pixels that differ from the background (the top-left pixel), and their neighbours."""
    differs = np.abs(images.astype(np.int16) - images[:, :1, :1].astype(np.int16)).max(axis=-1) > 30
    grown = differs.copy()
    grown[:, 1:] |= differs[:, :-1]
    grown[:, :-1] |= differs[:, 1:]
    grown[:, :, 1:] |= differs[:, :, :-1]
    grown[:, :, :-1] |= differs[:, :, 1:]
    return grown


def shape_weights(images: np.ndarray, weight: float = 10.0) -> np.ndarray:
    """(B, H, W, 1) loss weights: `weight` on shape pixels, 1 elsewhere, so small shapes count as much
    as the big background."""
    return np.where(shape_pixels(images), np.float32(weight), np.float32(1.0))[..., None]


def token_weights(*images: np.ndarray, extra: np.ndarray | None = None, weight: float = 10.0) -> np.ndarray:
    """(N, tokens) flow-loss weights: 1 + (weight - 1) x the share of a token's pixels that belong to a
    shape (in any of `images`, or `extra`'s True pixels). Unweighted, the transformers learnt the
    backgrounds and left the small shapes faint and of the wrong colour."""
    salient = np.zeros(images[0].shape[:3], bool) if extra is None else extra.astype(bool)
    for pictures in images:
        salient |= shape_pixels(pictures)
    patch = 2 * family.VAE_SCALE  # the pixels of one packed token
    count, height, width = salient.shape
    share = salient.reshape(count, height // patch, patch, width // patch, patch).mean(axis=(2, 4))
    return (1 + (weight - 1) * share).reshape(count, -1).astype(np.float32)
