"""The A1111 ControlNet extension's API (sd-webui-controlnet; Forge's built-in ControlNet speaks the same) on the
studio's Canny ControlNet, so A1111 clients that steer txt2img with a control image work unchanged:

    txt2img `alwayson_scripts: {"controlnet": {"args": [unit, ...]}}`: the enabled units (up to four) run the
        ControlNet tool, each with its `image` (or the older `input_image`), `module` "canny" (edges found here with
        `threshold_a` / `threshold_b`, OpenCV's units as the extension's) or "none" (the image already is an edge
        map), `weight` (the ControlNet strength); the first unit's `resize_mode` brings every control image to the
        output size; `model` picks the ControlNet weights when it names the studio's (/controlnet/model_list), else
        the tool's default runs; several units steer at once (their residuals add up)
    img2img with a unit: the same, starting from the init image (`denoising_strength`); a unit without an image
        takes the init image as its control image, as the extension does (with an inpainting mask: not here)
    GET  /controlnet/version, /controlnet/model_list, /controlnet/module_list, /controlnet/settings (four units),
        /controlnet/control_types (All, Canny, Depth: each one's modules and the ControlNets named for it or Union)
    POST /controlnet/detect: what a module makes of `controlnet_input_images`, as the extension's preview returns
        it: Canny edges, a depth module's depth map (the studio's depth estimator, in the engine's turn), each at
        `controlnet_processor_res` (the shorter side; 512 when none is sent, as the extension), or for "none" the
        images as they are

With a Union ControlNet as `model`, a depth module (depth_anything_v2, depth_midas, ...: the depth map made here
by the studio's depth estimator) runs its depth mode, and `union_control_type` (the extension's field for union
models) picks any of its modes for the image as it is sent (module "none") or as the module makes it.

What FLUX.1's Canny ControlNet has no counterpart for (guidance_start / guidance_end, control_mode, a unit's mask,
units past four) is named in the answer's `info` as ignored; another module is refused with a sentence.
"""

import math
from typing import Callable

import cv2
import numpy as np
from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import Field

from mflux_core.controlnet_units import IMAGE_KEY, MAX_UNITS, UNIT_EXTRA_KEYS
from mflux_core.images.canny import canny_edges
from mflux_core.images.resize_modes import CROP_AND_RESIZE, JUST_RESIZE, RESIZE_AND_FILL, RESIZE_MODES
from mflux_core.request import check_image_size
from mflux_core.settings_schema import MAX_SIDE
from mflux_core.images.io import load_rgba
from webui.a1111_wire import SdApiError, as_file, b64_png, base64_data, decoded_image, parsed, without_hash
from webui.api_server import ApiFields, studio_models
from webui.requests import InputStore
from webui.widgets import model_choices

SCRIPT = "controlnet"  # its key in alwayson_scripts (any case)
CANNY, NO_PREPROCESSOR = "canny", "none"
DEPTH_MODULE = "depth"  # any module named depth... (the extension's depth_anything_v2, depth_midas, depth_zoe, ...)
LISTED_DEPTH_MODULE = "depth_anything_v2"  # the one /controlnet/module_list names (the studio's estimator's kind)
CANNY_DEFAULTS = (100, 200)  # the extension's canny sliders' defaults, low and high (also the studio's)
DEFAULT_PROCESSOR_RES = 512  # the shorter side the extension's preprocessors work at when a client names none
PROCESSOR_PAD = 64  # they pad the scaled picture to multiples of this (edge pixels repeated), then crop the result
EXTENSION_VERSION = 2  # what /controlnet/version answers: the API generation these fields follow
# The extension's resize modes by name (older names too) and by number, as our RESIZE_MODES
RESIZE_NAMES = {"just resize": JUST_RESIZE, "crop and resize": CROP_AND_RESIZE, "resize and fill": RESIZE_AND_FILL,
                "inner fit (scale to fit)": CROP_AND_RESIZE, "scale to fit (inner fit)": CROP_AND_RESIZE,
                "outer fit (shrink to fit)": RESIZE_AND_FILL, "envelope (outer fit)": RESIZE_AND_FILL}
BALANCED = ("0", "balanced")  # control_mode as a number or a name
# /controlnet/control_types: the extension's control types the studio has, with their modules (default first)
# and the words a ControlNet's name has when it is made for that type (a Union ControlNet takes every type)
CONTROL_TYPES = {"All": ([CANNY, LISTED_DEPTH_MODULE, NO_PREPROCESSOR], ("",)),
                 "Canny": ([CANNY, NO_PREPROCESSOR], ("canny", "union")),
                 "Depth": ([LISTED_DEPTH_MODULE, NO_PREPROCESSOR], ("depth", "union"))}


