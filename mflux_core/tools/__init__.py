"""One small module per tool; each exposes build_inputs(model, request, manager) -> ToolInputs."""

from mflux_core.tools import (
    catvton, controlnet, depth, fill, generate, ic_edit, in_context_lora, kontext, redux, upscale,
)

TOOL_MODULES = {"generate": generate, "fill": fill, "depth": depth, "kontext": kontext, "redux": redux,
                "controlnet": controlnet, "upscale": upscale, "in-context": in_context_lora, "catvton": catvton,
                "ic-edit": ic_edit}

# The model a tool uses when the request names none.
DEFAULT_MODELS = {"generate": "schnell", "fill": "fill", "depth": "depth", "kontext": "kontext",
                  "controlnet": "dev", "upscale": "dev", "redux": "dev", "in-context": "fill", "catvton": "fill",
                  "ic-edit": "fill"}


def default_model_for(tool: str) -> str:
    return DEFAULT_MODELS[tool]
