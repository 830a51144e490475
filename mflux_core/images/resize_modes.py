"""A1111's three ways to bring an input image to the output size when the sizes differ (its `resize_mode`).

- "just resize" (A1111 0): stretch to the output size; the aspect ratio changes (what diffusers does).
- "crop and resize" (A1111 1, our default): scale to cover the output, then cut the overflow off equally on
  both sides, so nothing is stretched and the centre is kept.
- "resize and fill" (A1111 2): scale to fit inside the output, centred; the bands left over are filled by
  stretching the image's edge rows or columns outward, as A1111 does (no blur).

Masks go through the same function (any Pillow mode), so a mask keeps lining up with its image.
"""

import numpy as np
from PIL import Image, ImageOps

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = "just resize", "crop and resize", "resize and fill"
RESIZE_MODES = (JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL)  # in A1111's order: its resize_mode 0, 1, 2
DEFAULT_RESIZE_MODE = CROP_AND_RESIZE
RESAMPLE = Image.Resampling.LANCZOS


def resize_to(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """`image` at (width, height) by one of RESIZE_MODES; the image itself when it already has that size."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"Unknown resize mode {mode!r}: use one of {', '.join(RESIZE_MODES)}.")
    size = (width, height)
    if image.size == size:
        return image
    if mode == JUST_RESIZE:
        return image.resize(size, RESAMPLE)
    if mode == CROP_AND_RESIZE:
        return ImageOps.fit(image, size, RESAMPLE)
    return _fill_by_edges(ImageOps.contain(image, size, RESAMPLE), width, height)


def _fill_by_edges(fitted: Image.Image, width: int, height: int) -> Image.Image:
    """`fitted` centred on a (width, height) canvas whose spare bands repeat its outermost rows or columns."""
    pixels = np.asarray(fitted)
    top, left = (height - fitted.height) // 2, (width - fitted.width) // 2
    bands = [(top, height - fitted.height - top), (left, width - fitted.width - left)]
    bands += [(0, 0)] * (pixels.ndim - 2)  # colour channels are not padded
    return Image.fromarray(np.pad(pixels, bands, mode="edge"), fitted.mode)


def resize_note(size: tuple[int, int], width: int, height: int, mode: str) -> str | None:
    """What `resize_to` did, in words ("Input 800x600 cropped and resized to 512x512."); None when nothing."""
    if tuple(size) == (width, height):
        return None
    if size[0] * height == size[1] * width:  # the same proportions: every mode only scales
        done = "resized"
    else:
        done = {JUST_RESIZE: "resized (stretched)", CROP_AND_RESIZE: "cropped and resized",
                RESIZE_AND_FILL: "resized and filled"}[mode]
    return f"Input {size[0]}x{size[1]} {done} to {width}x{height}."
