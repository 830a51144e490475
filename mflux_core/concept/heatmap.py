"""Concept scores -> heatmaps: averaged over the chosen layers and steps, coloured, laid over the image.

With several concepts, each image token's scores are softmaxed over the concepts (per layer and
step, as in the paper), so the maps say which concept a region belongs to and add up to 1 in every
token. A single concept has nothing to compete with: its map is the mean dot product, rescaled to
[0, 1] over the image.
"""

import mlx.core as mx
import numpy as np
from PIL import Image

# A perceptually ordered dark-to-bright ramp (black, purple, red, orange, pale yellow).
COLOUR_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], np.float32)
OVERLAY_OPACITY = 0.55


def concept_maps(scores: list[mx.array], grid: tuple[int, int]) -> np.ndarray:
    """(C, N) scores from each chosen (step, layer) -> (C, h/2, w/2) maps in [0, 1] on the token grid."""
    stacked = mx.stack(scores).astype(mx.float32)  # (entries, C, N)
    if stacked.shape[1] > 1:
        maps = np.array(mx.softmax(stacked, axis=1).mean(axis=0))
    else:
        maps = np.array(stacked.mean(axis=0))
        low, high = maps.min(axis=1, keepdims=True), maps.max(axis=1, keepdims=True)
        maps = (maps - low) / np.maximum(high - low, 1e-12)
    h, w = grid
    return maps.reshape(-1, h // 2, w // 2)


def colourise(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8 along COLOUR_STOPS."""
    positions = np.clip(values, 0, 1) * (len(COLOUR_STOPS) - 1)
    lower = np.minimum(positions.astype(np.int64), len(COLOUR_STOPS) - 2)
    fraction = (positions - lower)[..., None]
    rgb = COLOUR_STOPS[lower] * (1 - fraction) + COLOUR_STOPS[lower + 1] * fraction
    return rgb.round().astype(np.uint8)


def heatmap_image(token_map: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A token-grid map in [0, 1], smoothly resized to the image's (width, height), coloured."""
    resized = Image.fromarray(token_map.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return Image.fromarray(colourise(np.asarray(resized)))


def overlay(image: Image.Image, heatmap: Image.Image, opacity: float = OVERLAY_OPACITY) -> Image.Image:
    return Image.blend(image.convert("RGB").resize(heatmap.size), heatmap, opacity)
