"""Redux: variations mixed from several images, each with its own strength (FLUX.1-Redux on a base model)."""

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.request import GenerationRequest
from webui.demo_examples import render_demo_examples
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.requests import RequestContext, requests_from_settings
from webui.widgets import (
    TOOL_DEFAULT, build_shared_controls, number_value, shared_settings, shared_values, side_model_choices,
)

TOOL = "redux"
SLOTS = 4
DEFAULT_STRENGTH = 1.0


def settings_from_values(values: dict) -> dict:
    strengths = [strength(values, i) for i in range(1, SLOTS + 1)]
    extra = {"redux_path": values["redux_weights"]} if values.get("redux_weights") else {}
    return {"tool": TOOL, **shared_settings(values), "redux_image_strengths": strengths, "extra": extra}


def strength(values: dict, slot: int) -> float:
    return number_value(values, f"redux_strength_{slot}", DEFAULT_STRENGTH, f"The strength of Redux image {slot}")


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    for i, strength in enumerate((settings.get("redux_image_strengths") or [])[:SLOTS], start=1):
        values[f"redux_strength_{i}"] = strength
    if "extra" in settings:
        values["redux_weights"] = (settings["extra"] or {}).get("redux_path", TOOL_DEFAULT)
    return values


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    """One path and one strength per filled slot, in slot order."""
    slots = [(values.get(f"redux_image_{i}"), strength(values, i)) for i in range(1, SLOTS + 1)]
    slots = [(image, strength) for image, strength in slots if image is not None]
    if not slots:
        raise InvalidRequest("Upload at least one image for Redux.")
    paths = tuple(context.inputs.save(image, "redux") for image, _ in slots)
    return requests_from_settings(settings_from_values(values), context, redux_image_paths=paths,
                                  redux_image_strengths=tuple(strength for _, strength in slots))


def render(studio) -> Panel:
    with gr.Tab("Redux", id=TOOL, elem_id="tab-redux"):
        with gr.Row():
            with gr.Column(scale=5):
                images, strengths = {}, {}
                with gr.Row():
                    for i in range(1, SLOTS + 1):
                        with gr.Column(min_width=140):
                            images[f"redux_image_{i}"] = input_image(f"Image {i}", f"redux-image-{i}")
                            strengths[f"redux_strength_{i}"] = gr.Slider(0, 1, DEFAULT_STRENGTH, step=0.05,
                                                                         label="Strength",
                                                                         elem_id=f"redux-strength-{i}")
                weights = gr.Dropdown(side_model_choices(studio.manager.list_models(), "redux",
                                                         "default: redux (demo-redux on a demo model)"),
                                      value=TOOL_DEFAULT, label="Redux weights", elem_id="redux-weights")
                shared = build_shared_controls(studio, TOOL, TOOL)
                render_demo_examples(studio, TOOL, shared.controls,
                                     {images["redux_image_1"]: lambda e: str(e.images["image"])},
                                     {weights: TOOL_DEFAULT, strengths["redux_strength_1"]: DEFAULT_STRENGTH},
                                     emptied=tuple(images[f"redux_image_{i}"] for i in range(2, SLOTS + 1)))
                panel = Panel(TOOL, (TOOL,), {**shared.controls, **strengths, "redux_weights": weights},
                              settings_from_values, values_from_settings, send_target=images["redux_image_1"])
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL)
    panel.view, panel.run_handler = view, studio.job(view)(build_requests)
    studio.wire_run(run, panel.run_handler, {**panel.controls, **images}, view, api_name="redux")
    studio.wire_stop(stop)
    return panel
