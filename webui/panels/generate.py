"""Generate: text-to-image, and image-to-image when an input image is given."""

import gradio as gr

from mflux_core.hires import DEFAULT_STRENGTH, DEFAULT_UPSCALER
from mflux_core.request import MAX_STEPS, GenerationRequest
from mflux_core.settings_schema import HIRES_UPSCALERS, MAX_HIRES_SCALE
from webui.demo_examples import render_demo_examples
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.prompt_list_ui import prompt_list_controls, prompt_list_requests
from webui.regions_ui import region_controls, region_settings, region_values, with_region_masks
from webui.requests import RequestContext, requests_from_settings
from webui.widgets import build_shared_controls, number_value, shared_settings, shared_values

TOOL = "generate"
DEFAULT_IMAGE_STRENGTH = 0.4
DEFAULT_HIRES_SCALE = 2.0


def settings_from_values(values: dict) -> dict:
    return {"tool": TOOL, **shared_settings(values),
            "image_strength": number_value(values, "image_strength", DEFAULT_IMAGE_STRENGTH, "Image strength"),
            **region_settings(values), **hires_settings(values)}


def hires_settings(values: dict) -> dict:
    """The hires fix's settings when its box is ticked (hires steps 0: the first pass's)."""
    if not values.get("hires"):
        return {}
    return {"hires_scale": number_value(values, "hires_scale", DEFAULT_HIRES_SCALE, "Hires upscale"),
            "hires_steps": int(number_value(values, "hires_steps", 0, "Hires steps")) or None,
            "hires_strength": number_value(values, "hires_strength", DEFAULT_STRENGTH, "Hires denoising strength"),
            "hires_upscaler": values.get("hires_upscaler") or DEFAULT_UPSCALER,
            "hires_prompt": values.get("hires_prompt") or ""}


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    if settings.get("image_strength") is not None:
        values["image_strength"] = settings["image_strength"]
    values["hires"] = settings.get("hires_scale") is not None
    if values["hires"]:
        values.update(hires_scale=settings["hires_scale"], hires_steps=settings.get("hires_steps") or 0,
                      hires_strength=settings.get("hires_strength") or DEFAULT_STRENGTH,
                      hires_upscaler=settings.get("hires_upscaler") or DEFAULT_UPSCALER,
                      hires_prompt=settings.get("hires_prompt") or "")
    return {**values, **region_values(settings)}


def hires_controls() -> dict:
    """The "Hires fix" accordion: a second, image-to-image pass at a larger size."""
    with gr.Accordion("Hires fix", open=False, elem_id="generate-hires"):
        controls = {"hires": gr.Checkbox(False, label="Upscale, then refine with a second pass at the larger size",
                                         elem_id="generate-hires-on")}
        with gr.Row():
            controls["hires_scale"] = gr.Slider(1, MAX_HIRES_SCALE, DEFAULT_HIRES_SCALE, step=0.25,
                                                label="Upscale by", elem_id="generate-hires-scale")
            controls["hires_upscaler"] = gr.Dropdown(list(HIRES_UPSCALERS), value=DEFAULT_UPSCALER, label="Upscaler",
                                                     elem_id="generate-hires-upscaler",
                                                     info="ControlNet upscaler: Lanczos, then jasperai's Upscaler "
                                                          "ControlNet steers the second pass (it must be on disk)")
        with gr.Row():
            controls["hires_steps"] = gr.Number(0, label="Hires steps (0: the same)", precision=0, minimum=0,
                                                maximum=MAX_STEPS, elem_id="generate-hires-steps")
            controls["hires_strength"] = gr.Slider(0.01, 1, DEFAULT_STRENGTH, step=0.01,
                                                   label="Denoising strength (how much the second pass changes)",
                                                   elem_id="generate-hires-strength")
        controls["hires_prompt"] = gr.Textbox(label="Hires prompt (empty: the prompt)", lines=2,
                                              elem_id="generate-hires-prompt")
    return controls


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    settings = with_region_masks(settings_from_values(values), values, context.inputs.save)
    image = values.get("init_image")
    if image is None:
        settings["image_strength"] = None
    requests = requests_from_settings(settings, context, image_path=context.inputs.save(image, "img2img"))
    if (values.get("prompt_lines") or "").strip():  # "Prompts from file or textbox": one job of every line
        return prompt_list_requests(requests[0], settings, values["prompt_lines"], context)
    return requests


def render(studio) -> Panel:
    with gr.Tab("Generate", id=TOOL, elem_id="tab-generate"):
        with gr.Row():
            with gr.Column(scale=5):
                shared = build_shared_controls(studio, TOOL, TOOL)
                with gr.Accordion("Image to image", open=False, elem_id="generate-img2img"):
                    init_image = input_image("Input image (optional)", "generate-init-image")
                    image_strength = gr.Slider(0, 0.99, DEFAULT_IMAGE_STRENGTH, step=0.01,
                                               label="Image strength (how much of the input is kept)",
                                               elem_id="generate-image-strength")
                regions, region_masks = region_controls(TOOL)
                hires = hires_controls()
                prompt_lines = prompt_list_controls(TOOL)
                render_demo_examples(studio, TOOL, shared.controls, {})
                panel = Panel(TOOL, (TOOL,), {**shared.controls, "image_strength": image_strength, **regions, **hires},
                              settings_from_values, values_from_settings, send_target=init_image)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL, compare=True)
    panel.view, panel.run_handler = view, studio.job(view)(build_requests)
    inputs = {**panel.controls, "init_image": init_image, **region_masks, "prompt_lines": prompt_lines}
    studio.wire_run(run, panel.run_handler, inputs, view, api_name="generate")
    studio.wire_stop(stop, api_name="stop")
    return panel
