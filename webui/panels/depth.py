"""Depth: keep a picture's layout through its depth map (FLUX.1-Depth), or through its Canny edges (FLUX.1-Canny,
or dev with BFL's Depth / Canny LoRA). The map is estimated from a photo and shown (the edges, for Canny); upload
another map to use that instead."""

from pathlib import Path

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.images.canny import DEFAULT_HIGH, DEFAULT_LOW, canny_edges
from mflux_core.registry import on_disk
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import DEPTH_ESTIMATOR, default_depth_estimator
from mflux_core.weights.resolve import ALIASES, is_offline
from webui.demo_examples import render_demo_examples
from webui.jobs import ENGINE_QUEUE, progress_html, safe_action
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.requests import RequestContext, read_upload, requests_from_settings
from webui.widgets import build_shared_controls, number_value, shared_settings, shared_values

TOOL = "depth"
CANNY_DEFAULTS = {"canny_low": DEFAULT_LOW, "canny_high": DEFAULT_HIGH}
CANNY_LABELS = {"canny_low": "The Canny low threshold", "canny_high": "The Canny high threshold"}


def canny_thresholds(values: dict) -> dict:
    return {key: int(number_value(values, key, default, CANNY_LABELS[key])) for key, default in CANNY_DEFAULTS.items()}


def settings_from_values(values: dict) -> dict:
    if not values.get("canny_edges"):
        return {"tool": TOOL, **shared_settings(values)}
    return {"tool": TOOL, **shared_settings(values), "extra": {"canny_edges": True, **canny_thresholds(values)}}


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    extra = settings.get("extra") or {}
    values["canny_edges"] = bool(extra.get("canny_edges"))
    values.update({key: extra.get(key, default) for key, default in CANNY_DEFAULTS.items()})
    return values


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    """Canny: the photo, whose edges the engine takes at the output size (else the map box's edge map). Depth: the
    depth map when there is one; otherwise the photo, whose map the engine estimates."""
    depth_map, photo = values.get("depth_map"), values.get("photo")
    if depth_map is None and photo is None:
        raise InvalidRequest("Upload a photo (its depth map is estimated, or its Canny edges taken) or a map.")
    if values.get("canny_edges") and photo is not None:
        inputs = {"image_path": context.inputs.save(photo, "depth-photo")}
    else:
        inputs = {"depth_image_path": context.inputs.save(depth_map, "depth-map")}
        if depth_map is None:
            inputs["image_path"] = context.inputs.save(photo, "depth-photo")
    return requests_from_settings(settings_from_values(values), context, **inputs)


def estimates_depth(values: dict) -> bool:
    """Whether the run has the engine estimate a depth map: a photo, no map, and not Canny's edges."""
    return values.get("depth_map") is None and values.get("photo") is not None and not values.get("canny_edges")


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
                    depth_map = input_image("Depth map, or Canny edges (made from the photo; upload another to replace "
                                            "it)", "depth-map")
                estimate = gr.Button("Make the map from the photo", elem_id="depth-estimate")
                with gr.Row():
                    canny = gr.Checkbox(False, label="Canny edges instead of a depth map", elem_id="depth-canny",
                                        info="For FLUX.1-Canny-dev, or dev with BFL's Canny LoRA: the photo's edges "
                                             "at the output size steer the layout.")
                    canny_low = gr.Number(CANNY_DEFAULTS["canny_low"], label="Canny low threshold", precision=0,
                                          minimum=0, maximum=1020, elem_id="depth-canny-low")
                    canny_high = gr.Number(CANNY_DEFAULTS["canny_high"], label="Canny high threshold", precision=0,
                                           minimum=0, maximum=1020, elem_id="depth-canny-high")
                shared = build_shared_controls(studio, TOOL, TOOL)
                render_demo_examples(studio, TOOL, shared.controls, {depth_map: lambda e: str(e.images["depth_map"])})
                panel = Panel(TOOL, (TOOL,), {**shared.controls, "canny_edges": canny, "canny_low": canny_low,
                                              "canny_high": canny_high}, settings_from_values, values_from_settings,
                              send_target=photo)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL)

    def estimate_depth(photo, canny_edges_wanted=False, low=None, high=None):
        if photo is None:
            raise InvalidRequest("Upload a photo first.")
        if canny_edges_wanted:
            thresholds = canny_thresholds({"canny_low": low, "canny_high": high})
            edges = canny_edges(read_upload(photo), thresholds["canny_low"], thresholds["canny_high"])
            return {depth_map: edges, view.status: progress_html(
                "The photo's Canny edges (a preview: a run takes them at the output size).")}
        require_estimator(studio.manager.models_dir)
        return {depth_map: studio.manager.estimate_depth(read_upload(photo)),
                view.status: progress_html("Depth map estimated: nearer is brighter. Upload another to replace it.")}

    estimated = dict(fn=safe_action(view.status, estimate_depth, clears=(depth_map,)),
                     inputs_kwargs={"photo": photo, "canny_edges_wanted": canny, "low": canny_low, "high": canny_high},
                     outputs=[depth_map, view.status], concurrency_id=ENGINE_QUEUE, concurrency_limit=1)
    estimate.click(**estimated, api_name="estimate_depth")
    photo.upload(**estimated, api_name="estimate_depth_on_upload", api_visibility="private")

    def build_checked_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
        if estimates_depth(values):
            require_estimator(studio.manager.models_dir)
        return build_requests(values, context)

    panel.view, panel.run_handler = view, studio.job(view)(build_checked_requests)
    studio.wire_run(run, panel.run_handler, {**panel.controls, "photo": photo, "depth_map": depth_map},
                    view, api_name="depth")
    studio.wire_stop(stop)
    return panel
