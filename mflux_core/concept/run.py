"""Concept heatmaps for a generated image (through the one denoise loop) or for a given image.

Generating: the text-to-image / image-to-image tool's own conditioning, run through the shared loop
with a ConceptRecorder in place of the transformer; the image equals plain generation's.
From an image: the image's latents are noised to each chosen step's sigma (with the seed's noise)
and the transformer is run once per chosen step; nothing is denoised.
"""

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import mlx.core as mx
import numpy as np
from PIL import Image

from mflux_core.concept.attention import ConceptRecorder, ConceptTokens
from mflux_core.concept.heatmap import concept_maps, heatmap_image, overlay
from mflux_core.errors import Cancelled, InvalidRequest
from mflux_core.events import Report, Step, StepClock, result_of
from mflux_core.generation import initial_noise, run_tool
from mflux_core.images.io import save_png_atomic
from mflux_core.metadata import png_text_chunks
from mflux_core.native_sizes import check_whole_tokens
from mflux_core.request import GenerationRequest, clean_prompt
from mflux_core.sampling.latents import image_position_ids, latent_grid, pack_latents
from mflux_core.sampling.loop import denoise
from mflux_core.sampling.schedule import flux_sigmas, img2img_start_step
from mflux_core.tools.common import (
    check_in_channels, packed_channels, prompt_conditioning, required_image, resolved_request, with_size,
)

DEFAULT_LAYERS = (15, 16, 17, 18)  # double-stream blocks of the 19 in FLUX.1, as mflux; clamped to smaller models
MAX_CONCEPTS = 16

@dataclass(frozen=True)
class ConceptSettings:
    concepts: tuple[str, ...]
    layers: tuple[int, ...] = ()  # double-stream block indices; empty: DEFAULT_LAYERS clamped to the model
    timesteps: tuple[int, ...] = ()  # step indices from 0; empty: every step that runs


@dataclass
class ConceptResult:
    image: Image.Image
    concepts: tuple[str, ...]
    maps: np.ndarray  # (C, h/2, w/2) in [0, 1], one per concept, on the image-token grid
    heatmaps: list[Image.Image]  # coloured maps at the image's size
    overlays: list[Image.Image]
    layers: tuple[int, ...]
    timesteps: tuple[int, ...]
    request: GenerationRequest
    text_chunks: dict[str, str]
    seconds: float
    notes: tuple[str, ...] = ()  # what the run changed from the request (a size the model makes), as generate's


def heatmap_layers(requested: Sequence[int], depth: int) -> tuple[int, ...]:
    if depth == 0:
        raise InvalidRequest("Concept heatmaps are read from the attention of the double-stream blocks, and this model "
                             "has none: use a FLUX.1 model with double-stream blocks.")
    if not requested:
        return tuple(sorted({min(i, depth - 1) for i in DEFAULT_LAYERS}))
    for layer in requested:
        if not 0 <= layer < depth:
            raise InvalidRequest(f"Heatmap layer {layer} does not exist: this model has {depth} double-stream "
                                 f"blocks, numbered 0 to {depth - 1}.")
    return tuple(sorted(set(requested)))


def heatmap_steps(requested: Sequence[int], steps: int, first: int = 0) -> tuple[int, ...]:
    if first >= steps:
        raise InvalidRequest(f"No step is left to run ({steps} steps, starting at step {first}); "
                             "lower the image strength or raise the steps.")
    if not requested:
        return tuple(range(first, steps))
    for step in requested:
        if not first <= step < steps:
            raise InvalidRequest(f"Heatmap timestep {step} is not run: this run makes steps {first} to {steps - 1}.")
    return tuple(sorted(set(requested)))


def concept_tokens(text_encoders, concepts: Sequence[str], max_sequence_length: int) -> ConceptTokens:
    """Each concept encoded on its own by T5; its tokens (without end-of-text and padding) are kept."""
    if not concepts:
        raise InvalidRequest("Give at least one concept (a word or short phrase) to map.")
    if len(concepts) > MAX_CONCEPTS:
        raise InvalidRequest(f"{len(concepts)} concepts is too many; map at most {MAX_CONCEPTS} at once.")
    tokenizer = getattr(text_encoders, "encoders", text_encoders).t5_tokenizer  # the manager's cache wraps them
    states, spans, start = [], [], 0
    for concept in concepts:
        text = clean_prompt(concept).strip()
        ids = tokenizer(text).input_ids if text else []
        count = min(len(ids) - (1 if ids and ids[-1] == tokenizer.eos_token_id else 0), max_sequence_length - 1)
        if count <= 0:
            raise InvalidRequest(f"The concept {concept!r} has no words to map.")
        states.append(text_encoders.encode(text, max_sequence_length).t5[:, :count])
        spans.append((start, start + count))
        start += count
    return ConceptTokens(mx.concatenate(states, axis=1), tuple(spans))


def _result(image, settings, recorder, grid, request, text_chunks, started, notes=()) -> ConceptResult:
    maps = concept_maps([recorder.scores[key] for key in sorted(recorder.scores)], grid)
    heatmaps = [heatmap_image(token_map, image.size) for token_map in maps]
    return ConceptResult(image=image, concepts=settings.concepts, maps=maps, heatmaps=heatmaps,
                         overlays=[overlay(image, heatmap) for heatmap in heatmaps], layers=recorder.layers,
                         timesteps=tuple(sorted(recorder.steps)), request=request, text_chunks=text_chunks,
                         seconds=time.perf_counter() - started, notes=notes)


