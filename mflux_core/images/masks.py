"""Inpainting masks as numpy arrays (white / True = regenerate), plus the blurs and distances they need."""

import math

import cv2
import numpy as np
from PIL import Image, ImageOps

from mflux_core.errors import InvalidRequest

EMPTY_MASK_MESSAGE = "The mask is empty: paint the area to regenerate."
FULL_MASK_NOTE = "The mask covers the whole image: all of it will be regenerated."

MaskLike = Image.Image | np.ndarray


def binarize_mask(mask: MaskLike, threshold: float = 0.5) -> np.ndarray:
    """A (H, W) bool array: True where the mask is at least `threshold` of white (as diffusers binarizes)."""
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 >= threshold
    values = np.asarray(mask)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f"A mask array must be (H, W) or (H, W, 1), got shape {values.shape}.")
    if values.dtype == np.bool_:
        return values.copy()
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.float32) / 255.0 >= threshold
    return values >= threshold


def mask_to_pil(mask: np.ndarray) -> Image.Image:
    """A bool mask as a black-and-white 'L' image."""
    return Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L")


def fit_mask_to_image(mask: MaskLike, size: tuple[int, int]) -> tuple[MaskLike, str | None]:
    """Resize (nearest) a mask to `size` = (width, height); the note says so when it had to, else None.

    Returns the same kind it was given: a PIL image or a bool array.
    """
    mask_size = mask.size if isinstance(mask, Image.Image) else (mask.shape[1], mask.shape[0])
    if tuple(mask_size) == tuple(size):
        return mask, None
    note = (
        f"The mask is {mask_size[0]}x{mask_size[1]} pixels but the image is {size[0]}x{size[1]}: "
        "the mask was resized to fit."
    )
    if isinstance(mask, Image.Image):
        return mask.resize(size, resample=Image.Resampling.NEAREST), note
    resized = mask_to_pil(binarize_mask(mask)).resize(size, resample=Image.Resampling.NEAREST)
    return binarize_mask(resized), note


def invert_mask(mask: MaskLike) -> MaskLike:
    """Swap regenerate and keep; returns the same kind it was given."""
    if isinstance(mask, Image.Image):
        return ImageOps.invert(mask.convert("L"))
    values = np.asarray(mask)
    if values.dtype == np.bool_:
        return ~values
    if np.issubdtype(values.dtype, np.integer):
        return (255 - values).astype(values.dtype)
    return 1.0 - values


def distance_to_mask(mask: np.ndarray, limit: float) -> np.ndarray:
    """Euclidean distance (float32) from each pixel to the nearest True pixel: exact up to `limit`, inf beyond.

    Measured only over the mask's bounding box grown by `limit`: everything outside it is farther.
    """
    mask = np.asarray(mask, dtype=bool)
    distance = np.full(mask.shape, np.inf, dtype=np.float32)
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return distance
    reach = math.floor(limit)  # the farthest whole-pixel offset, along either axis, that can be in range
    box = (
        slice(max(0, rows[0] - reach), rows[-1] + reach + 1),
        slice(max(0, columns[0] - reach), columns[-1] + reach + 1),
    )
    # OpenCV measures the distance to the nearest zero pixel; its precise mask makes that exact (Felzenszwalb).
    within = cv2.distanceTransform(np.where(mask[box], 0, 1).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    within[within > limit] = np.inf
    distance[box] = within
    return distance


def grow_mask(mask: MaskLike, pixels: int) -> np.ndarray:
    """Dilate the mask by a disc of `pixels` radius (bool array); a negative value shrinks it instead.

    Shrinking only eats in from the keep area, never from the picture's border.
    """
    mask = binarize_mask(mask)
    if pixels == 0:
        return mask
    if pixels > 0:
        return distance_to_mask(mask, pixels) <= pixels
    return ~(distance_to_mask(~mask, -pixels) <= -pixels)


def blur_mask(mask: MaskLike, radius: float) -> np.ndarray:
    """A soft float mask in [0, 1]: the binary mask blurred by a gaussian of standard deviation `radius`.

    The kernel is cut at 3 sigma and the border is extended by repeating the edge pixels.
    """
    soft = binarize_mask(mask).astype(np.float32)
    if radius <= 0:
        return soft
    size = 2 * max(1, math.ceil(3.0 * radius)) + 1
    return np.clip(cv2.GaussianBlur(soft, (size, size), radius, borderType=cv2.BORDER_REPLICATE), 0.0, 1.0)


def soft_mask(mask: MaskLike, radius: float) -> Image.Image:
    """A1111's mask blur: the binarized mask blurred by a gaussian of standard deviation `radius`, as an 'L' image."""
    return Image.fromarray(np.round(blur_mask(mask, radius) * 255).astype(np.uint8), "L")


def feathered_paste(
    original: Image.Image, generated: Image.Image, mask: MaskLike, feather_px: int,
    blurred: np.ndarray | None = None,
) -> Image.Image:
    """The generated image inside the mask, the original outside, blended over `feather_px` pixels.

    The blend weight falls smoothly from 1 on the mask's edge to 0 at `feather_px` pixels out, so
    every pixel farther than `feather_px` (Euclidean) from the mask is the original, exactly. With `blurred` (the
    mask blurred, weights in [0, 1], as A1111 composites its result over a blurred mask) the weight is at least
    that, so the blend reaches as far as the blur does.
    """
    if original.size != generated.size:
        raise ValueError(f"Image sizes differ: original {original.size}, generated {generated.size}.")
    mask = binarize_mask(mask)
    if mask.shape != (original.size[1], original.size[0]):
        raise ValueError(f"The mask is {mask.shape[::-1]}, the image {original.size}.")
    weight = mask.astype(np.float32)
    if feather_px > 0:
        closeness = np.clip(1.0 - distance_to_mask(mask, feather_px) / (feather_px + 1), 0.0, 1.0)
        weight = closeness * closeness * (3.0 - 2.0 * closeness)
    if blurred is not None:
        weight = np.maximum(weight, blurred)
    before = np.asarray(original.convert("RGB"), dtype=np.float32)
    after = np.asarray(generated.convert("RGB"), dtype=np.float32)
    blended = before + weight[..., None] * (after - before)
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8), "RGB")


