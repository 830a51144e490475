"""IC-Edit (`ic-edit`): instruction editing with the RiverZ/normal-lora LoRA on FLUX.1-Fill.

The reference is the left panel, the right panel is generated whole. The instruction goes into the
diptych template the LoRA was trained with (specs.IC_EDIT_TEMPLATE). On a demo Fill folder its own IC-Edit LoRA
(DEMO_LORA_FILE, trained by mflux_core.demo.diptych_lora) stands in for RiverZ's.
"""

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import required_image, with_size
from mflux_core.tools.in_context import apply_tool_lora, check_fill_model, demo_lora, in_context_inputs
from mflux_core.tools.specs import IC_EDIT_TEMPLATE

LORA = "RiverZ/normal-lora/pytorch_lora_weights.safetensors"
LORA_SCALE = 1.0
DEMO_LORA_FILE = "ic_edit_lora.safetensors"  # in a demo Fill folder: applied unless another LoRA is asked for
TRAINED_WIDTH = 512  # the LoRA was trained on 512-pixel-wide panels; mflux resizes the reference to it


def edit_prompt(request: GenerationRequest) -> str:
    instruction = str(request.extra.get("instruction") or "").strip()
    if instruction:
        return IC_EDIT_TEMPLATE.format(instruction=instruction)
    if request.prompt.strip():
        return request.prompt
    raise InvalidRequest("IC-Edit needs an instruction (--instruction 'make the sky pink') or a full --prompt.")


def panel_size(width: int, height: int) -> tuple[int, int]:
    """512 wide, the height keeping the aspect ratio, floored to a multiple of 16 (mflux floors to 8)."""
    return TRAINED_WIDTH, max(16, round(TRAINED_WIDTH * height / width) // 16 * 16)


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_fill_model(model, "IC-Edit")  # before its LoRA is applied
    reference = required_image(request.image_path, "a reference image", "--reference-image")
    request = request.with_(prompt=edit_prompt(request))
    demo = demo_lora(model, DEMO_LORA_FILE)
    if demo is None and (request.width is None or request.height is None):
        width, height = panel_size(*reference.size)
        request = request.with_(width=request.width or width, height=request.height or height)
    # the demo LoRA was trained on the demo's own panel sizes: the reference's size, as In-Context takes it
    request = with_size(request, reference, panels=2)
    apply_tool_lora(model, request, engine, str(request.extra.get("ic_edit_lora") or demo or LORA), LORA_SCALE)
    return in_context_inputs(model, request, reference, None, None, "IC-Edit")
