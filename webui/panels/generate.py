"""Generate: text-to-image, and image-to-image when an input image is given."""

import gradio as gr

from mflux_core.request import GenerationRequest
from webui.demo_examples import render_demo_examples
from webui.face_fix_ui import face_fix_controls, face_fix_settings, face_fix_values
from webui.hires_ui import UPSCALER_NOTES, hires_controls, hires_settings, hires_values
from webui.image_batch_ui import image_batch_controls, image_batch_requests, refuse_mixed_inputs
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.prompt_list_ui import prompt_list_controls, prompt_list_requests
from webui.regions_ui import region_controls, region_settings, region_values, with_region_masks
from webui.requests import RequestContext, requests_from_settings
from webui.widgets import build_shared_controls, number_value, shared_settings, shared_values

TOOL = "generate"
DEFAULT_IMAGE_STRENGTH = 0.4


def settings_from_values(values: dict) -> dict:
    face_fix = face_fix_settings(values)
    return {"tool": TOOL, **shared_settings(values),
            "image_strength": number_value(values, "image_strength", DEFAULT_IMAGE_STRENGTH, "Image strength"),
            **region_settings(values), **hires_settings(values), **({"extra": face_fix} if face_fix else {})}


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    if settings.get("image_strength") is not None:
        values["image_strength"] = settings["image_strength"]
    return {**values, **hires_values(settings), **region_values(settings),
            **face_fix_values(settings.get("extra") or {})}


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    settings = with_region_masks(settings_from_values(values), values, context.inputs.save)
    image, batch = values.get("init_image"), values.get("batch_images") or []
    if batch:
        refuse_mixed_inputs("one input image" if image is not None else None, values.get("prompt_lines"))
    elif image is None:
        settings["image_strength"] = None
    requests = requests_from_settings(settings, context, image_path=context.inputs.save(image, "img2img"))
    if batch:  # A1111's img2img batch: one job of every image
        return image_batch_requests(requests[0], settings, batch, values.get("batch_png_info"), context,
                                    lambda upload: {"image_path": context.inputs.save(upload, "img2img")})
    if (values.get("prompt_lines") or "").strip():  # "Prompts from file or textbox": one job of every line
        return prompt_list_requests(requests[0], settings, values, context)
    return requests


def render(studio) -> Panel:
    with gr.Tab("Generate", id=TOOL, elem_id="tab-generate"):
        with gr.Row():
            with gr.Column(scale=5):
                shared = build_shared_controls(studio, TOOL, TOOL)
                with gr.Accordion("Image to image", open=False, elem_id="generate-img2img") as img2img:
                    init_image = input_image("Input image (optional)", "generate-init-image")
                    image_strength = gr.Slider(0, 0.99, DEFAULT_IMAGE_STRENGTH, step=0.01,
                                               label="Image strength (how much of the input is kept)",
                                               elem_id="generate-image-strength")
                    batch = image_batch_controls(TOOL, "input images")
                regions, region_masks = region_controls(TOOL)
                _, hires = hires_controls(TOOL, UPSCALER_NOTES, studio.manager.models_dir)
                _, face_fix = face_fix_controls(TOOL)
                prompt_list = prompt_list_controls(TOOL)
                render_demo_examples(studio, TOOL, shared.controls, {})
                panel = Panel(TOOL, (TOOL,), {**shared.controls, "image_strength": image_strength, **regions, **hires,
                                              **face_fix},
                              settings_from_values, values_from_settings, send_target=init_image, send_opens=img2img)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL, compare=True)
    panel.view, panel.run_handler = view, studio.job(view)(build_requests)
    inputs = {**panel.controls, "init_image": init_image, **region_masks, **prompt_list, **batch}
    studio.wire_run(run, panel.run_handler, inputs, view, api_name="generate")
    studio.wire_stop(stop, api_name="stop")
    return panel
