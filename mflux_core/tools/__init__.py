"""One small module per tool; each exposes build_inputs(model, request) -> ToolInputs."""

from mflux_core.tools import generate

TOOL_MODULES = {"generate": generate}
