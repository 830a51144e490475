"""In-Context LoRA (`in-context`): the reference image on the left, a related image generated on the right.

`--lora-style` picks one of the ten LoRAs published in ali-vilab/In-Context-LoRA (file names as in
that repo, and as mflux's in_context_loras.py maps them); without one the diptych prompt alone
steers the Fill model, and on demo-fill its own In-Context LoRA does (DEMO_LORA_FILE: FLUX.1-Fill reads a
two-panel prompt by itself, the tiny demo model was taught to; mflux_core.demo.diptych_lora). Prompts describe both
panels, e.g. "[IMAGE1] ... [IMAGE2] ...".
"""

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.request import GenerationRequest
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import required_image, with_size
from mflux_core.tools.in_context import apply_tool_lora, check_fill_model, demo_lora, in_context_inputs
from mflux_core.tools.specs import IN_CONTEXT_LORA_STYLES as LORA_STYLES

LORA_REPO = "ali-vilab/In-Context-LoRA"
# The panel markers the published LoRAs were captioned with; any pair names the left and right panel.
PROMPT_MARKERS = (("[IMAGE1]", "[IMAGE2]"), ("[LEFT]", "[RIGHT]"), ("[TOP]", "[BOTTOM]"), ("[REFERENCE]", "[OUTPUT]"))
DEMO_LORA_FILE = "in_context_lora.safetensors"  # in a demo Fill folder: applied when no style is picked


def style_lora(style: str) -> str:
    """The LoRA of a style as a Hugging Face name (found in the cache, downloaded when online)."""
    if style not in LORA_STYLES:
        raise InvalidRequest(f"Unknown In-Context LoRA style {style!r}; choose one of {', '.join(LORA_STYLES)}.")
    return f"{LORA_REPO}/{LORA_STYLES[style]}"


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_fill_model(model, "In-Context LoRA")  # before a style LoRA is applied
    reference = required_image(request.image_path, "a reference image (left panel)", "--image-path")
    if not request.prompt.strip():
        raise InvalidRequest("In-context generation needs a prompt describing both panels, e.g. "
                             "'[IMAGE1] a red mug; [IMAGE2] the same mug on a desk'.")
    request = with_size(request, reference, panels=2)
    style = request.extra.get("lora_style")
    if style:
        apply_tool_lora(model, request, engine, style_lora(style), float(request.extra.get("lora_style_scale", 1.0)))
    elif (own := demo_lora(model, DEMO_LORA_FILE)) is not None:
        apply_tool_lora(model, request, engine, str(own))
    return in_context_inputs(model, request, reference, None, None, "In-Context LoRA")
