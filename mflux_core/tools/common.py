"""Pieces every tool uses: prompt conditioning, default guidance, encoding an input image."""

import mlx.core as mx
from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.images.io import pil_to_pixels
from mflux_core.request import GenerationRequest, clean_prompt
from mflux_core.sampling.conditioning import Conditioning
from mflux_core.sampling.latents import pack_latents


def prompt_conditioning(model: FluxModel, request: GenerationRequest, default_guidance: float = 3.5) -> Conditioning:
    embeddings = model.text_encoders.encode(clean_prompt(request.prompt), request.max_sequence_length)
    guidance = None
    if model.has_guidance:
        guidance = default_guidance if request.guidance is None else request.guidance
    return Conditioning(
        text=embeddings.t5.astype(model.dtype), pooled=embeddings.pooled.astype(model.dtype), guidance=guidance
    )


def encode_image(model: FluxModel, image: Image.Image, width: int, height: int) -> mx.array:
    """An RGB image resized like diffusers' VaeImageProcessor, VAE-encoded (posterior mean) and packed."""
    pixels = mx.array(pil_to_pixels(image, width, height)).astype(model.vae_dtype)
    return pack_latents(model.vae.encode(pixels).astype(mx.float32))
