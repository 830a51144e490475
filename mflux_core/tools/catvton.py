"""CatVTON virtual try-on (`catvton`): garment on the left, the person on the right, regenerated inside
the person mask. mflux runs this on FLUX.1-Fill (optionally the xiaozaa/catvton-flux-beta transformer).
keep_unmasked pastes the person back outside the mask, as Fill's does (the page's default there too)."""

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.io import load_mask
from mflux_core.request import GenerationRequest, existing_file
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import required_image, with_size
from mflux_core.tools.fill import kept_outside_mask
from mflux_core.tools.in_context import diptych_mask, in_context_inputs, panel, right_half

# The prompt CatVTON-Flux was trained with (nftblackmagic/catvton-flux; mflux's default in
# generate_in_context_catvton.py): [IMAGE1] is the garment panel, [IMAGE2] the person panel.
DEFAULT_PROMPT = (
    "The pair of images highlights a clothing and its styling on a model, high resolution, 4K, 8K; "
    "[IMAGE1] Detailed product shot of a clothing; [IMAGE2] The same cloth is worn by a model in a lifestyle setting."
)


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    person = required_image(request.image_path, "a person image", "--person-image")
    garment = required_image(request.extra.get("garment_image_path"), "a garment image", "--garment-image")
    if not request.masked_image_path:
        raise InvalidRequest("CatVTON needs a person mask (white = where the garment goes): pass --person-mask.")
    mask = load_mask(existing_file(request.masked_image_path, "person mask"))
    request = with_size(request, person, panels=2)
    if not request.prompt.strip():
        request = request.with_(prompt=DEFAULT_PROMPT)
    inputs = in_context_inputs(model, request, garment, person, mask, "CatVTON")
    if request.keep_unmasked and not request.extra.get("save_full_image"):
        width, height = inputs.request.width, inputs.request.height
        keep = kept_outside_mask(panel(person, width, height), diptych_mask(mask, width, height)[:, width:],
                                 width, height)
        inputs.finish = lambda generated: keep(right_half(generated))
    return inputs
