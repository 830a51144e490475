"""One module per tool. Each exposes pure functions (tested without a browser) and `render(studio) -> Panel`:

    settings_from_values(values: dict) -> dict     the panel's controls -> preset settings
    values_from_settings(settings: dict) -> dict   preset settings -> control values (partial is fine)
    build_requests(values: dict, context) -> list[GenerationRequest]

`values` maps control names to widget values, input images included (an upload's path, an image or None;
webui.requests.read_upload decodes them with our checks).
"""

from dataclasses import dataclass
from typing import Callable

import gradio as gr
from gradio.data_classes import FileData
from PIL import Image

from mflux_core.images.io import load_rgba
from webui.compare import comparison_slider
from webui.jobs import JobView
from webui.requests import read_upload


@dataclass
class Panel:
    tab_id: str
    tools: tuple[str, ...]  # the request tools this panel runs (controlnet also runs upscale)
    controls: dict  # setting control name -> component (what presets save and restore)
    settings_from_values: Callable[[dict], dict]
    values_from_settings: Callable[[dict], dict]
    send_target: gr.components.Component | None = None  # where "send to" puts an image
    send_opens: gr.Accordion | None = None  # the closed accordion holding send_target, opened by "send to"
    view: JobView | None = None
    run_handler: Callable | None = None  # the wrapped build_requests, as wired to the Run button


def result_column(prefix: str, compare: bool = False) -> tuple[JobView, gr.Button, gr.Button]:
    """Run / Stop buttons, the progress line, the live preview and this run's results; with `compare`, a
    before / after slider under them for tools that change an image (webui.compare)."""
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id=f"{prefix}-run", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    status = gr.HTML("", label="Status", show_label=False, elem_id=f"{prefix}-status",
                     elem_classes=["studio-status-box"])
    preview = gr.Image(label="Preview", type="pil", interactive=False, format="png", elem_id=f"{prefix}-preview",
                       height=384)
    results = gr.Gallery(label="This run", columns=4, height=200, elem_id=f"{prefix}-results", format="png",
                         interactive=False, fit_columns=False, object_fit="contain", preview=False)
    view = JobView(status=status, preview=preview, results=results, tool=prefix)
    if compare:
        view.compare, view.compared = comparison_slider(prefix), gr.State(None)
    return view, run, stop


# Gradio's Image and ImageEditor open every upload with Pillow before a handler runs: a file that is not an
# image would end the event with Gradio's "Could not preprocess input component", and its limits are not ours.
# Our inputs (marked with UPLOAD_AS_PATH) hand the handler the upload's path instead, for our own checked loader
# (webui.requests.read_upload). The classes' methods are wrapped once, for marked instances only: a method replaced
# on an instance is lost when an event updates the component (Gradio then keeps a new instance for the session,
# built from its constructor arguments, the marker among them), and a subclass of a Gradio component makes Gradio
# write a .pyi stub beside its module each time it is imported.
UPLOAD_AS_PATH = "studio-upload-as-path"


def _marked(component) -> bool:
    classes = component.elem_classes or []
    return UPLOAD_AS_PATH in ([classes] if isinstance(classes, str) else classes)


def _image_preprocess(preprocess: Callable) -> Callable:
    """gr.Image.preprocess that returns an uploaded file's path unopened (other payloads as Gradio does)."""

    def path_of_upload(image, payload):
        if _marked(image) and payload is not None and payload.path is not None and \
                not (payload.url or "").startswith("data:"):
            return payload.path
        return preprocess(image, payload)

    return path_of_upload


def _editor_convert(convert: Callable) -> Callable:
    """gr.ImageEditor.convert_and_format_image that returns the background's and layers' paths unopened."""

    def path_of_upload(editor, file, flatten_on_white: bool = False):
        if _marked(editor) and isinstance(file, FileData) and file.path is not None:
            return file.path
        return convert(editor, file, flatten_on_white)

    return path_of_upload


gr.Image.preprocess = _image_preprocess(gr.Image.preprocess)
gr.ImageEditor.convert_and_format_image = _editor_convert(gr.ImageEditor.convert_and_format_image)


def input_image(label: str, elem_id: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, type="filepath", sources=["upload", "clipboard"], format="png", elem_id=elem_id,
                    height=320, elem_classes=[UPLOAD_AS_PATH], **kwargs)


def mask_editor(label: str, elem_id: str, brush_size: int, colour: str = "#ffffff") -> gr.ImageEditor:
    """An image with strokes painted on it (the mask), kept RGBA so the strokes' alpha survives."""
    editor = gr.ImageEditor(
        label=label, type="pil", image_mode="RGBA", format="png", sources=["upload", "clipboard"], transforms=(),
        layers=False, height=420, brush=gr.Brush(default_size=brush_size, colors=[colour], color_mode="fixed"),
        eraser=gr.Eraser(default_size=brush_size), elem_id=elem_id, elem_classes=[UPLOAD_AS_PATH])
    return editor


def editor_layers(editor: dict | None) -> list[Image.Image]:
    """The painted layers of a mask_editor's value, decoded with their alpha (the strokes) by our checked loader."""
    return [read_upload(layer, load_rgba) for layer in (editor or {}).get("layers") or [] if layer is not None]
