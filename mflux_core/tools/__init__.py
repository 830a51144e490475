"""One small module per tool; each exposes build_inputs(model, request, manager) -> ToolInputs."""

from pathlib import Path

from mflux_core.registry import on_disk
from mflux_core.tools import (
    catvton, controlnet, depth, fill, generate, ic_edit, in_context_lora, kontext, redux, upscale,
)

TOOL_MODULES = {"generate": generate, "fill": fill, "depth": depth, "kontext": kontext, "redux": redux,
                "controlnet": controlnet, "upscale": upscale, "in-context": in_context_lora, "catvton": catvton,
                "ic-edit": ic_edit}

# The FLUX.1 model each tool is made for.
DEFAULT_MODELS = {"generate": "schnell", "fill": "fill", "depth": "depth", "kontext": "kontext",
                  "controlnet": "dev", "upscale": "dev", "redux": "dev", "in-context": "fill", "catvton": "fill",
                  "ic-edit": "fill"}
# The shipped demo model a tool falls back to. The others need side weights no demo model matches
# (the upscaler ControlNet, the Redux encoder, LoRAs trained on FLUX.1-Fill).
DEMO_DEFAULTS = {"generate": "demo", "fill": "demo-fill", "depth": "demo-depth", "kontext": "demo-kontext",
                 "controlnet": "demo"}


def default_model_for(tool: str, models_dir: Path | None = None) -> str:
    """The model a tool uses when the request names none: its FLUX.1 model when that is on disk (HF cache
    or models folder), else its demo model when there is one, else the FLUX.1 alias (downloaded on first use)."""
    flux, demo = DEFAULT_MODELS[tool], DEMO_DEFAULTS.get(tool)
    if demo is not None and not on_disk(flux, models_dir) and on_disk(demo):
        return demo
    return flux
