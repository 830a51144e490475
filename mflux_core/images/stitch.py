"""Several pictures as one, left to right: how FLUX.1 Kontext, which reads one reference image, is given several
(ComfyUI's "Image Stitch" before its Kontext nodes, and what OpenAI's multi-image edits ask of it)."""

from typing import Iterable

from PIL import Image

from mflux_core.images.io import load_image
from mflux_core.request import check_image_size, existing_file


def stitched_side_by_side(images: Iterable[Image.Image]) -> Image.Image:
    """The images in a row, each scaled (Lanczos, aspect kept) to the first one's height. Each is scaled as it
    comes (so `images` may decode them one by one) and a row past the studio's image limits is refused before
    the next is taken."""
    row: list[Image.Image] = []
    row_width = 0
    for image in images:
        height = row[0].height if row else image.height
        width = max(1, round(image.width * height / image.height))
        row_width += width
        check_image_size(row_width, height, "The images side by side" if row else "The first image")
        row.append(image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS))
    stitched = Image.new("RGB", (row_width, row[0].height))
    left = 0
    for part in row:
        stitched.paste(part.convert("RGB"), (left, 0))
        left += part.width
    return stitched


def stitched_files(paths: Iterable[str]) -> Image.Image:
    """Reference image files, read one at a time, side by side (as stitched_side_by_side)."""
    return stitched_side_by_side(load_image(existing_file(path, "reference image")) for path in paths)
