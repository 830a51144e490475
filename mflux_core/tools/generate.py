"""Text-to-image, and image-to-image when an input image is given (`--image-path`)."""

from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.regional import regional_conditioning
from mflux_core.tools.common import (
    check_in_channels, packed_channels, prompt_conditioning, required_image, start_image_inputs, with_size,
)


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, packed_channels(model), "text-to-image", "base (dev, schnell or Kontext)")
    if not request.image_path:
        request = with_size(request, native_side=model.native_side)
        return ToolInputs(request, conditioning(model, request))
    return image_to_image_inputs(model, request, required_image(request.image_path, "an input image", "--image-path"))


def image_to_image_inputs(model: FluxModel, request: GenerationRequest, image: Image.Image) -> ToolInputs:
    """Image-to-image from an image in memory (the hires fix's second pass hands it its upscaled first pass)."""
    request = with_size(request, image)
    return start_image_inputs(model, ToolInputs(request, conditioning(model, request)), image)


def conditioning(model: FluxModel, request: GenerationRequest):
    """The prompt's conditioning, with the regional prompts' text and attention bias when it has regions."""
    return regional_conditioning(model, request, prompt_conditioning(model, request))
