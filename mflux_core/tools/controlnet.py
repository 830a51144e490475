"""ControlNet (canny): the edges of a control image steer the layout, through InstantX's FLUX.1
Canny ControlNet (or any FLUX ControlNet given with --controlnet-path) on a dev or schnell base;
on a demo base the default is demo-canny, the ControlNet trained with the demo models.

With `image_path` it is image-to-image as diffusers' FluxControlNetImg2ImgPipeline: the input image, noised to
the image strength, is where sampling starts, and the control image steers every remaining step.

The control image is resized to the output size first and its Canny edges taken there, so the
ControlNet sees one-pixel edges at the resolution it works in. `controlnet_skip_canny` hands the
image over as it is (an edge map made elsewhere, or a ControlNet trained on other inputs).
"""

from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.canny import canny_edges
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import fit_input, required_image, start_image_inputs, with_size
from mflux_core.tools.controlnet_conditioning import controlnet_inputs, extra_number

DEFAULT_STRENGTH = 0.4  # mflux's default ControlNet strength
CANNY_THRESHOLDS = {"canny_low": "low", "canny_high": "high"}  # request.extra key -> canny_edges argument


def control_image(request: GenerationRequest) -> tuple[GenerationRequest, Image.Image, tuple[str, ...]]:
    """The request with its size filled in, the image the ControlNet sees (Canny edges at that size, of the
    image brought to it by the resize mode), and a note when it was resized."""
    image = required_image(request.controlnet_image_path, "a control image", "--controlnet-image-path")
    request = with_size(request, image)
    image, notes = fit_input(image, request)
    if request.extra.get("controlnet_skip_canny"):
        return request, image, notes
    thresholds = {arg: extra_number(request, key, None) for key, arg in CANNY_THRESHOLDS.items()
                  if request.extra.get(key) is not None}
    return request, canny_edges(image, **thresholds), notes


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    request, control, notes = control_image(request)
    inputs = controlnet_inputs(model, request, engine, control, tool="ControlNet", notes=notes,
                               default_controlnet="canny", default_strength=DEFAULT_STRENGTH)
    if not request.image_path:
        return inputs
    return start_image_inputs(model, inputs, required_image(request.image_path, "an input image", "--image-path"))
