"""Upscale: regenerate an image at a larger size, steered by the image itself through jasperai's
FLUX.1 Upscaler ControlNet (or another with --controlnet-path) on a dev base; on a demo base the default
is demo-upscaler, the upscaler ControlNet trained with the demo models.

The input image is the control image as it is (no edge detection), resized to the output size.
The output size is --width/--height when both are given; one of them alone keeps the input's
aspect ratio; neither multiplies the input's size by `upscale_factor` (default 2). Every size is
snapped down to a multiple of 16. A Union ControlNet runs in its tile mode unless --controlnet-mode says otherwise.
"""

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.request import GenerationRequest, check_image_size, snap_to_16
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import fit_input, required_image, with_size
from mflux_core.tools.controlnet_conditioning import (
    ControlUnit, controlnet_inputs, extra_number, steering, unit_record, with_default_strength,
)

DEFAULT_STRENGTH = 0.6  # jasperai's published controlnet_conditioning_scale
DEFAULT_FACTOR = 2.0
CONTROL_TYPE = "tile"  # what a Union ControlNet is told the control image is
MAX_FACTOR = 8.0


def upscaled_size(request: GenerationRequest, image: Image.Image) -> GenerationRequest:
    if request.width is not None and request.height is not None:
        return with_size(request)
    if request.width is not None or request.height is not None:
        factor = (request.width / image.width) if request.width is not None else (request.height / image.height)
    else:
        factor = extra_number(request, "upscale_factor", DEFAULT_FACTOR)
        if not 0 < factor <= MAX_FACTOR:
            raise InvalidRequest(f"Upscale factor {factor:g} is out of range: use more than 0 up to {MAX_FACTOR:g}.")
    width, height = round(image.width * factor), round(image.height * factor)
    check_image_size(width, height, f"The image upscaled from {image.width}x{image.height}")
    return with_size(request.with_(width=request.width or snap_to_16(width),
                                   height=request.height or snap_to_16(height)))


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    path = request.image_path or request.controlnet_image_path  # mflux's upscaler takes --controlnet-image-path
    image = required_image(path, "an image to upscale", "--image-path")
    request = upscaled_size(request, image)
    image, notes = fit_input(image, request)
    side = steering(model, request, engine, "upscaler", CONTROL_TYPE)
    request = with_default_strength(request, DEFAULT_STRENGTH)
    unit = ControlUnit(side, image, request.controlnet_strength, unit_record(side, request, None))
    return controlnet_inputs(model, request, engine, [unit], tool="Upscale", notes=notes)
