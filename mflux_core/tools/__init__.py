"""One small module per tool; each exposes build_inputs(model, request, manager) -> ToolInputs."""

from mflux_core.tools import controlnet, depth, fill, generate, kontext, redux, upscale

TOOL_MODULES = {"generate": generate, "fill": fill, "depth": depth, "kontext": kontext, "redux": redux,
                "controlnet": controlnet, "upscale": upscale}

# The model a tool uses when the request names none.
DEFAULT_MODELS = {"generate": "schnell", "fill": "fill", "depth": "depth", "kontext": "kontext",
                  "controlnet": "dev", "upscale": "dev", "redux": "dev"}


def default_model_for(tool: str) -> str:
    return DEFAULT_MODELS[tool]
