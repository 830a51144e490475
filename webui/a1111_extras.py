"""A1111's extras upscaling, `/sdapi/v1/extra-single-image` and `/extra-batch-images`, with the studio's upscalers
(what `/sdapi/v1/upscalers` lists): Lanczos and Nearest as A1111's own (Pillow's filters), the ControlNet
upscaler, the Upscale tool: a FLUX.1 pass at the larger size, run in the engine's turn like txt2img, and the upscaler
models of the models folder (ESRGAN, 4x-UltraSharp, ...), also in the engine's turn.

As A1111 does: `resize_mode` 0 multiplies the size by `upscaling_resize` (default 2); 1 upscales until the image
covers `upscaling_resize_w` x `upscaling_resize_h` and (`upscaling_crop`, the default) keeps that much of its
middle. `upscaler_2` is blended over the first by `extras_upscaler_2_visibility`. Face restoration (GFPGAN,
CodeFormer) is not in the studio: asked for, it is named in the answer's `html_info`.
"""

from typing import Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import Field

from mflux_core.errors import InvalidRequest
from mflux_core.request import check_image_size
from mflux_core.settings_schema import HIRES_UPSCALERS, MAX_SIDE
from webui.a1111_wire import SdApiError, b64_png, decoded_image, parsed
from webui.api_server import ApiFields

NO_UPSCALER, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
CONTROLNET_UPSCALER = HIRES_UPSCALERS[1]
UPSCALERS = (NO_UPSCALER, LANCZOS, NEAREST, CONTROLNET_UPSCALER)
EXTRAS_SEED = 0  # the ControlNet upscaler's: extras take no seed, and A1111's upscalers give one picture for one input
FILTERS = {LANCZOS: Image.Resampling.LANCZOS, NEAREST: Image.Resampling.NEAREST}
MAX_FACTOR = 8  # A1111's slider's end
# run_upscale(upscaler, image, width, height) -> the image of that size by the ControlNet upscaler (the Upscale tool)
# or an upscaler model, run in the engine's turn
UpscaleRunner = Callable[[str, Image.Image, int, int], Image.Image]
# check_memory(what, phase, peak bytes): refused (InvalidRequest) when it would not fit the memory budget
MemoryCheck = Callable[[str, str, int], None]
ANSWER_PHASE = "holding the answer"
# a batch's answer holds every upscaled image at once: as PNG, that as base64 and the JSON answer's copy of it, beside
# the one being made (measured: 40 noise images upscaled 8x to 4096x4096 peaked at 7.5 bytes a pixel of the answer)
ANSWER_BYTES_PER_PIXEL = 8


