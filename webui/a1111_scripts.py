"""A1111's img2img scripts that the studio runs, chosen by `script_name` with their `script_args` as A1111's
API passes them: "SD upscale" (args: [info, overlap, upscaler_index, scale_factor]), the Upscale tool in tiles.

As A1111's script: the init image upscaled scale_factor times by the upscaler `upscaler_index` points at in
/sdapi/v1/upscalers (None and Lanczos resample with Lanczos; the ControlNet upscaler also steers every tile; an
upscaler model, listed after them, upscales the image before the tiles),
then regenerated in tiles of the request's width x height that overlap by `overlap`,
at the request's denoising strength, every tile with the seed.
"""

from mflux_core.tools.specs import TILE_HEIGHT, TILE_OVERLAP, TILE_SIZE
from webui.a1111_extras import LANCZOS, NEAREST, NO_UPSCALER
from webui.a1111_wire import SdApiError

SD_UPSCALE = "sd upscale"  # as /sdapi/v1/scripts lists it (A1111 lists its scripts' titles in lower case)
IMG2IMG_SCRIPTS = (SD_UPSCALE,)
DEFAULT_TILE, DEFAULT_OVERLAP, DEFAULT_FACTOR = 512, 64, 2.0  # A1111's: its img2img size, its script's sliders
MAX_FACTOR = 8.0


def script_arg(args: list, index: int, name: str, default, whole: bool, low: float, high: float):
    """script_args[index] (its default when absent or null), refused unless a number from low to high."""
    value = args[index] if index < len(args) and args[index] is not None else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or \
            (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise SdApiError(422, f"SD upscale's {name} (script_args[{index}]) must be {kind} from {low:g} to {high:g}, "
                              f"not {value!r}.", kind="RequestValidationError")
    return int(value) if whole else float(value)


def sd_upscale_settings(args: list, width: int | None, height: int | None, denoising_strength: float,
                        upscalers: list[str], ignored: list[str]) -> dict:
    """The Upscale tool's settings for A1111's SD upscale with `args` (script_args), the request's size as the
    tile; `upscalers`: /sdapi/v1/upscalers' names, which `upscaler_index` points into; what we do otherwise than
    A1111 is named in `ignored`."""
    if denoising_strength == 0:
        raise SdApiError(422, "SD upscale at denoising_strength 0 would return the resampled image as it is: use "
                              "/sdapi/v1/extra-single-image for that, or a denoising strength above 0.",
                         kind="RequestValidationError")
    overlap = script_arg(args, 1, "overlap", DEFAULT_OVERLAP, True, 0, 2048)
    upscaler = upscalers[script_arg(args, 2, "upscaler_index", 0, True, 0, len(upscalers) - 1)]
    factor = script_arg(args, 3, "scale_factor", DEFAULT_FACTOR, False, 1, MAX_FACTOR)
    tile = {TILE_SIZE: width or DEFAULT_TILE, TILE_HEIGHT: height or DEFAULT_TILE}  # A1111's img2img size defaults
    for key, name in ((TILE_SIZE, "width"), (TILE_HEIGHT, "height")):
        if tile[key] % 16:
            ignored.append(f"{name} {tile[key]} as the tile's (tiles are multiples of 16 px here: "
                           f"{tile[key] // 16 * 16})")
            tile[key] = tile[key] // 16 * 16
    if upscaler == NEAREST:
        ignored.append(f"SD upscale's upscaler {NEAREST} ({LANCZOS} resampled)")
    extra = {"upscale_factor": factor, **tile, TILE_OVERLAP: overlap,
             "upscaler": upscaler if upscaler not in (NO_UPSCALER, NEAREST) else LANCZOS}
    # the output is the init image's size times the factor, set by the tool
    return {"width": None, "height": None, "image_strength": round(1 - denoising_strength, 6), "extra": extra}


def is_sd_upscale(script_name: str | None) -> bool:
    return (script_name or "").strip().lower() == SD_UPSCALE
