"""Text-to-image, and image-to-image when an input image is given (`--image-path`)."""

from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.io import load_image
from mflux_core.request import GenerationRequest, existing_file
from mflux_core.tools.common import encode_image, prompt_conditioning


def build_inputs(model: FluxModel, request: GenerationRequest, manager=None) -> ToolInputs:
    conditioning = prompt_conditioning(model, request)
    image_path = existing_file(request.image_path, "input image")
    if image_path is None:
        return ToolInputs(conditioning)
    image = load_image(image_path)
    strength = 0.4 if request.image_strength is None else request.image_strength
    latents = encode_image(model, image, request.width, request.height)
    return ToolInputs(conditioning, start_image_latents=latents, image_strength=strength)
