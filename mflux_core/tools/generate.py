"""Text-to-image, and image-to-image when an input image is given (`--image-path`)."""

from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.regional import regional_conditioning
from mflux_core.tools.common import (
    check_in_channels, fit_input, packed_channels, encode_image, prompt_conditioning, required_image, with_size,
)

DEFAULT_IMAGE_STRENGTH = 0.4


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, packed_channels(model), "text-to-image", "base (dev, schnell or Kontext)")
    if not request.image_path:
        request = with_size(request, native_side=model.native_side)
        return ToolInputs(request, conditioning(model, request))
    return image_to_image_inputs(model, request, required_image(request.image_path, "an input image", "--image-path"))


def image_to_image_inputs(model: FluxModel, request: GenerationRequest, image: Image.Image) -> ToolInputs:
    """Image-to-image from an image in memory (the hires fix's second pass hands it its upscaled first pass)."""
    request = with_size(request, image)
    if request.image_strength is None:
        request = request.with_(image_strength=DEFAULT_IMAGE_STRENGTH)
    image, notes = fit_input(image, request)
    latents = encode_image(model, image, request.width, request.height)
    return ToolInputs(request, conditioning(model, request), start_image_latents=latents,
                      image_strength=request.image_strength, notes=notes)


def conditioning(model: FluxModel, request: GenerationRequest):
    """The prompt's conditioning, with the regional prompts' text and attention bias when it has regions."""
    return regional_conditioning(model, request, prompt_conditioning(model, request))
