"""Kontext: edit a reference image by instruction (FLUX.1-Kontext); several images are one reference, side by
side (as ComfyUI stitches them for Kontext)."""

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import KONTEXT_AUTO_RESIZE
from webui.demo_examples import render_demo_examples
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.requests import RequestContext, requests_from_settings
from webui.widgets import build_shared_controls, shared_settings, shared_values

TOOL = "kontext"
MORE_REFERENCES = 2  # slots after the first: "put the hat from image 2 on the person in image 1"


# How Kontext reads the reference (request.extra's kontext_auto_resize: absent, True, False)
REFERENCE_SIZES = {"Kontext's size when larger": None, "Always Kontext's size (as diffusers)": True,
                   "Its own size": False}
DEFAULT_REFERENCE_SIZE = next(iter(REFERENCE_SIZES))


def settings_from_values(values: dict) -> dict:
    auto_resize = REFERENCE_SIZES.get(values.get(KONTEXT_AUTO_RESIZE))
    return {"tool": TOOL, **shared_settings(values),
            "extra": {} if auto_resize is None else {KONTEXT_AUTO_RESIZE: auto_resize}}


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    chosen = (settings.get("extra") or {}).get(KONTEXT_AUTO_RESIZE)
    values[KONTEXT_AUTO_RESIZE] = next(label for label, value in REFERENCE_SIZES.items()
                                       if value == (None if chosen is None else bool(chosen)))
    return values


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    reference = values.get("reference")
    if reference is None:
        raise InvalidRequest("Upload the reference image to edit.")
    if not (values.get("prompt") or "").strip():
        raise InvalidRequest("Write the instruction: what should change in the image?")
    more = tuple(context.inputs.save(image, "kontext-reference") for image in
                 (values.get(f"reference_{slot}") for slot in range(2, MORE_REFERENCES + 2)) if image is not None)
    return requests_from_settings(settings_from_values(values), context,
                                  image_path=context.inputs.save(reference, "kontext-reference"),
                                  reference_image_paths=more)


def render(studio) -> Panel:
    with gr.Tab("Kontext", id=TOOL, elem_id="tab-kontext"):
        with gr.Row():
            with gr.Column(scale=5):
                reference = input_image("Reference image", "kontext-reference")
                with gr.Accordion("More images (side by side after the first, at its height)", open=False,
                                  elem_id="kontext-more-references"):
                    with gr.Row():
                        more = {f"reference_{slot}": input_image(f"Image {slot}", f"kontext-reference-{slot}")
                                for slot in range(2, MORE_REFERENCES + 2)}
                auto_resize = gr.Radio(list(REFERENCE_SIZES), value=DEFAULT_REFERENCE_SIZE,
                                       label="Reference size", elem_id="kontext-auto-resize",
                                       info="Kontext's size: the resolution it was trained on closest to the "
                                            "reference's shape (about 1 MP), also the output's unless a size is set. "
                                            "A demo model reads it at the output's size.")
                shared = build_shared_controls(studio, TOOL, TOOL, prompt_label="Instruction")
                render_demo_examples(studio, TOOL, shared.controls, {reference: lambda e: str(e.images["image"])},
                                     {auto_resize: DEFAULT_REFERENCE_SIZE}, emptied=tuple(more.values()))
                panel = Panel(TOOL, (TOOL,), {**shared.controls, KONTEXT_AUTO_RESIZE: auto_resize},
                              settings_from_values, values_from_settings, send_target=reference)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL, compare=True)
    panel.view, panel.run_handler = view, studio.job(view)(build_requests)
    studio.wire_run(run, panel.run_handler, {**panel.controls, "reference": reference, **more}, view,
                    api_name="kontext")
    studio.wire_stop(stop)
    return panel
