"""CatVTON virtual try-on (`catvton`): garment on the left, the person on the right, regenerated inside
the person mask. mflux runs this on FLUX.1-Fill (optionally the xiaozaa/catvton-flux-beta transformer)."""

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.io import load_mask
from mflux_core.request import GenerationRequest, existing_file
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import required_image, with_size
from mflux_core.tools.in_context import in_context_inputs

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
    request = with_size(request, person)
    if not request.prompt.strip():
        request = request.with_(prompt=DEFAULT_PROMPT)
    return in_context_inputs(model, request, garment, person, mask, "CatVTON")
