"""Depth: keep a picture's layout through its depth map (FLUX.1-Depth). The map is estimated from a
photo and shown; upload another map to use that instead."""

from pathlib import Path

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.registry import on_disk
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import DEPTH_ESTIMATOR, default_depth_estimator
from mflux_core.weights.resolve import ALIASES, is_offline
from webui.demo_examples import render_demo_examples
from webui.jobs import ENGINE_QUEUE, progress_html, safe_action
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.requests import RequestContext, read_upload, requests_from_settings
from webui.widgets import build_shared_controls, shared_settings, shared_values

TOOL = "depth"


def settings_from_values(values: dict) -> dict:
    return {"tool": TOOL, **shared_settings(values)}


def values_from_settings(settings: dict) -> dict:
    return shared_values(settings)


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    """The depth map when there is one; otherwise the photo, whose map the engine estimates."""
    depth_map, photo = values.get("depth_map"), values.get("photo")
    if depth_map is None and photo is None:
        raise InvalidRequest("Upload a photo (its depth map is estimated) or a depth map.")
    inputs = {"depth_image_path": context.inputs.save(depth_map, "depth-map")}
    if depth_map is None:
        inputs["image_path"] = context.inputs.save(photo, "depth-photo")
    return requests_from_settings(settings_from_values(values), context, **inputs)


def require_estimator(models_dir: Path | None) -> None:
    """Refuse, with what to do instead, when a map would have to be estimated by an estimator that is not on disk
    and cannot be downloaded (offline; the shipped demo estimator missing too)."""
    if is_offline() and not on_disk(default_depth_estimator(models_dir), models_dir):
        raise InvalidRequest(
            "No depth estimator is on this machine and downloads are off: upload a depth map (nearer is brighter), "
            f"or put {ALIASES[DEPTH_ESTIMATOR]} into the models folder as {DEPTH_ESTIMATOR}/.")


def render(studio) -> Panel:
    with gr.Tab("Depth", id=TOOL, elem_id="tab-depth"):
        with gr.Row():
            with gr.Column(scale=5):
                with gr.Row():
                    photo = input_image("Photo", "depth-photo")
                    depth_map = input_image("Depth map (estimated; upload another to replace it)", "depth-map")
                estimate = gr.Button("Estimate depth from the photo", elem_id="depth-estimate")
                shared = build_shared_controls(studio, TOOL, TOOL)
                render_demo_examples(studio, TOOL, shared.controls, {depth_map: lambda e: str(e.images["depth_map"])})
                panel = Panel(TOOL, (TOOL,), shared.controls, settings_from_values, values_from_settings,
                              send_target=photo)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL)

    def estimate_depth(photo):
        if photo is None:
            raise InvalidRequest("Upload a photo first.")
        require_estimator(studio.manager.models_dir)
        return {depth_map: studio.manager.estimate_depth(read_upload(photo)),
                view.status: progress_html("Depth map estimated: nearer is brighter. Upload another to replace it.")}

    estimated = dict(fn=safe_action(view.status, estimate_depth), inputs_kwargs={"photo": photo},
                     outputs=[depth_map, view.status], concurrency_id=ENGINE_QUEUE, concurrency_limit=1)
    estimate.click(**estimated, api_name="estimate_depth")
    photo.upload(**estimated, api_name="estimate_depth_on_upload", api_visibility="private")

    def build_checked_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
        if values.get("depth_map") is None and values.get("photo") is not None:
            require_estimator(studio.manager.models_dir)
        return build_requests(values, context)

    panel.view, panel.run_handler = view, studio.job(view)(build_checked_requests)
    studio.wire_run(run, panel.run_handler, {**panel.controls, "photo": photo, "depth_map": depth_map},
                    view, api_name="depth")
    studio.wire_stop(stop)
    return panel
