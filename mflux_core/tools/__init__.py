"""One small module per tool, each with build_inputs(model, request, engine) -> ToolInputs; specs.py declares them."""