def concept_request(request: GenerationRequest) -> GenerationRequest:
    """The request as the `generate` tool's, validated; ConceptRecorder counts one transformer call a step."""
    request = request.with_(tool="generate").validated()
    if request.uses_true_cfg:
        raise InvalidRequest("Concept attention maps one transformer pass a step: leave true CFG off (scale 1).")
    if request.sampler == "heun":
        raise InvalidRequest("Concept attention maps one transformer pass a step: Heun takes two; choose Euler, "
                             "Euler a, DPM++ 2M, DPM++ 2M SDE or UniPC.")
    return request


def generate_with_concepts(manager, request: GenerationRequest, settings: ConceptSettings,
                           report: Report | None = None, cancelled: Callable[[], bool] | None = None) -> ConceptResult:
    """Generate like the `generate` tool (text-to-image, or image-to-image with image_path) and map the concepts;
    reports what the manager's generate() reports."""
    request = concept_request(request)
    started = time.perf_counter()
    with manager.session(request, cancelled, report) as model:
        inputs, notes = manager.sized_inputs(model, request)
        request = inputs.request
        steps = request.steps or model.default_steps
        first = 0 if inputs.start_image_latents is None else img2img_start_step(steps, inputs.image_strength or 0.0)
        layers = heatmap_layers(settings.layers, model.config.num_layers)
        timesteps = heatmap_steps(settings.timesteps, steps, first)
        recorder = ConceptRecorder(model.transformer, concept_tokens(model.text_encoders, settings.concepts,
                                                                     request.max_sequence_length),
                                   layers, timesteps, first_step=first)
        preview = manager.step_preview(model) if report else None

        def step_done(step: Step) -> None:
            recorder.settle()
            if report is not None:
                report(step)

        image = result_of(run_tool(replace(model, transformer=recorder), inputs, cancelled, preview), step_done)
        extras = {"steps": steps, "guidance": inputs.conditioning.guidance,
                  "concept_attention": {"concepts": list(settings.concepts), "layers": list(layers),
                                        "timesteps": list(timesteps)}}
        grid = latent_grid(request.height, request.width, model.vae_scale_factor)
        return _result(image, settings, recorder, grid, request, png_text_chunks(request, extras), started, notes)


def concepts_from_image(manager, request: GenerationRequest, settings: ConceptSettings,
                        report: Report | None = None,
                        cancelled: Callable[[], bool] | None = None) -> ConceptResult:
    """Map the concepts in the image at request.image_path (described by request.prompt); a Step (without a
    preview) is reported after each chosen step."""
    request = concept_request(request)
    photo = required_image(request.image_path, "an image to map the concepts in", "--image-path")
    started = time.perf_counter()
    with manager.session(request, cancelled, report) as model:
        check_in_channels(model, packed_channels(model), "concept attention", "base (dev or schnell)")
        request = resolved_request(model, with_size(request, photo))
        check_whole_tokens(model.token_side, (request.width, request.height), "The image's size")
        steps = request.steps or model.default_steps
        layers = heatmap_layers(settings.layers, model.config.num_layers)
        timesteps = heatmap_steps(settings.timesteps, steps)
        recorder = ConceptRecorder(model.transformer, concept_tokens(model.text_encoders, settings.concepts,
                                                                     request.max_sequence_length), layers, timesteps)
        conditioning = prompt_conditioning(model, request)
        grid = latent_grid(request.height, request.width, model.vae_scale_factor)
        clean = manager.encoded_image(model, photo, request.width, request.height, request.forced_vae_tile)
        noise = pack_latents(initial_noise(model, request, *grid))
        sigmas = flux_sigmas(steps, clean.shape[1], model.scheduler_config, request.schedule)
        image_ids = image_position_ids(*grid)
        clock = StepClock()
        for done, step in enumerate(timesteps, start=1):
            sigma = float(np.float32(sigmas[step]))
            recorder.step = step
            # One transformer call at this step's sigma; the Euler update it also yields is never evaluated.
            next(denoise(recorder, sigma * noise + (1.0 - sigma) * clean, sigmas, conditioning, image_ids, step))
            recorder.settle()
            if cancelled is not None and cancelled():
                raise Cancelled(f"Stopped after step {done} of {len(timesteps)}.")
            if report is not None:
                report(clock.step(done, len(timesteps)))
        shown = photo.convert("RGB").resize((request.width, request.height), Image.Resampling.BICUBIC)
        return _result(shown, settings, recorder, grid, request, {}, started)


def concept_slug(concept: str, index: int) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-")[:40]
    return slug or f"concept-{index + 1}"


def save_concept_result(result: ConceptResult, output: Path, maps_folder: Path | None = None) -> list[Path]:
    """The image at `output`, then <stem>_heatmap_<concept>.png and <stem>_overlay_<concept>.png per concept
    (beside it, or in `maps_folder`)."""
    output = Path(output)
    written = [save_png_atomic(result.image, output, result.text_chunks, overwrite=True)]
    maps = Path(maps_folder) / output.name if maps_folder is not None else output
    slugs = [concept_slug(concept, index) for index, concept in enumerate(result.concepts)]
    for index, slug in enumerate(slugs):
        if slugs.count(slug) > 1:  # "Cat" and "cat": keep both files
            slug = f"{slug}-{index + 1}"
        for kind, picture in (("heatmap", result.heatmaps[index]), ("overlay", result.overlays[index])):
            written.append(save_png_atomic(picture, maps.with_name(f"{maps.stem}_{kind}_{slug}.png"), overwrite=True))
    return written
