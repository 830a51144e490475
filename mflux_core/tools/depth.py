"""Depth (FLUX.1-Depth-dev, or FLUX.1-dev with BFL's FLUX.1-Depth-dev-lora): a depth map steers the layout; 128
channels per token at full size (noisy latents + the depth map's latents). The map is given, or estimated from a
photo."""

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.memory import DEPTH_PHASE
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import (
    check_in_channels, fit_input, packed_channels, encode_image, prompt_conditioning, required_image, with_size,
)


def depth_source(request: GenerationRequest) -> tuple[Image.Image, bool]:
    """The user's depth map, or the photo (True) to estimate one from (--image-path)."""
    if request.depth_image_path:
        return required_image(request.depth_image_path, "a depth map", "--depth-image-path"), False
    if not request.image_path:
        raise InvalidRequest("Depth needs a depth map (--depth-image-path) or a photo to estimate one from (--image-path).")
    return required_image(request.image_path, "a photo", "--image-path"), True


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, 2 * packed_channels(model), "Depth", "FLUX.1-Depth (or dev with BFL's Depth LoRA)")
    control, is_photo = depth_source(request)
    request = with_size(request, control)  # the map has the photo's size: decided before the estimator runs
    estimated = ()
    if is_photo:
        control, estimated = engine.estimate_depth(control), ((DEPTH_PHASE, engine.depth_estimate_bytes(control)),)
    control, notes = fit_input(control, request)
    conditioning = prompt_conditioning(model, request)
    conditioning.extra_channels = encode_image(model, control, request.width, request.height).astype(model.dtype)
    return ToolInputs(request, conditioning, notes=notes, estimated=estimated)
