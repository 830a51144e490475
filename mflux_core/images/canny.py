"""Canny edges for the Canny ControlNet, made the way its training data was: OpenCV's cv2.Canny."""

import cv2
import numpy as np
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.request import check_finite, check_image_size


DEFAULT_LOW, DEFAULT_HIGH = 100, 200  # the thresholds InstantX's and mflux's examples use


def canny_edges(image: Image.Image, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH) -> Image.Image:
    """White one-pixel edges on black, as a 3-channel RGB image (what the Canny ControlNet expects).

    Exactly cv2.Canny(rgb, low, high) stacked to three channels, as InstantX's and mflux's examples
    make it: no blur first, 3x3 Sobel, L1 gradient magnitude (per pixel, of the colour channel that
    changes most), so a sharp black-to-white step measures 1020. A low threshold above the high one is
    swapped with it, as OpenCV does (and so A1111's ControlNet extension, whose sliders allow it).
    """
    low, high = check_finite(low, "The Canny low threshold"), check_finite(high, "The Canny high threshold")
    if low < 0 or high < 0:
        raise InvalidRequest(f"The Canny thresholds must not be negative (low {low}, high {high}).")
    check_image_size(*image.size, "The image to find Canny edges in")
    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)
    return Image.fromarray(cv2.cvtColor(edges, cv2.COLOR_GRAY2RGB), "RGB")
