"""A1111's inpaint area "Only masked": the masked area and some context around it is cut out, inpainted at the
processing size (more pixels for a small area, fewer for a large one), and pasted back into the image at its own
size. A small fix in a large photo then costs one model-sized run, not a run at the photo's size.

The box follows A1111's masking.get_crop_region / expand_crop_region (diffusers' VaeImageProcessor.get_crop_region
is the same): the mask's bounding box grown by the padding, then widened (or made taller) about its centre to the
processing size's aspect, moved back inside the image.
"""

import math
from typing import NamedTuple

import numpy as np
from PIL import Image

from mflux_core.images.masks import feathered_paste
from mflux_core.request import snap_to_16

class Box(NamedTuple):
    """Pixel columns left..right-1 and rows top..bottom-1 (PIL's crop box)."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


def feather_px(width: int, height: int) -> int:
    """How far the pasted area is blended into the original: a 64th of the shorter side, 4 px at least."""
    return max(4, min(width, height) // 64)


def masked_area(mask: np.ndarray, padding: int) -> tuple[Box, int]:
    """The box around the mask's True pixels (the mask must have one) grown by `padding`, or by the feather the
    paste blends over where that is more (so the blend never reaches past the box), and that feather."""
    feather = feather_px(*padded_mask_box(mask, 0).size)
    return padded_mask_box(mask, max(padding, feather)), feather


def padded_mask_box(mask: np.ndarray, padding: int) -> Box:
    """The bounding box of the mask's True pixels grown by `padding`, within the image."""
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    height, width = mask.shape
    return Box(max(0, int(columns[0]) - padding), max(0, int(rows[0]) - padding),
               min(width, int(columns[-1]) + 1 + padding), min(height, int(rows[-1]) + 1 + padding))


def _widened(low: int, high: int, wanted: float, limit: int) -> tuple[int, int]:
    """[low, high) grown about its centre to `wanted` (truncated), shifted back inside [0, limit), cut at limit."""
    grow = int(wanted - (high - low))
    low, high = low - grow // 2, high + grow - grow // 2
    if high > limit:
        low, high = low - (high - limit), limit
    if low < 0:
        low, high = 0, high - low
    return low, min(high, limit)


def box_at_aspect(box: Box, width: int, height: int, image_size: tuple[int, int]) -> Box:
    """`box` grown along one axis to the aspect of width x height (as A1111's expand_crop_region), inside the image;
    where the image is too small for that aspect the box keeps the image's extent along that axis."""
    box_width, box_height = box.size
    if box_width / box_height > width / height:
        top, bottom = _widened(box.top, box.bottom, box_width * height / width, image_size[1])
        return Box(box.left, top, box.right, bottom)
    left, right = _widened(box.left, box.right, box_height * width / height, image_size[0])
    return Box(left, box.top, right, box.bottom)


def processing_size(box: Box, native_side: int) -> tuple[int, int]:
    """The box's shape at the model's native area (native_side squared: FLUX.1's 1024x1024), sides snapped to 16."""
    box_width, box_height = box.size
    scale = native_side / math.sqrt(box_width * box_height)
    return snap_to_16(round(box_width * scale)), snap_to_16(round(box_height * scale))


def pasted_back(original: Image.Image, generated: Image.Image, box: Box, mask: np.ndarray, feather: int,
                blurred: np.ndarray | None = None) -> Image.Image:
    """`generated` (the box's content at the processing size) scaled to the box and blended into `original` inside
    the mask, feathered outward over `feather` pixels (and as far as the blurred mask reaches, which the box holds);
    every pixel past that is the original's."""
    region = generated.resize(box.size, Image.Resampling.LANCZOS)
    inside = np.s_[box.top:box.bottom, box.left:box.right]
    blended = feathered_paste(original.crop(box), region, mask[inside], feather,
                              None if blurred is None else blurred[inside])
    result = original.convert("RGB")
    result.paste(blended, box[:2])
    return result
