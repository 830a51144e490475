"""One module per tool. Each exposes pure functions (tested without a browser) and `render(studio) -> Panel`:

    settings_from_values(values: dict) -> dict     the panel's controls -> preset settings
    values_from_settings(settings: dict) -> dict   preset settings -> control values (partial is fine)
    build_requests(values: dict, context) -> list[GenerationRequest]

`values` maps control names to widget values, input images included (PIL images or None).
"""

from dataclasses import dataclass
from typing import Callable

import gradio as gr

from webui.jobs import JobView


@dataclass
class Panel:
    tab_id: str
    tools: tuple[str, ...]  # the request tools this panel runs (controlnet also runs upscale)
    controls: dict  # setting control name -> component (what presets save and restore)
    settings_from_values: Callable[[dict], dict]
    values_from_settings: Callable[[dict], dict]
    send_target: gr.components.Component | None = None  # where "send to" puts an image
    view: JobView | None = None
    run_handler: Callable | None = None  # the wrapped build_requests, as wired to the Run button


def result_column(prefix: str) -> tuple[JobView, gr.Button, gr.Button]:
    """Run / Stop buttons, the progress line, the live preview and this run's results."""
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id=f"{prefix}-run", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    status = gr.HTML("", label="Status", show_label=False, elem_id=f"{prefix}-status",
                     elem_classes=["studio-status-box"])
    preview = gr.Image(label="Preview", type="pil", interactive=False, format="png", elem_id=f"{prefix}-preview",
                       height=384)
    results = gr.Gallery(label="This run", columns=4, height=200, elem_id=f"{prefix}-results", format="png",
                         interactive=False, fit_columns=False, object_fit="contain", preview=False)
    return JobView(status=status, preview=preview, results=results), run, stop


def input_image(label: str, elem_id: str, **kwargs) -> gr.Image:
    return gr.Image(label=label, type="pil", sources=["upload", "clipboard"], format="png", elem_id=elem_id,
                    height=320, **kwargs)
