"""Outpainting: parse how far to extend an image, build the larger canvas and its mask."""

import re
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFilter

from mflux_core.errors import InvalidRequest
from mflux_core.request import check_image_size

MAX_PADDING_PX = 4096
OVERLAP_PX = 8

_PADDING_VALUE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)\s*(px|%)?$", re.IGNORECASE)


class Padding(NamedTuple):
    """Pixels to add on each side, in CSS order."""

    top: int
    right: int
    bottom: int
    left: int


def _parse_side(value: str, reference: int) -> int:
    match = _PADDING_VALUE.match(value)
    if match is None:
        if value.startswith("-"):
            raise InvalidRequest(f"The outpaint padding value '{value}' is negative; use 0 or more.")
        raise InvalidRequest(
            f"The outpaint padding value '{value}' is not a number of pixels (64 or 64px) or a percentage (25%)."
        )
    number, unit = float(match.group(1)), (match.group(2) or "px").lower()
    pixels = round(number * reference / 100.0) if unit == "%" else round(number)
    if pixels > MAX_PADDING_PX:
        raise InvalidRequest(
            f"The outpaint padding value '{value}' is {pixels} pixels; the limit is {MAX_PADDING_PX} per side."
        )
    return pixels


def parse_padding(text: str, width: int, height: int) -> Padding:
    """Parse CSS-style padding: "64", "32,64" (vertical, horizontal), "0,30%,20%,0" (top, right, bottom, left).

    Each value is pixels (optionally "px") or a percentage of the image's height (top, bottom) or
    width (left, right). Three values mean top, horizontal, bottom, as in CSS.
    """
    values = [part.strip() for part in str(text).split(",")]
    if not any(values):
        raise InvalidRequest("The outpaint padding is empty: give pixels or percentages such as 64 or 0,25%,0,25%.")
    if len(values) > 4:
        raise InvalidRequest(f"The outpaint padding '{text}' has {len(values)} values; give 1, 2, 3 or 4.")
    if len(values) == 1:
        values = values * 4
    elif len(values) == 2:
        values = values * 2
    elif len(values) == 3:
        values = [values[0], values[1], values[2], values[1]]
    top, right, bottom, left = values
    return Padding(
        top=_parse_side(top, height),
        right=_parse_side(right, width),
        bottom=_parse_side(bottom, height),
        left=_parse_side(left, width),
    )


def _split_extra(extra: int, before: int, after: int) -> tuple[int, int]:
    """Share `extra` pixels between two sides: only the padded ones, or both when neither is."""
    if before > 0 and after == 0:
        return before + extra, after
    if after > 0 and before == 0:
        return before, after + extra
    return before + extra // 2, after + extra - extra // 2


def fit_padding_to_multiple(size: tuple[int, int], padding: Padding, multiple: int) -> Padding:
    """Grow `padding` so that the padded width and height are multiples of `multiple`."""
    width, height = size
    extra_x = -(padding.left + width + padding.right) % multiple
    extra_y = -(padding.top + height + padding.bottom) % multiple
    left, right = _split_extra(extra_x, padding.left, padding.right)
    top, bottom = _split_extra(extra_y, padding.top, padding.bottom)
    return Padding(top=top, right=right, bottom=bottom, left=left)


def outpaint_canvas(
    image: Image.Image, padding: Padding, multiple: int = 16, overlap: int = OVERLAP_PX
) -> tuple[Image.Image, Image.Image]:
    """The image on a larger canvas plus its mask ('L', white = generate).

    The canvas is padded as asked and then to a multiple of `multiple` (see fit_padding_to_multiple).
    The new area holds the edge pixels stretched outwards and blurred, so the model starts from
    plausible colours rather than black. The mask covers the new area and `overlap` pixels of
    the original along each extended side, so the seam is regenerated too.
    """
    image = image.convert("RGB")
    width, height = image.size
    top, right, bottom, left = fit_padding_to_multiple(image.size, padding, multiple)
    check_image_size(left + width + right, top + height + bottom, "The outpaint canvas")
    pixels = np.asarray(image)
    stretched = np.pad(pixels, ((top, bottom), (left, right), (0, 0)), mode="edge")
    blur_radius = max(4.0, max(top, right, bottom, left) / 4.0)
    canvas = Image.fromarray(stretched, "RGB").filter(ImageFilter.GaussianBlur(blur_radius))
    canvas.paste(image, (left, top))

    band_x = min(overlap, width // 4)
    band_y = min(overlap, height // 4)
    keep = np.zeros(canvas.size[::-1], dtype=bool)
    keep[
        top + (band_y if top else 0) : top + height - (band_y if bottom else 0),
        left + (band_x if left else 0) : left + width - (band_x if right else 0),
    ] = True
    mask = Image.fromarray(np.where(keep, 0, 255).astype(np.uint8), "L")
    return canvas, mask
