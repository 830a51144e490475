"""Regional prompts on the generate tool's conditioning: each region's prompt encoded by T5 on its own and
appended to the text sequence (the pooled CLIP vector stays the base prompt's), and the attention bias that
ties each region's tokens to its image tokens (mflux_core/sampling/regional.py). A region's prompt may change by
step as the base prompt may (A1111's prompt editing): each step sees every prompt as it stands then."""

from dataclasses import replace

import mlx.core as mx
import numpy as np
from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.errors import InvalidRequest
from mflux_core.images.io import load_image
from mflux_core.images.masks import binarize_mask
from mflux_core.regions import DEFAULT_WEIGHT, box_in_pixels, check_regions_fit
from mflux_core.request import GenerationRequest, existing_file
from mflux_core.sampling.conditioning import Conditioning, PromptChange
from mflux_core.sampling.latents import latent_grid
from mflux_core.sampling.regional import regional_attention_bias, token_coverage
from mflux_core.tools.common import scheduled_embeddings


def region_pixels(region: dict, width: int, height: int) -> np.ndarray:
    """The (height, width) bool pixels of a region: its box, or its mask image (white) resized to the image."""
    if region.get("mask_path") is None:
        left, top, right, bottom = box_in_pixels(region, width, height)
        pixels = np.zeros((height, width), dtype=bool)
        pixels[top:bottom, left:right] = True
        return pixels
    mask = load_image(existing_file(region["mask_path"], "region mask"))
    return binarize_mask(mask.resize((width, height), Image.Resampling.NEAREST))


def regional_conditioning(model: FluxModel, request: GenerationRequest, conditioning: Conditioning) -> Conditioning:
    """`conditioning` (the base prompt's) with the request's regions; unchanged when it has none."""
    if not request.regions:
        return conditioning
    check_regions_fit(request.regions, request.width, request.height)
    grid = latent_grid(request.height, request.width, model.vae_scale_factor)
    masks = []
    for number, region in enumerate(request.regions, 1):
        tokens = token_coverage(region_pixels(region, request.width, request.height), grid)
        if not tokens.any():
            raise InvalidRequest(f"Region {number} covers no image token: a token is a "
                                 f"{2 * model.vae_scale_factor}-pixel square, make the region at least half of one.")
        masks.append(tokens)
    steps = request.steps or model.default_steps
    regions = [scheduled_embeddings(model, region["prompt"], steps, request.max_sequence_length)
               for region in request.regions]
    weights = [float(region.get("weight", DEFAULT_WEIGHT)) for region in request.regions]
    bias = regional_attention_bias(conditioning.text.shape[1], masks, weights, request.region_strength)
    return with_region_texts(replace(conditioning, attention_mask=bias), regions)


def with_region_texts(conditioning: Conditioning, regions: list) -> Conditioning:
    """`conditioning` with each region's T5 tokens after the prompt's, at every step as each prompt stands then;
    `regions`: each region's ((first tokens, pooled), later changes) as scheduled_embeddings gives them."""
    def tokens_at(first: mx.array, changes, step: int) -> mx.array:
        return next((change.text for change in reversed(changes) if change.step <= step), first)

    def pooled_at(step: int) -> mx.array:
        return next((change.pooled for change in reversed(conditioning.changes) if change.step <= step),
                    conditioning.pooled)

    def text_at(step: int) -> mx.array:
        return mx.concatenate([tokens_at(conditioning.text, conditioning.changes, step),
                               *(tokens_at(first, changes, step) for (first, _), changes in regions)], axis=1)

    steps = sorted({change.step for change in conditioning.changes} |
                   {change.step for _, changes in regions for change in changes})
    return replace(conditioning, text=text_at(0),
                   changes=tuple(PromptChange(step, text_at(step), pooled_at(step)) for step in steps))
