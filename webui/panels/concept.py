"""Concepts: heatmaps of where words are in a generated or uploaded image (ConceptAttention).

The generated image goes to the history like any other (its metadata restores into Generate);
heatmaps and overlays go to `<outputs>/concepts/<date>/`, beside the history rather than in it.
"""

import re
from pathlib import Path

import gradio as gr

from mflux_core.concept.run import (
    ConceptSettings, concepts_from_image, generate_with_concepts, save_concept_result,
)
from mflux_core.errors import Cancelled, InvalidRequest
from mflux_core.request import GenerationRequest
from webui.gallery import result_path
from webui.jobs import StepUpdate, error_text, progress_html, report_failure, run_with_progress, step_text
from webui.panels import Panel, input_image, result_column
from webui.requests import RequestContext, requests_from_settings
from webui.widgets import build_shared_controls, shared_settings, shared_values

TOOL = "concept"
GENERATE, FROM_IMAGE = "Generate an image", "Map an uploaded image"
MAPS_FOLDER = "concepts"


def parse_concepts(text: str | None) -> tuple[str, ...]:
    """Concepts separated by commas or new lines."""
    return tuple(part.strip() for part in re.split(r"[,\n]", text or "") if part.strip())


def parse_indices(text: str | None, what: str) -> tuple[int, ...]:
    """'15 16, 17' -> (15, 16, 17); empty -> () (the default)."""
    parts = [part for part in re.split(r"[\s,]+", text or "") if part]
    if not all(part.isdigit() for part in parts):
        raise InvalidRequest(f"{what} must be whole numbers from 0 separated by spaces or commas, not {text!r}.")
    return tuple(int(part) for part in parts)


def concept_settings(values: dict) -> ConceptSettings:
    concepts = parse_concepts(values.get("concepts"))
    if not concepts:
        raise InvalidRequest("Type at least one concept (a word or short phrase) to map.")
    return ConceptSettings(concepts, parse_indices(values.get("layers"), "Heatmap layers"),
                           parse_indices(values.get("timesteps"), "Heatmap steps"))


def settings_from_values(values: dict) -> dict:
    return {"tool": "generate", **shared_settings(values)}


def values_from_settings(settings: dict) -> dict:
    return shared_values(settings)


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    image = values.get("image")
    if values.get("mode") == FROM_IMAGE and image is None:
        raise InvalidRequest("Upload the image to map the concepts in.")
    return requests_from_settings(settings_from_values(values), context,
                                  image_path=context.inputs.save(image, "concept-image"))


class ConceptEngine:
    """What run_with_progress drives: the manager's generate, with concept maps."""

    def __init__(self, manager, settings: ConceptSettings, from_image: bool):
        self.manager, self.settings, self.from_image = manager, settings, from_image

    @property
    def download(self) -> dict | None:
        """The manager's download in progress, which run_with_progress reports instead of steps."""
        return self.manager.download

    def generate(self, request: GenerationRequest, on_step=None, cancelled=None):
        if self.from_image:
            return concepts_from_image(self.manager, request, self.settings, on_step=on_step, cancelled=cancelled)
        return generate_with_concepts(self.manager, request, self.settings, on_step=on_step, cancelled=cancelled)


def save_to_outputs(outputs: Path, result, from_image: bool) -> list[tuple[str, str]]:
    """(path, caption) of what was written: the image (into the history unless it was uploaded), then the maps."""
    image_path = result_path(outputs, result.request.with_(tool=TOOL))
    maps_folder = outputs / MAPS_FOLDER / image_path.parent.name
    written = save_concept_result(result, maps_folder / image_path.name if from_image else image_path, maps_folder)
    captions = ["image"] + [f"{kind}: {concept}" for concept in result.concepts for kind in ("heatmap", "overlay")]
    return [(str(path), caption) for path, caption in zip(written, captions)]


def run_concepts(studio, view, values: dict, session: str):
    """The Run handler: one result per seed, streamed like every studio job."""
    cancel = studio.jobs.begin(session)
    saved: list[tuple[str, str]] = []
    failure = None
    try:
        yield {view.status: progress_html("Preparing…")}
        settings = concept_settings(values)
        from_image = values.get("mode") == FROM_IMAGE
        requests = build_requests(values, studio.request_context())
        engine = ConceptEngine(studio.manager, settings, from_image)
        for index, request in enumerate(requests, start=1):
            for update in run_with_progress(engine, request, cancel):
                if isinstance(update, StepUpdate):
                    changes = {view.status: progress_html(step_text(update, index, len(requests)), update.step,
                                                          update.total)}
                    if update.preview is not None:
                        changes[view.preview] = update.preview
                    yield changes
                    continue
                result = update
                written = save_to_outputs(studio.folders.outputs, result, from_image)
                saved.extend(written)
                yield {view.preview: written[2][0], view.results: saved}  # the first concept's overlay
        layers = " ".join(map(str, result.layers))
        message, kind = (f"Done: {', '.join(settings.concepts)} mapped over layers {layers}; "
                         f"{len(saved)} images saved to {studio.folders.outputs}."), "done"
    except Cancelled as stopped:
        message, kind = str(stopped), "stopped"
    except Exception as error:  # the server must survive anything a user sends
        failure, message, kind = error, error_text(error), "error"
    finally:
        studio.jobs.end(session, cancel)
    yield {view.status: progress_html(message, kind=kind), view.results: saved}
    report_failure(failure, message)


def render(studio) -> Panel:
    with gr.Tab("Concepts", id=TOOL, elem_id="tab-concept"):
        with gr.Row():
            with gr.Column(scale=5):
                mode = gr.Radio([GENERATE, FROM_IMAGE], value=GENERATE, label="Mode", elem_id="concept-mode")
                concepts = gr.Textbox(label="Concepts (commas between them; several compete for each region)",
                                      placeholder="dragon, castle, sky", elem_id="concept-concepts")
                image = input_image("Image to map (or an input image for image to image)", "concept-image")
                shared = build_shared_controls(studio, "generate", TOOL)
                with gr.Accordion("Heatmap layers and steps", open=False):
                    layers = gr.Textbox("", label="Double-stream blocks", placeholder="15 16 17 18 (clamped to the "
                                        "model)", elem_id="concept-layers")
                    timesteps = gr.Textbox("", label="Steps (from 0)", placeholder="all", elem_id="concept-timesteps")
                panel = Panel(TOOL, (), shared.controls, settings_from_values, values_from_settings, send_target=image)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL)

    def handler(request: gr.Request, **values):
        yield from run_concepts(studio, view, values, request.session_hash if request else "")

    panel.view, panel.run_handler = view, handler
    inputs = {**panel.controls, "mode": mode, "concepts": concepts, "image": image, "layers": layers,
              "timesteps": timesteps}
    studio.wire_run(run, handler, inputs, view, api_name="concept")
    studio.wire_stop(stop)
    return panel
