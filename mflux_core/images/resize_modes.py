"""A1111's resize modes: how an input image of another size becomes the output's size.

0 "Just resize": stretch to the size. 1 "Crop and resize": scale to cover the size, cut the overflow evenly
from both sides. 2 "Resize and fill": scale to fit inside the size, then fill the bars by stretching the
image's outer rows or columns into them (as A1111 does), so the model sees no hard border.
"""

from PIL import Image

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL = 0, 1, 2
RESIZE_MODES = {JUST_RESIZE: "just resize", CROP_AND_RESIZE: "crop and resize", RESIZE_AND_FILL: "resize and fill"}
RESAMPLE = Image.Resampling.LANCZOS


def resize_to(image: Image.Image, width: int, height: int, mode: int = CROP_AND_RESIZE) -> Image.Image:
    """`image` at width x height by the resize mode (0, 1 or 2 as above); the image itself when already that size."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {sorted(RESIZE_MODES)}")
    if image.size == (width, height):
        return image
    if mode == JUST_RESIZE:
        return image.resize((width, height), RESAMPLE)
    cover = mode == CROP_AND_RESIZE
    scale = (max if cover else min)(width / image.width, height / image.height)
    inner = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    scaled = image.resize(inner, RESAMPLE)
    left, top = (inner[0] - width) // 2, (inner[1] - height) // 2
    if cover:
        return scaled.crop((left, top, left + width, top + height))
    return filled(scaled, -left, -top, width, height)


def filled(inner: Image.Image, left: int, top: int, width: int, height: int) -> Image.Image:
    """`inner` pasted at (left, top) of a width x height canvas; each bar beside it repeats its nearest outer row
    (the bars above and below) or column (the bars left and right)."""
    canvas = Image.new(inner.mode, (width, height))
    w, h = inner.size
    right, bottom = width - left - w, height - top - h
    bars = [((0, 0, w, 1), (w, top), (left, 0)), ((0, h - 1, w, h), (w, bottom), (left, top + h)),
            ((0, 0, 1, h), (left, h), (0, top)), ((w - 1, 0, w, h), (right, h), (left + w, top))]
    for edge, size, corner in bars:
        if min(size) > 0:
            canvas.paste(inner.crop(edge).resize(size, Image.Resampling.NEAREST), corner)
    canvas.paste(inner, (left, top))
    return canvas