class ExtrasParams(ApiFields):
    """The fields we use of A1111's extras requests; the rest are accepted and ignored."""

    resize_mode: int = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2.0, ge=1, le=MAX_FACTOR)  # A1111's range
    upscaling_resize_w: int = Field(512, ge=1, le=MAX_SIDE)
    upscaling_resize_h: int = Field(512, ge=1, le=MAX_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = NO_UPSCALER
    upscaler_2: str = NO_UPSCALER
    extras_upscaler_2_visibility: float = Field(0.0, ge=0, le=1)
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0


class SingleImage(ExtrasParams):
    image: str


class BatchImage(ApiFields):
    data: str
    name: str = ""


class BatchImages(ExtrasParams):
    imageList: list[BatchImage] = Field(min_length=1)  # noqa: N815 (A1111's field name)


def checked(model: type[ExtrasParams], fields: dict, is_model: Callable[[str], bool]) -> ExtrasParams:
    """The request's fields, its upscalers among the studio's (`is_model`: whether a name is an upscaler model's)."""
    params = parsed(model, fields)
    for name in (params.upscaler_1, params.upscaler_2):
        if name not in UPSCALERS and not is_model(name):
            raise SdApiError(400, f"The upscaler {name!r} is not in the studio: use one of {', '.join(UPSCALERS)} "
                                  "or an upscaler model of the models folder's upscalers/ (GET /sdapi/v1/upscalers).")
    return params


def upscale_factor(image: Image.Image, params: ExtrasParams) -> float:
    """A1111's: `upscaling_resize`, or (resize_mode 1) the factor that makes the image cover the asked size."""
    if params.resize_mode == 1:
        return max(params.upscaling_resize_w / image.width, params.upscaling_resize_h / image.height)
    return params.upscaling_resize


def upscaled_size(image: Image.Image, factor: float) -> tuple[int, int]:
    """The image's size upscaled `factor` times, refused past the size limits."""
    # A1111 truncates; the 1e-6 keeps a float error (100 / 3 * 3) from losing the pixel a crop then needs
    size = (int(image.width * factor + 1e-6), int(image.height * factor + 1e-6))
    check_image_size(*size, "The upscaled image")
    return size


def upscaled_by(name: str, image: Image.Image, factor: float, run_upscale: UpscaleRunner) -> Image.Image:
    size = upscaled_size(image, factor)
    if name in FILTERS:
        return image.resize(size, FILTERS[name])
    if name != CONTROLNET_UPSCALER:
        return run_upscale(name, image, *size)
    snapped = tuple(max(16, round(side / 16) * 16) for side in size)  # FLUX.1 makes multiples of 16
    result = run_upscale(name, image, *snapped)
    return result if result.size == size else result.resize(size, Image.Resampling.LANCZOS)


def centre_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """The middle width x height, where A1111 pastes the upscaled image centred on a canvas of that size."""
    left, top = image.width // 2 - width // 2, image.height // 2 - height // 2
    return image.crop((left, top, left + width, top + height))


def upscaled(image: Image.Image, params: ExtrasParams, run_upscale: UpscaleRunner) -> Image.Image:
    """The image through upscaler_1 (and upscaler_2 blended over it); upscaler_1 "None" leaves it as it is."""
    image = image.convert("RGB")
    if params.upscaler_1 == NO_UPSCALER:
        return image
    factor = upscale_factor(image, params)
    result = upscaled_by(params.upscaler_1, image, factor, run_upscale)
    if params.upscaler_2 != NO_UPSCALER and params.extras_upscaler_2_visibility > 0:
        second = upscaled_by(params.upscaler_2, image, factor, run_upscale)
        result = Image.blend(result, second, params.extras_upscaler_2_visibility)
    if params.resize_mode == 1 and params.upscaling_crop:
        result = centre_crop(result, params.upscaling_resize_w, params.upscaling_resize_h)
    return result


def html_info(params: ExtrasParams) -> str:
    missing = [name for name, visibility in (("GFPGAN", params.gfpgan_visibility),
                                             ("CodeFormer", params.codeformer_visibility)) if visibility > 0]
    return f"<p>Ignored: {' and '.join(missing)} (no face restoration in the studio).</p>" if missing else ""


def single_image(fields: dict, run_upscale: UpscaleRunner, is_model: Callable[[str], bool]) -> dict:
    params = checked(SingleImage, fields, is_model)
    image = upscaled(decoded_image(params.image, "image"), params, run_upscale)
    return {"html_info": html_info(params), "image": b64_png(image)}


def batch_images(fields: dict, run_upscale: UpscaleRunner, is_model: Callable[[str], bool],
                 check_memory: MemoryCheck) -> dict:
    params = checked(BatchImages, fields, is_model)
    images = [decoded_image(item.data, f"imageList[{index}]") for index, item in enumerate(params.imageList)]
    sizes = []
    for index, image in enumerate(images):  # all sizes before any runs
        try:
            sizes.append(upscaled_size(image, upscale_factor(image, params)) if params.upscaler_1 != NO_UPSCALER
                         else image.size)
        except InvalidRequest as error:
            raise InvalidRequest(f"imageList[{index}]: {error}") from None
    pixels = sum(width * height for width, height in sizes)
    check_memory(f"holding the {len(sizes)} upscaled images of the answer", ANSWER_PHASE,
                 pixels * ANSWER_BYTES_PER_PIXEL)
    return {"html_info": html_info(params),
            "images": [b64_png(upscaled(image, params, run_upscale)) for image in images]}


def add_extras_routes(route, threads, json_object, run_upscale: UpscaleRunner,
                      is_model: Callable[[str], bool], check_memory: MemoryCheck) -> None:
    """The extras routes on the A1111 router (`route` is its)."""

    @route("POST", "/sdapi/v1/extra-single-image")
    async def extra_single_image(request: Request):
        fields = await json_object(request, SdApiError)
        return JSONResponse(await threads.run(single_image, fields, run_upscale, is_model))

    @route("POST", "/sdapi/v1/extra-batch-images")
    async def extra_batch_images(request: Request):
        fields = await json_object(request, SdApiError)
        return JSONResponse(await threads.run(batch_images, fields, run_upscale, is_model, check_memory))
