"""Depth and Canny, BFL's structural conditioning (FLUX.1-Depth-dev / FLUX.1-Canny-dev, or FLUX.1-dev with their
LoRAs): a control image steers the layout; 128 channels per token at full size (noisy latents + the control
image's latents). The control image is a depth map (given, or estimated from a photo) or, for Canny, a photo's
Canny edges at the output size (as diffusers' FluxControlPipeline examples make them)."""

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
from mflux_core.tools.controlnet_conditioning import requested_canny_edges

GIVEN, DEPTH_OF_PHOTO, EDGES_OF_PHOTO = "given", "depth", "edges"


def control_source(request: GenerationRequest) -> tuple[Image.Image, str]:
    """The control image as given (--depth-image-path: a depth map, or an edge map for Canny), or the photo
    (--image-path) and what to make of it: its depth map, or with canny_edges its Canny edges."""
    if request.depth_image_path and request.image_path:
        raise InvalidRequest("Depth takes a control image (--depth-image-path) or a photo to make one from "
                             "(--image-path), not both.")
    if request.depth_image_path:
        return required_image(request.depth_image_path, "a control image", "--depth-image-path"), GIVEN
    if not request.image_path:
        raise InvalidRequest("Depth needs a depth map (--depth-image-path) or a photo to estimate one from "
                             "(--image-path; with --canny-edges, its edges are taken).")
    made = EDGES_OF_PHOTO if request.extra.get("canny_edges") else DEPTH_OF_PHOTO
    return required_image(request.image_path, "a photo", "--image-path"), made


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, 2 * packed_channels(model), "Depth",
                      "FLUX.1-Depth or -Canny (or dev with BFL's Depth or Canny LoRA)")
    control, source = control_source(request)
    request = with_size(request, control)  # the map has the photo's size: decided before the estimator runs
    estimated = ()
    if source == DEPTH_OF_PHOTO:
        control, estimated = engine.estimate_depth(control), ((DEPTH_PHASE, engine.depth_estimate_bytes(control)),)
    control, notes = fit_input(control, request)
    if source == EDGES_OF_PHOTO:
        control = requested_canny_edges(control, request)
    conditioning = prompt_conditioning(model, request)
    conditioning.extra_channels = encode_image(model, control, request.width, request.height,
                                               request.forced_vae_tile).astype(model.dtype)
    return ToolInputs(request, conditioning, notes=notes, estimated=estimated)