class ControlNetUnit(ApiFields):
    """The fields we use of the extension's unit; the rest are accepted (low_vram: nothing to do here;
    processor_res: the module runs at the output's size, as with pixel_perfect, and a resolution asked for otherwise
    is named in `ignored`)."""

    enabled: bool = True  # a unit sent with an image is meant to run unless it says otherwise
    module: str = NO_PREPROCESSOR
    model: str | None = None
    weight: float = Field(1.0, ge=0, le=2)
    image: str | dict | list | None = None
    input_image: str | None = None  # the extension's older name for `image`
    mask: str | None = None
    mask_image: str | None = None
    resize_mode: int | str = 1
    threshold_a: float = -1  # -1: the module's default
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0, le=1)
    guidance_end: float = Field(1.0, ge=0, le=1)
    control_mode: int | str = 0
    union_control_type: str | None = None  # a union model's mode, e.g. "Depth" ("Unknown": the module's own)


def enabled_units(scripts: dict, ignored: list[str]) -> list[ControlNetUnit]:
    """The enabled ControlNet units of a request's alwayson_scripts, at most MAX_UNITS (later ones go to
    `ignored`)."""
    script = next((value for key, value in scripts.items() if key.lower() == SCRIPT), None)
    args = script.get("args", []) if isinstance(script, dict) else []
    if not isinstance(args, list):
        raise SdApiError(422, "alwayson_scripts.controlnet.args must be a list of ControlNet units.")
    units = []
    for index, fields in enumerate(args):
        if not isinstance(fields, dict):
            raise SdApiError(422, f"alwayson_scripts.controlnet.args[{index}] must be a ControlNet unit (an object).")
        unit = parsed(ControlNetUnit, fields, f"alwayson_scripts.controlnet.args[{index}].")
        if unit.enabled:
            units.append(unit)
    if len(units) > MAX_UNITS:
        ignored.append(f"alwayson_scripts.controlnet units after the first {MAX_UNITS} ({len(units) - MAX_UNITS}: "
                       f"the studio runs up to {MAX_UNITS} at once)")
    return units[:MAX_UNITS]


def units_inputs(studio, units: list[ControlNetUnit], ignored: list[str], store: InputStore,
                 init_image=None) -> tuple[dict, dict]:
    """(the ControlNet tool's settings, its input paths in `store`) for the enabled units: the first as the request's
    own ControlNet, the others as its further units (mflux_core/controlnet_units.py)."""
    settings, image = unit_settings(studio, units[0], ignored, init_image)
    further = []
    for number, unit in enumerate(units[1:], 2):
        unit_fields, unit_image = unit_settings(studio, unit, ignored, init_image, number)
        if unit_fields["resize_mode"] != settings["resize_mode"]:
            ignored.append("alwayson_scripts.controlnet resize_mode of a later unit (the first unit's resizes all)")
        extra = unit_fields["extra"]
        further.append({"controlnet_strength": unit_fields["controlnet_strength"],
                        **{key: extra[key] for key in UNIT_EXTRA_KEYS if key in extra},
                        IMAGE_KEY: store.save(unit_image, "api-control")})
    return {**settings, "controlnet_units": further}, {IMAGE_KEY: store.save(image, "api-control")}


def image_and_mask(unit: ControlNetUnit) -> tuple:
    """(image, mask) in any of the extension's spellings: `image` (or `input_image`) with `mask` / `mask_image`,
    {"image", "mask"}, [image, mask], or a list of such objects (the first)."""
    image, mask = (unit.image if unit.image is not None else unit.input_image), unit.mask or unit.mask_image
    if isinstance(image, list):
        if image and isinstance(image[0], dict):
            image = image[0]
        else:
            image, mask = ([*image, None, None][:2])
    if isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask") or mask
    return image or None, mask  # "": no image, as webuiapi sends a unit without one


def resize_mode(value: int | str) -> str:
    if isinstance(value, int) and value in range(len(RESIZE_MODES)):
        return RESIZE_MODES[value]
    if isinstance(value, str) and value.strip().lower() in RESIZE_NAMES:
        return RESIZE_NAMES[value.strip().lower()]
    raise SdApiError(422, f"The ControlNet unit's resize_mode {value!r} is not one of Just Resize, Crop and Resize, "
                          "Resize and Fill (or 0, 1, 2).", kind="RequestValidationError")


def controlnet_weights(studio, only_offered: bool = False) -> list[str]:
    """The ControlNet weights the studio has, by name; `only_offered`: those /controlnet/model_list offers
    (api_server.offered)."""
    return [name for _, name in model_choices(studio_models(studio, only_offered), kinds=("controlnet",))]


