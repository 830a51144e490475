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
from mflux_core.errors import InvalidRequest
from mflux_core.request import GenerationRequest, whole_text
from webui.gallery import result_path
from webui.jobs import follow, image_progress, page_job
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
    indices = tuple(whole_text(part) for part in parts)
    if None in indices:
        raise InvalidRequest(f"{what} must be whole numbers from 0 separated by spaces or commas, not "
                             f"{(text or '')[:80]!r}.")
    return indices


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


def save_to_outputs(outputs: Path, result, from_image: bool) -> list[tuple[str, str]]:
    """(path, caption) of what was written: the image (into the history unless it was uploaded), then the maps."""
    image_path = result_path(outputs, result.request.with_(tool=TOOL))
    maps_folder = outputs / MAPS_FOLDER / image_path.parent.name
    written = save_concept_result(result, maps_folder / image_path.name if from_image else image_path, maps_folder)
    captions = ["image"] + [f"{kind}: {concept}" for concept in result.concepts for kind in ("heatmap", "overlay")]
    return [(str(path), caption) for path, caption in zip(written, captions)]


def run_concepts(studio, view, values: dict, session: str):
    """The Run handler: one result per seed, streamed like every studio job."""
    saved: list[tuple[str, str]] = []

    def work(cancel):
        settings = concept_settings(values)
        from_image = values.get("mode") == FROM_IMAGE
        requests = build_requests(values, studio.request_context())
        run = concepts_from_image if from_image else generate_with_concepts
        notes = []
        for index, request in enumerate(requests, start=1):
            result = yield from follow(lambda report: run(studio.manager, request, settings, report, cancel.is_set),
                                       cancel, image_progress(view, index, len(requests)))
            notes.extend(note for note in result.notes if note not in notes)
            written = save_to_outputs(studio.folders.outputs, result, from_image)
            saved.extend(written)
            yield {view.preview: written[2][0], view.results: saved}  # the first concept's overlay
        layers = " ".join(map(str, result.layers))
        return " ".join([f"Done: {', '.join(settings.concepts)} mapped over layers {layers}; "
                         f"{len(saved)} images saved to {studio.folders.outputs}.", *notes])

    yield from page_job(studio, session, view.status, work, final=lambda: {view.results: saved})


def render(studio) -> Panel:
    with gr.Tab("Concepts", id=TOOL, elem_id="tab-concept"):
        with gr.Row():
            with gr.Column(scale=5):
                mode = gr.Radio([GENERATE, FROM_IMAGE], value=GENERATE, label="Mode", elem_id="concept-mode")
                concepts = gr.Textbox(label="Concepts (commas between them; several compete for each region)",
                                      placeholder="dragon, castle, sky", elem_id="concept-concepts")
                image = input_image("Image to map (or an input image for image to image)", "concept-image")
                shared = build_shared_controls(studio, "generate", TOOL, offer_true_cfg=False)
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