def mask_from_editor_layers(layers: list[Image.Image | None]) -> np.ndarray:
    """The union of the painted (alpha > 0) pixels of Gradio ImageEditor layers, as a bool array."""
    painted = None
    for layer in layers:
        if layer is None:
            continue
        if "A" not in layer.getbands():
            raise ValueError(f"An editor layer must carry alpha (RGBA), got mode {layer.mode}.")
        alpha = np.asarray(layer.getchannel("A")) > 0
        if painted is not None and alpha.shape != painted.shape:
            raise ValueError(f"Editor layers differ in size: {alpha.shape[::-1]} vs {painted.shape[::-1]}.")
        painted = alpha if painted is None else painted | alpha
    if painted is None:
        raise InvalidRequest(EMPTY_MASK_MESSAGE)
    return painted


def describe_mask_problem(mask: np.ndarray) -> str | None:
    """The sentence to show when the mask cannot be used (nothing painted), else None."""
    return EMPTY_MASK_MESSAGE if not np.any(mask) else None


def describe_mask_note(mask: np.ndarray) -> str | None:
    """A sentence worth showing about a usable mask (it covers everything), else None."""
    return FULL_MASK_NOTE if np.all(mask) else None


# A1111's "fill" masked content: blur radii from coarse to fine, and how often each is laid over the last
FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2))


def filled_from_surroundings(image: Image.Image, mask: MaskLike) -> Image.Image:
    """The image with its masked pixels painted in the colours around them, as A1111's "fill" masked content does:
    the unmasked pixels blurred at each radius of FILL_PASSES (colour normalised by how much unmasked area the blur
    saw, that coverage its opacity) laid one over the other from coarse to fine, so that a pixel deep inside the mask
    takes the broad colours and one near its edge the nearby ones; unmasked pixels stay as they are. The large blurs
    run on a shrunk copy (a Gaussian of radius r is smooth at a scale of r / 4)."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    keep = ~binarize_mask(mask)
    height, width = keep.shape
    colour, opacity = np.zeros_like(rgb), np.zeros((height, width, 1), np.float32)
    for radius, repeats in FILL_PASSES:
        shrink = max(1, min(radius // 4, min(height, width) // 8))
        small = (max(1, width // shrink), max(1, height // shrink))
        seen = cv2.resize(keep.astype(np.float32), small, interpolation=cv2.INTER_AREA)
        premultiplied = cv2.resize(rgb * keep[..., None], small, interpolation=cv2.INTER_AREA)
        seen = cv2.GaussianBlur(seen, (0, 0), radius / shrink)
        premultiplied = cv2.GaussianBlur(premultiplied, (0, 0), radius / shrink)
        seen = cv2.resize(seen, (width, height), interpolation=cv2.INTER_LINEAR)[..., None]
        layer = cv2.resize(premultiplied, (width, height), interpolation=cv2.INTER_LINEAR) / np.maximum(seen, 1e-6)
        for _ in range(repeats):  # "over" compositing, opacity tracked
            total = seen + opacity * (1 - seen)
            colour = np.where(total > 0, (layer * seen + colour * opacity * (1 - seen)) / np.maximum(total, 1e-6), 0)
            opacity = total
    colour = np.where(keep[..., None], rgb, colour)
    return Image.fromarray(np.clip(np.rint(colour), 0, 255).astype(np.uint8))
