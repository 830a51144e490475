"""Upscale: regenerate an image at a larger size, steered by the image itself through jasperai's
FLUX.1 Upscaler ControlNet (or another with --controlnet-path) on a dev base; on a demo base the default
is demo-upscaler, the upscaler ControlNet trained with the demo models. With the Lanczos upscaler (as the hires
fix names them) no ControlNet steers: the resampled image is regenerated image-to-image only; with an upscaler
model of the models folder (ESRGAN, 4x-UltraSharp, ...: mflux_core/upscaler_models.py) the same, from the image
the model upscaled.

The input image is the control image as it is (no edge detection), resized to the output size; with an image
strength (or the Lanczos upscaler, or tiles) the upscale also starts from it, keeping that much of it.
The output size is --width/--height when both are given; one of them alone keeps the input's
aspect ratio; neither multiplies the input's size by `upscale_factor` (default 2). Every size is
snapped down to a multiple of 16. A Union ControlNet runs in its tile mode unless --controlnet-mode says otherwise.
In tiles (`tile_size`), the output is made a tile at a time: mflux_core/tiled_upscale.py.
"""

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.request import GenerationRequest, check_image_size, snap_to_16
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.specs import TILE_SIZE, UPSCALE_FACTOR, UPSCALER
from mflux_core.settings_schema import HIRES_UPSCALERS
from mflux_core.tools.common import (
    check_in_channels, fit_input, packed_channels, prompt_conditioning, required_image, start_image_inputs, with_size,
)
from mflux_core.tools.controlnet_conditioning import (
    ControlUnit, controlnet_inputs, extra_number, steering, unit_record, with_default_strength,
)
from mflux_core.upscaler_models import upscaled_note

DEFAULT_STRENGTH = 0.6  # jasperai's published controlnet_conditioning_scale
DEFAULT_FACTOR = 2.0
CONTROL_TYPE = "tile"  # what a Union ControlNet is told the control image is
MAX_FACTOR = 8.0
LANCZOS, CONTROLNET_UPSCALER = HIRES_UPSCALERS
RESAMPLED_IMAGE_STRENGTH = 0.65  # kept of the resampled image when it is regenerated from (A1111's denoising 0.35)


def upscaled_size(request: GenerationRequest, image: Image.Image, snap: bool = True) -> GenerationRequest:
    """The request with its output size: the given one, or the input's times the factor (snapped down to 16 for
    a FLUX.1 pass unless `snap` is False)."""
    if request.width is not None and request.height is not None:
        return with_size(request)
    if request.width is not None or request.height is not None:
        factor = (request.width / image.width) if request.width is not None else (request.height / image.height)
    else:
        factor = extra_number(request, UPSCALE_FACTOR, DEFAULT_FACTOR)
        if not 0 < factor <= MAX_FACTOR:
            raise InvalidRequest(f"Upscale factor {factor:g} is out of range: use more than 0 up to {MAX_FACTOR:g}.")
    width, height = round(image.width * factor), round(image.height * factor)
    check_image_size(width, height, f"The image upscaled from {image.width}x{image.height}")
    sized = snap_to_16 if snap else int
    return with_size(request.with_(width=request.width or sized(width), height=request.height or sized(height)))


def upscaler(request: GenerationRequest) -> str:
    """The upscaler's name: one of HIRES_UPSCALERS or an upscaler model's (checked when it loads)."""
    name = request.extra.get(UPSCALER, CONTROLNET_UPSCALER)
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest(f"The upscaler must be a name ({' or '.join(HIRES_UPSCALERS)}, or an upscaler model's), "
                             f"not {name!r}.")
    return name


def resampled(engine: ToolEngine, image: Image.Image, request: GenerationRequest) -> tuple[Image.Image,
                                                                                         tuple[str, ...]]:
    """The input at the request's (set) size: by the upscaler model first when the request names one, then by
    its resize mode (Lanczos), with notes of what was done."""
    name, notes = upscaler(request), ()
    if name not in HIRES_UPSCALERS:
        before = image.size
        model, image = engine.upscaled_by_model(name, image, (request.width, request.height))
        notes = (upscaled_note(model, before, image.size),)
    image, resized = fit_input(image, request)
    return image, notes + resized


def starts_from_image(request: GenerationRequest) -> GenerationRequest:
    """The request with the image strength it regenerates the resampled image with: the given one; else none when
    the upscaler ControlNet steers a whole-image upscale (text-to-image, as jasperai's pipeline runs it); else
    RESAMPLED_IMAGE_STRENGTH (the Lanczos upscaler and tiles start from the image, as A1111's SD upscale does)."""
    if request.image_strength is not None or (upscaler(request) == CONTROLNET_UPSCALER and
                                              request.extra.get(TILE_SIZE) is None):
        return request
    return request.with_(image_strength=RESAMPLED_IMAGE_STRENGTH)


def image_to_upscale(request: GenerationRequest) -> Image.Image:
    """--image-path, or mflux's --controlnet-image-path: one image."""
    given = {path for path in (request.image_path, request.controlnet_image_path) if path}
    if len(given) > 1:
        raise InvalidRequest("Upscale takes one image: give --image-path (or mflux's --controlnet-image-path), not "
                             "two different ones.")
    return required_image(next(iter(given), None), "an image to upscale", "--image-path")


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    image = image_to_upscale(request)
    request = upscaled_size(request, image)
    image, notes = resampled(engine, image, request)
    return upscale_inputs(model, starts_from_image(request), engine, image, notes)


def upscale_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine, image: Image.Image,
                   notes: tuple[str, ...] = ()) -> ToolInputs:
    """The regeneration of `image`, at the request's size already: steered by the upscaler ControlNet unless the
    upscaler is Lanczos, started from the image when the request has an image strength."""
    if upscaler(request) == CONTROLNET_UPSCALER:
        side = steering(model, request, engine, "upscaler", CONTROL_TYPE)
        request = with_default_strength(request, DEFAULT_STRENGTH)
        unit = ControlUnit(side, image, request.controlnet_strength, unit_record(side, request, None))
        inputs = controlnet_inputs(model, request, engine, [unit], tool="Upscale", notes=notes)
    else:
        check_in_channels(model, packed_channels(model), "Upscale", "base (dev or schnell)")
        request = request.with_(controlnet_strength=None)  # no ControlNet ran
        inputs = ToolInputs(request, prompt_conditioning(model, request), notes=notes)
    return inputs if request.image_strength is None else start_image_inputs(model, inputs, image)