def unit_settings(studio, unit: ControlNetUnit, ignored: list[str], init_image=None,
                  number: int = 1) -> tuple[dict, object]:
    """(the ControlNet tool's settings, the control image) for one unit; in img2img a unit without an image
    takes the init image, as the extension does."""
    extra = module_settings(unit)
    if unit.model and unit.model.strip().lower() != "none":
        if without_hash(unit.model) in controlnet_weights(studio):  # the extension's names carry a hash
            extra["controlnet_path"] = without_hash(unit.model)
        else:
            ignored.append(f"alwayson_scripts.controlnet model {unit.model!r} (not in the studio: its Canny "
                           "ControlNet ran)")
    if (unit.guidance_start, unit.guidance_end) != (0.0, 1.0):
        ignored.append("alwayson_scripts.controlnet guidance_start/guidance_end (the ControlNet steers every step)")
    if str(unit.control_mode).strip().lower() not in BALANCED:
        ignored.append("alwayson_scripts.controlnet control_mode (balanced ran)")
    asked_res = (unit.model_extra or {}).get("processor_res")
    if "controlnet_skip_canny" not in extra and not (unit.model_extra or {}).get("pixel_perfect") \
            and asked_res not in (None, -1):
        ignored.append(f"alwayson_scripts.controlnet processor_res {str(asked_res)[:20]} (the module runs at the "
                       "output's size here, as with pixel_perfect)")
    image, mask = image_and_mask(unit)
    if mask:
        ignored.append("alwayson_scripts.controlnet mask (the ControlNet sees the whole image)")
    settings = {"controlnet_strength": unit.weight, "resize_mode": resize_mode(unit.resize_mode), "extra": extra}
    if image is None and init_image is not None:
        return settings, init_image
    if not isinstance(image, str):
        raise SdApiError(422, f"ControlNet unit {number} (of the enabled ones) has no image: send its control "
                              "picture as base64 in 'image'.",
                         kind="RequestValidationError")
    return settings, decoded_control_image(image, "ControlNet image")


def decoded_control_image(text: str, what: str) -> Image.Image:
    """A base64 control image as the extension reads one (annotator/util.py's HWC3): transparency over white in
    float, truncated to whole levels. load_image's Pillow composite rounds instead: a level apart on every
    semi-transparent pixel, which moves hundreds of Canny edge pixels."""
    picture = decoded_image(text, what)  # with its checks (size, format, damage)
    with as_file(base64_data(text, what)) as path:
        rgba = np.asarray(load_rgba(path, name=f"sent as {what}"), dtype=np.float32)
    if (rgba[..., 3] == 255).all():
        return picture
    alpha = rgba[..., 3:] / 255.0
    return Image.fromarray((rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8))


def module_settings(unit: ControlNetUnit) -> dict:
    """The ControlNet tool's `extra` for the unit's preprocessor module and union control type."""
    module = unit.module.strip().lower()
    if module == CANNY:
        low, high = (value if value >= 0 else default for value, default in
                     zip((unit.threshold_a, unit.threshold_b), CANNY_DEFAULTS))
        extra = {"canny_low": low, "canny_high": high}
    elif module.startswith(DEPTH_MODULE):
        extra = {"controlnet_mode": "depth"}
    elif module == NO_PREPROCESSOR:
        extra = {"controlnet_skip_canny": True}
    else:
        raise SdApiError(400, f"The ControlNet module {unit.module!r} is not in the studio: it takes 'canny' (edges "
                              "found here), a depth module (a Union ControlNet's depth, the map made here) or 'none' "
                              "(the image as it is).")
    union_type = (unit.union_control_type or "").strip()
    if union_type and union_type.lower() != "unknown":
        extra["controlnet_mode"] = union_type
    return extra


def control_types(weights: list[str]) -> dict:
    """/controlnet/control_types: for each type its modules and the ControlNet `weights` made for it."""
    types = {}
    for name, (modules, words) in CONTROL_TYPES.items():
        models = [weight for weight in weights if any(word in weight.lower() for word in words)]
        types[name] = {"module_list": modules, "model_list": models, "default_option": modules[0],
                       "default_model": models[0] if models else NO_PREPROCESSOR}
    return {"control_types": types}


def body_number(value):
    """A number of /controlnet/detect's body as FastAPI reads the extension's float and int fields: numbers, and
    text that spells one ("50"); anything else is returned as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def processor_res(fields: dict) -> int:
    """/controlnet/detect's `controlnet_processor_res`: the shorter side the module works at (none or -1: 512)."""
    value = body_number(fields.get("controlnet_processor_res", -1))
    if value is None or value == -1:
        return DEFAULT_PROCESSOR_RES
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) \
            or not PROCESSOR_PAD <= value <= MAX_SIDE:
        raise SdApiError(422, f"controlnet_processor_res must be a whole number of pixels from {PROCESSOR_PAD} to "
                              f"{MAX_SIDE} (or -1 for {DEFAULT_PROCESSOR_RES}), not {str(value)[:40]}.",
                         kind="RequestValidationError")
    return int(value)


