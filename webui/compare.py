"""Before / after: a slider over a result and the image it was made from, for the tools that change an image
(image-to-image, Fill, Kontext, upscale), the hires fix (its upscaled first pass), a tiled upscale (the resampled
image its tiles started from) and Kontext's several references (the row it read)."""

from pathlib import Path

import gradio as gr

from mflux_core.images.stitch import stitched_files
from webui.requests import InputStore

COMPARED_TOOLS = frozenset({"generate", "fill", "kontext", "upscale"})


def comparison_slider(prefix: str) -> gr.ImageSlider:
    """Hidden until a result has a before."""
    return gr.ImageSlider(label="Before / after", type="filepath", interactive=False, visible=False, height=384,
                          elem_id=f"{prefix}-compare")


def before_and_after(result, path: Path, inputs_folder: Path) -> tuple[str, str] | None:
    """(the image `result` started from, the saved result) as paths the page may serve; None when it started
    from noise alone. A job's own before (a hires fix's upscaled first pass, a tiled upscale's resampled image) is
    written to the inputs folder (once per content)."""
    request = result.request
    if result.before is not None:
        before = InputStore(inputs_folder).save(result.before, "before")
    elif request.reference_image_paths:  # Kontext's several references: the row it read
        before = InputStore(inputs_folder).save(stitched_files(request.reference_paths), "kontext-references")
    elif request.tool in COMPARED_TOOLS:
        before = request.image_path or request.controlnet_image_path
    else:
        before = None
    return None if before is None else (before, str(path))


def show_comparison(pair: tuple[str, str] | None):
    return gr.ImageSlider(value=pair, visible=pair is not None)
