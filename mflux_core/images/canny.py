"""A Canny edge detector in numpy, for the Canny ControlNet's conditioning image."""

import numpy as np
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.images.masks import gaussian_blur
from mflux_core.request import check_finite, check_image_size

# Offsets (dy, dx) of the neighbour along the gradient for each of the four direction sectors:
# horizontal gradient, the 45 degree diagonal, vertical, the 135 degree diagonal.
_SECTOR_STEPS = ((0, 1), (1, 1), (1, 0), (1, -1))
# Half of the eight neighbours, so that each touching pair of pixels is listed once.
_FORWARD_NEIGHBOURS = ((0, 1), (1, -1), (1, 0), (1, 1))


def _sobel(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3x3 Sobel derivatives (d/dx, d/dy) over the first two axes, edges replicated."""
    padded = np.pad(values, ((1, 1), (1, 1)) + ((0, 0),) * (values.ndim - 2), mode="edge")
    smooth_y = padded[:-2] + 2.0 * padded[1:-1] + padded[2:]
    smooth_x = padded[:, :-2] + 2.0 * padded[:, 1:-1] + padded[:, 2:]
    return smooth_y[:, 2:] - smooth_y[:, :-2], smooth_x[2:] - smooth_x[:-2]


def _shifted(values: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """values[y + dy, x + dx], with `fill` where that falls outside."""
    height, width = values.shape
    out = np.full_like(values, fill)
    out[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = values[
        max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)
    ]
    return out


def gradient(image: Image.Image, sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Magnitude and (d/dx, d/dy) of the blurred image; per pixel, the colour channel that changes most.

    Units are OpenCV's (3x3 Sobel on 0-255 values): a sharp black-to-white step measures 1020
    unblurred and about 650 after a blur of sigma 1.
    """
    channels = gaussian_blur(np.asarray(image.convert("RGB"), dtype=np.float32), sigma)
    # On a 1/256 grid the Sobel sums below are exact, so the two pixels either side of a clean edge
    # get exactly equal magnitudes and non-maximum suppression breaks the tie the same way everywhere.
    channels = np.round(channels * 256.0) / 256.0
    dx, dy = _sobel(channels)
    magnitude = np.hypot(dx, dy)
    strongest = np.argmax(magnitude, axis=-1)[..., None]
    return tuple(np.take_along_axis(values, strongest, axis=-1)[..., 0] for values in (magnitude, dx, dy))


def thin_edges(magnitude: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Non-maximum suppression: keep a pixel only where it peaks across the edge (the gradient direction).

    Ties go to the first of two equal neighbours, so an edge between two pixels comes out one pixel wide.
    """
    angle = np.degrees(np.arctan2(dy, dx)) % 180.0
    sector = (np.floor((angle + 22.5) / 45.0).astype(np.int64)) % 4
    keep = np.zeros(magnitude.shape, dtype=bool)
    for index, (step_y, step_x) in enumerate(_SECTOR_STEPS):
        ahead = _shifted(magnitude, step_y, step_x, 0.0)
        behind = _shifted(magnitude, -step_y, -step_x, 0.0)
        keep |= (sector == index) & (magnitude > behind) & (magnitude >= ahead)
    return np.where(keep, magnitude, 0.0)


def _component_labels(count: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Connected component label (its smallest member) of each of `count` nodes joined by edge pairs.

    Hooking plus pointer jumping: each round links every edge to the smaller root and flattens the
    trees; it stops once nothing changes, which takes a few rounds even for long chains.
    """
    parent = np.arange(count)
    while True:
        previous = parent.copy()
        np.minimum.at(parent, parent[first], parent[second])
        np.minimum.at(parent, parent[second], parent[first])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, previous):
            return parent


def hysteresis(thinned: np.ndarray, low: float, high: float) -> np.ndarray:
    """Strong pixels (>= high) and every weak pixel (>= low) connected to one through weak pixels."""
    weak = (thinned >= low) & (thinned > 0)
    height, width = weak.shape
    ys, xs = np.nonzero(weak)
    if ys.size == 0:
        return weak
    node_of = np.full(weak.shape, -1, dtype=np.int64)
    node_of[ys, xs] = np.arange(ys.size)
    first, second = [], []
    for dy, dx in _FORWARD_NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < height) & (nx >= 0) & (nx < width)
        neighbour = np.full(ys.size, -1, dtype=np.int64)
        neighbour[inside] = node_of[ny[inside], nx[inside]]
        linked = neighbour >= 0
        first.append(np.nonzero(linked)[0])
        second.append(neighbour[linked])
    labels = _component_labels(ys.size, np.concatenate(first), np.concatenate(second))
    strong = thinned[ys, xs] >= high
    kept = np.isin(labels, labels[strong])
    edges = np.zeros(weak.shape, dtype=bool)
    edges[ys[kept], xs[kept]] = True
    return edges


def canny_edges(image: Image.Image, low: float = 100, high: float = 200, sigma: float = 1.0) -> Image.Image:
    """White one-pixel edges on black, as a 3-channel RGB image (what the Canny ControlNet expects).

    Gaussian blur (`sigma`), Sobel gradients, non-maximum suppression, then double threshold with
    hysteresis. `low` and `high` are in OpenCV's gradient units (see `gradient`), so the defaults
    100 / 200 behave like cv2.Canny(image, 100, 200), a little less eager on faint edges because
    of the blur (an edge needs a step of about 40 / 80 grey levels at sigma 1).
    """
    low, high = check_finite(low, "The Canny low threshold"), check_finite(high, "The Canny high threshold")
    if low < 0 or high < 0:
        raise InvalidRequest(f"The Canny thresholds must not be negative (low {low}, high {high}).")
    if low > high:
        raise InvalidRequest(f"The Canny low threshold ({low}) must not exceed the high threshold ({high}).")
    check_image_size(*image.size, "The image to find Canny edges in")
    magnitude, dx, dy = gradient(image, sigma)
    edges = hysteresis(thin_edges(magnitude, dx, dy), low, high)
    return Image.fromarray(np.repeat(np.where(edges, 255, 0).astype(np.uint8)[..., None], 3, axis=-1), "RGB")
