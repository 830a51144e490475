"""Upscale only (A1111's Extras tab, ComfyUI's "Upscale Image (using Model)"): the input upscaled by an upscaler
model of the models folder (or resampled by Lanczos) and nothing else: no FLUX.1 pass, no FLUX.1 model loaded. A job
of the manager as the tiled upscale is: the model's run planned against the memory budget before it starts, its
tiles reported as steps, a stop heard between them, one image whose metadata replays it.
"""

from typing import TYPE_CHECKING

from mflux_core.errors import InvalidRequest
from mflux_core.request import GenerationRequest
from mflux_core.tools.common import required_image
from mflux_core.tools.specs import TILE_SIZE, UPSCALER_ONLY
from mflux_core.tools.upscale import CONTROLNET_UPSCALER, resampled, upscaled_size, upscaler

if TYPE_CHECKING:
    from mflux_core.manager import GenerationResult, ModelManager


def is_upscaler_only(request: GenerationRequest) -> bool:
    return request.tool == "upscale" and bool(request.extra.get(UPSCALER_ONLY))


def generate_upscaler_only(manager: "ModelManager", request: GenerationRequest) -> "GenerationResult":
    """The upscaler's image, with the manager's lock held by the caller (its job's report and Stop reach the
    model's tiles through manager.upscaled_by_model)."""
    started = manager.run_started()
    if upscaler(request) == CONTROLNET_UPSCALER:
        raise InvalidRequest("Upscaler only needs an upscaler model or Lanczos: the ControlNet upscaler is a FLUX.1 "
                             "pass.")
    if request.extra.get(TILE_SIZE) is not None or request.image_strength is not None:
        raise InvalidRequest("Upscaler only makes the upscaler's image alone: tiles and an image strength are for a "
                             "FLUX.1 pass (turn off one or the other).")
    image = required_image(request.image_path or request.controlnet_image_path, "an image to upscale", "--image-path")
    request = upscaled_size(request.with_(controlnet_strength=None), image, snap=False)
    result, notes = resampled(manager, image, request)
    return manager.finished(result, request, None, None, None, started, notes=notes)
