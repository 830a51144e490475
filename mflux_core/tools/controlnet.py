"""ControlNet (canny): the edges of a control image steer the layout, through InstantX's FLUX.1
Canny ControlNet (or any FLUX ControlNet given with --controlnet-path) on a dev or schnell base;
on a demo base the default is demo-canny, the ControlNet trained with the demo models.

With `image_path` it is image-to-image as diffusers' FluxControlNetImg2ImgPipeline: the input image, noised to
the image strength, is where sampling starts, and the control image steers every remaining step.

The control image is resized to the output size first and its Canny edges taken there, so the
ControlNet sees one-pixel edges at the resolution it works in. `controlnet_skip_canny` hands the
image over as it is (an edge map made elsewhere, or a ControlNet trained on other inputs).

A Union ControlNet takes other control types (`controlnet_mode`): for depth the image is a photo whose depth map
the depth estimator makes (as the Depth tool does), for gray a photo made grayscale; tile, blur, pose and
low-quality take the image as it is (a pose is a skeleton drawn elsewhere).

Further units (`controlnet_units`, mflux_core/controlnet_units.py) run more ControlNets at once, as diffusers'
FluxMultiControlNetModel: each unit's image is brought to the output size (set by unit 1's image) and prepared for
its own control type, and the ControlNets' residuals are added.
"""

from PIL import Image

from mflux_core.controlnet_units import IMAGE_KEY, UNIT_EXTRA_KEYS
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.memory import DEPTH_PHASE
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import fit_input, required_image, start_image_inputs, with_size
from mflux_core.tools.controlnet_conditioning import (
    ControlUnit, controlnet_inputs, requested_canny_edges, steering, unit_record, with_default_strength,
)

DEFAULT_STRENGTH = 0.4  # mflux's default ControlNet strength
CANNY = "canny"  # this tool's own control type (a Union ControlNet's mode 0)


def preprocessor(kind: str, request: GenerationRequest) -> str | None:
    """What makes the ControlNet's image for control type `kind`: canny, depth (estimated from a photo), gray, or
    None (the image as given: tile, blur, pose, low-quality, or any type with controlnet_skip_canny)."""
    if request.extra.get("controlnet_skip_canny"):
        return None
    return kind if kind in (CANNY, "depth", "gray") else None


def preprocessed(image: Image.Image, kind: str, request: GenerationRequest,
                 engine: ToolEngine) -> tuple[Image.Image, tuple[tuple[str, int], ...]]:
    """What the ControlNet sees for control type `kind` (an image already at the output size), and the planned
    phase of the depth estimator when it ran."""
    which = preprocessor(kind, request)
    if which == CANNY:
        return requested_canny_edges(image, request), ()
    if which == "depth":
        return engine.estimate_depth(image), ((DEPTH_PHASE, engine.depth_estimate_bytes(image)),)
    if which == "gray":
        return image.convert("L").convert("RGB"), ()
    return image, ()


def control_image(request: GenerationRequest, kind: str,
                  engine: ToolEngine) -> tuple[GenerationRequest, Image.Image, tuple[str, ...], tuple]:
    """The request with its size filled in, the image the ControlNet sees (for Canny: the edges at that size of
    the image brought to it by the resize mode), a note when it was resized, and the depth estimator's phase."""
    image = required_image(request.controlnet_image_path, "a control image", "--controlnet-image-path")
    request = with_size(request, image)
    image, notes = fit_input(image, request)
    control, estimated = preprocessed(image, kind, request, engine)
    return request, control, notes, estimated


def unit_request(request: GenerationRequest, unit: dict) -> GenerationRequest:
    """The request as further unit `unit` (mflux_core/controlnet_units.py) would be unit 1: its control image,
    strength and ControlNet settings in place of the request's own (left out: the tool's defaults)."""
    extra = {key: value for key, value in request.extra.items() if key not in UNIT_EXTRA_KEYS}
    extra.update({key: unit[key] for key in UNIT_EXTRA_KEYS if unit.get(key) is not None})
    return request.with_(controlnet_image_path=unit[IMAGE_KEY], controlnet_strength=unit.get("controlnet_strength"),
                         extra=extra, controlnet_units=())


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    units = [request, *(unit_request(request, unit) for unit in request.controlnet_units)]
    sides = [steering(model, unit, engine, "canny", CANNY) for unit in units]  # refused before any image is made
    request, control, notes, estimated = control_image(with_default_strength(request, DEFAULT_STRENGTH),
                                                       sides[0].kind, engine)
    prepared = [ControlUnit(sides[0], control, request.controlnet_strength,
                            unit_record(sides[0], request, preprocessor(sides[0].kind, request)))]
    for number, (unit, side) in enumerate(zip(units[1:], sides[1:]), 2):
        unit = with_default_strength(unit.with_(width=request.width, height=request.height), DEFAULT_STRENGTH)
        _, image, resized, depth = control_image(unit, side.kind, engine)
        prepared.append(ControlUnit(side, image, unit.controlnet_strength,
                                    unit_record(side, unit, preprocessor(side.kind, unit))))
        notes += tuple(f"ControlNet unit {number}: {note}" for note in resized)
        estimated += depth
    inputs = controlnet_inputs(model, request, engine, prepared, tool="ControlNet", notes=notes, estimated=estimated)
    if not request.image_path:
        return inputs
    return start_image_inputs(model, inputs, required_image(request.image_path, "an input image", "--image-path"))
