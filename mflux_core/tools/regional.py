"""Regional prompts on the generate tool's conditioning: each region's prompt encoded by T5 on its own and
appended to the text sequence (the pooled CLIP vector stays the base prompt's), and the attention bias that
ties each region's tokens to its image tokens (mflux_core/sampling/regional.py)."""

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
from mflux_core.sampling.conditioning import Conditioning
from mflux_core.sampling.latents import latent_grid
from mflux_core.sampling.regional import regional_attention_bias, token_coverage
from mflux_core.tools.common import prompt_embeddings


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
    region_texts = [prompt_embeddings(model, region["prompt"], request.max_sequence_length)[0]
                    for region in request.regions]
    weights = [float(region.get("weight", DEFAULT_WEIGHT)) for region in request.regions]
    bias = regional_attention_bias(conditioning.text.shape[1], masks, weights, request.region_strength)
    regional = replace(conditioning, attention_mask=bias)
    regional.with_prompt_tokens(lambda text: mx.concatenate([text, *region_texts], axis=1))  # each step's prompt
    return regional
