"""Regional prompts as settings: a base prompt plus up to four regions, each a box or a painted mask with its
own prompt and weight. The engine side (token masks, the attention bias) is mflux_core/sampling/regional.py.

A region is a flat dict, as requests, presets and PNG metadata hold it:
{"prompt": "a red circle", "x": 0, "y": 0, "w": 0.5, "h": 1, "weight": 1.0} (a box; all four at most 1:
fractions of the image, else pixels) or {"prompt": ..., "mask_path": "left.png", "weight": 1.0} (white =
the region, resized to the image).
"""

import math

from mflux_core.errors import InvalidRequest
from mflux_core.settings_schema import MAX_PROMPT_CHARS

MAX_REGIONS = 4
MAX_REGION_WEIGHT = 2.0
BOX_KEYS = ("x", "y", "w", "h")
REGION_KEYS = frozenset({"prompt", *BOX_KEYS, "mask_path", "weight"})
DEFAULT_WEIGHT = 1.0


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_fraction_box(region: dict) -> bool:
    """A box whose four numbers are all at most 1 is in fractions of the image; otherwise in pixels."""
    return all(region[key] <= 1 for key in BOX_KEYS)


def region_problem(region) -> str | None:
    """What is wrong with one region, as a phrase ("has no prompt"), or None when it is usable."""
    if not isinstance(region, dict):
        return "must be an object with a prompt and a box (x, y, w, h) or a mask_path"
    unknown = sorted(set(region) - REGION_KEYS)
    if unknown:
        return f"has an unknown key '{str(unknown[0])[:40]}' (use {', '.join(sorted(REGION_KEYS))})"
    prompt = region.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return "needs a prompt"
    if len(prompt) > MAX_PROMPT_CHARS:
        return f"has a prompt longer than {MAX_PROMPT_CHARS:,} characters"
    weight = region.get("weight", DEFAULT_WEIGHT)
    if not _finite(weight) or not 0 <= weight <= MAX_REGION_WEIGHT:
        return f"has weight {str(weight)[:40]}; use a number from 0 to {MAX_REGION_WEIGHT:g}"
    given = [key for key in BOX_KEYS if region.get(key) is not None]
    mask_path = region.get("mask_path")
    if mask_path is not None and (not isinstance(mask_path, str) or not mask_path):
        return "has a mask_path that is not a file path"
    if bool(given) == (mask_path is not None):
        return "needs either a box (x, y, w, h) or a mask_path, not both"
    if mask_path is None:
        if len(given) != 4:
            return "needs all four of x, y, w and h"
        if not all(_finite(region[key]) for key in BOX_KEYS):
            return "has a box that is not four finite numbers"
        if min(region[key] for key in BOX_KEYS) < 0 or region["w"] == 0 or region["h"] == 0:
            return "has a box with a negative corner or an empty side"
    return None


def regions_problem(regions) -> str | None:
    """The phrase that refuses a list of regions (after "Regional prompts"), or None."""
    if len(regions) > MAX_REGIONS:
        return f"allow at most {MAX_REGIONS} regions, not {len(regions)}"
    for number, region in enumerate(regions, 1):
        problem = region_problem(region)
        if problem:
            return f"refuse region {number}: it {problem}"
    return None


def box_in_pixels(region: dict, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a box region in pixels of a width x height image."""
    x, y, w, h = (float(region[key]) for key in BOX_KEYS)
    if is_fraction_box(region):
        x, w, y, h = x * width, w * width, y * height, h * height
    return round(x), round(y), round(x + w), round(y + h)


def scaled_regions(regions, x_scale: float, y_scale: float) -> tuple:
    """The regions of an image resized by (x_scale, y_scale): pixel boxes scaled with it (fraction boxes and
    masks already follow the image's size)."""
    def scaled(region: dict) -> dict:
        if region.get("mask_path") is not None or is_fraction_box(region):
            return region
        scales = {"x": x_scale, "w": x_scale, "y": y_scale, "h": y_scale}
        return {**region, **{key: region[key] * scales[key] for key in BOX_KEYS}}

    return tuple(scaled(region) for region in regions)


def check_regions_fit(regions, width: int, height: int) -> None:
    """Refuse a box that reaches past the image's edges (a tolerance of half a pixel for fractions)."""
    for number, region in enumerate(regions, 1):
        if region.get("mask_path") is not None:
            continue
        left, top, right, bottom = box_in_pixels(region, width, height)
        if right > width or bottom > height:
            unit = "fractions" if is_fraction_box(region) else "pixels"
            raise InvalidRequest(
                f"Region {number}'s box ({', '.join(f'{region[k]:g}' for k in BOX_KEYS)}, in {unit}) reaches past "
                f"the {width}x{height} image: x + w and y + h must stay within it.")


def _split_flag(text: str, what: str) -> tuple[str, str]:
    """'PLACE:prompt' -> (place, prompt); PLACE is what comes before the first ':'."""
    place, colon, prompt = text.partition(":")
    if not colon or not prompt.strip():
        raise InvalidRequest(f"A region is written {what}:prompt, not {text[:60]!r}.")
    return place.strip(), prompt.strip()


def region_from_box_flag(text: str) -> dict:
    """--region 'x,y,w,h[,weight]:prompt' (fractions of the image when all four are at most 1, else pixels)."""
    place, prompt = _split_flag(text, "x,y,w,h[,weight]")
    try:
        numbers = [float(part) for part in place.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) not in (4, 5):
        raise InvalidRequest(f"A region box is x,y,w,h or x,y,w,h,weight, not {place[:40]!r}.")
    weight = numbers[4] if len(numbers) == 5 else DEFAULT_WEIGHT
    return _checked({"prompt": prompt, **dict(zip(BOX_KEYS, numbers)), "weight": weight})


def region_from_mask_flag(text: str) -> dict:
    """--region-mask 'PATH[,weight]:prompt' (white pixels of the image at PATH are the region)."""
    place, prompt = _split_flag(text, "PATH[,weight]")
    path, comma, tail = place.rpartition(",")
    try:
        weight = float(tail) if comma else DEFAULT_WEIGHT
    except ValueError:  # a comma in the file name
        path, weight = place, DEFAULT_WEIGHT
    return _checked({"prompt": prompt, "mask_path": path or place, "weight": weight})


def _checked(region: dict) -> dict:
    problem = region_problem(region)
    if problem:
        raise InvalidRequest(f"The region {problem}.")
    return region
