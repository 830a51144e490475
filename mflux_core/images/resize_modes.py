"""A1111's three ways to bring an input image to the output size when the sizes differ (its `resize_mode`).

- "just resize" (A1111 0): stretch to the output size; the aspect ratio changes (what diffusers does).
- "crop and resize" (A1111 1, our default): scale to cover the output, then cut the overflow off equally on
  both sides, so nothing is stretched and the centre is kept.
- "resize and fill" (A1111 2): scale to fit inside the output, centred; the bands left over are filled by
  stretching the image's edge rows or columns outward, as A1111 does (no blur).

The geometry is A1111's to the pixel (its resize_image): the scaled side rounded down, the image placed at half
the output less half the scaled image, each rounded down, so an A1111 user's inputs line up as they did there.
Masks go through the same function (any Pillow mode), so a mask keeps lining up with its image.
"""

from PIL import Image

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
    cover = mode == CROP_AND_RESIZE
    scaled = image.resize(_scaled_size(image.size, width, height, cover), RESAMPLE)
    left, top = width // 2 - scaled.width // 2, height // 2 - scaled.height // 2
    if cover:
        return scaled.crop((-left, -top, width - left, height - top))
    return _fill_by_edges(scaled, left, top, width, height)


def _scaled_size(size: tuple[int, int], width: int, height: int, cover: bool) -> tuple[int, int]:
    """The size the image is scaled to, to cover the output (`cover`) or fit inside it: the output's side where the
    aspects decide, the other side in proportion, rounded down (at least 1 px)."""
    image_width, image_height = size
    output_wider = width * image_height > height * image_width
    if output_wider == cover:
        return width, max(1, image_height * width // image_width)
    return max(1, image_width * height // image_height), height


def _fill_by_edges(fitted: Image.Image, left: int, top: int, width: int, height: int) -> Image.Image:
    """`fitted` at (left, top) on a (width, height) canvas whose spare bands stretch its outermost rows or columns
    outward: each band is Pillow's resize of a zero-height (or zero-width) box at that edge, as A1111 makes it (with
    Pillow's default filter, bicubic: A1111 names none there)."""
    canvas = Image.new(fitted.mode, (width, height))
    canvas.paste(fitted, (left, top))
    right, bottom = left + fitted.width, top + fitted.height
    if fitted.width == width:
        edges = (((0, 0, width, 0), (width, top), (0, 0)),
                 ((0, fitted.height, width, fitted.height), (width, height - bottom), (0, bottom)))
    else:
        edges = (((0, 0, 0, height), (left, height), (0, 0)),
                 ((fitted.width, 0, fitted.width, height), (width - right, height), (right, 0)))
    for box, size, place in edges:
        if min(size) > 0:
            canvas.paste(fitted.resize(size, Image.Resampling.BICUBIC, box=box), place)
    return canvas


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