def at_processor_res(picture: Image.Image, res: int) -> tuple[Image.Image, tuple[int, int]]:
    """The picture as the extension's preprocessors take it: its shorter side scaled to `res` (OpenCV's cubic
    interpolation up, area down), edge-padded to multiples of 64; and the (width, height) to crop the result to."""
    pixels = np.asarray(picture.convert("RGB"))
    height, width = pixels.shape[:2]
    scale = res / min(height, width)
    size = (round(width * scale), round(height * scale))
    check_image_size(*size, f"The picture at the processor resolution {res}")
    resized = cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    padded = np.pad(resized, [(0, -size[1] % PROCESSOR_PAD), (0, -size[0] % PROCESSOR_PAD), (0, 0)], mode="edge")
    return Image.fromarray(padded), size


def detect(fields: dict, depth_map: Callable[[Image.Image], Image.Image]) -> dict:
    """/controlnet/detect: each input image as the module makes it, at the processor resolution as the extension
    answers (module "none": the image as it is)."""
    module = str(fields.get("controlnet_module", NO_PREPROCESSOR)).strip().lower()
    if module not in (CANNY, NO_PREPROCESSOR) and not module.startswith(DEPTH_MODULE):
        raise SdApiError(422, f"The ControlNet module {module!r} is not in the studio: it detects 'canny' edges and "
                              f"depth ({LISTED_DEPTH_MODULE}), or gives the image back ('none').")
    images = fields.get("controlnet_input_images", fields.get("controlnet_images"))  # the second: older clients
    if not isinstance(images, list) or not images or not all(isinstance(image, str) for image in images):
        raise SdApiError(422, "controlnet_input_images must be a list of base64 images.",
                         kind="RequestValidationError")
    pictures = [decoded_control_image(image, f"controlnet_input_images[{index}]")
                for index, image in enumerate(images)]
    if module == NO_PREPROCESSOR:
        return {"images": [b64_png(image) for image in pictures], "info": "Success"}
    if module == CANNY:
        low, high = (body_number(fields.get(key, -1)) for key in ("controlnet_threshold_a", "controlnet_threshold_b"))
        low, high = (float(value) if isinstance(value, (int, float)) and value >= 0 else default
                     for value, default in zip((low, high), CANNY_DEFAULTS))

        def make(picture: Image.Image) -> Image.Image:
            return canny_edges(picture, low, high)
    else:
        make = depth_map
    res = processor_res(fields)
    detected = []
    for picture in pictures:
        padded, (width, height) = at_processor_res(picture, res)
        detected.append(make(padded).crop((0, 0, width, height)))
    return {"images": [b64_png(image) for image in detected], "info": "Success"}


def add_controlnet_routes(route, studio, threads, json_object,
                          depth_map: Callable[[Image.Image], Image.Image]) -> None:
    """The extension's own routes, beside /sdapi/v1 (`route` is the A1111 router's; `depth_map` runs the studio's
    depth estimator in the engine's turn)."""

    @route("GET", "/controlnet/version")
    async def version(request: Request):
        return JSONResponse({"version": EXTENSION_VERSION})

    @route("GET", "/controlnet/model_list")
    async def model_list(request: Request):
        return JSONResponse({"model_list": controlnet_weights(studio, only_offered=True)})

    @route("GET", "/controlnet/module_list")
    async def module_list(request: Request):
        sliders = [{"name": "Low Threshold", "value": CANNY_DEFAULTS[0], "min": 0, "max": 1020},
                   {"name": "High Threshold", "value": CANNY_DEFAULTS[1], "min": 0, "max": 1020}]
        return JSONResponse({"module_list": [NO_PREPROCESSOR, CANNY, LISTED_DEPTH_MODULE],
                             "module_detail": {NO_PREPROCESSOR: {"model_free": False, "sliders": []},
                                               CANNY: {"model_free": False, "sliders": sliders},
                                               LISTED_DEPTH_MODULE: {"model_free": False, "sliders": []}}})

    @route("GET", "/controlnet/settings")
    async def settings(request: Request):
        return JSONResponse({"control_net_unit_count": MAX_UNITS})

    @route("GET", "/controlnet/control_types")
    async def types(request: Request):
        return JSONResponse(control_types(controlnet_weights(studio, only_offered=True)))

    @route("POST", "/controlnet/detect")
    async def detect_route(request: Request):
        fields = await json_object(request, SdApiError)
        return JSONResponse(await threads.run(detect, fields, depth_map))
