"""Run one request through the shared loop: noise, schedule, img2img start, denoise, decode."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generator

import mlx.core as mx
import numpy as np
from PIL import Image

from mflux_core.errors import Cancelled, InvalidRequest, StudioError
from mflux_core.events import Step, StepClock
from mflux_core.flux_model import FluxModel
from mflux_core.images.io import pixels_to_pil
from mflux_core.models.transformer import FluxTransformerConfig
from mflux_core.request import GenerationRequest
from mflux_core.sampling.conditioning import Conditioning
from mflux_core.sampling.latents import (
    image_position_ids, latent_grid, load_init_noise, pack_latents, seeded_noise, slerp, unpack_latents,
)
from mflux_core.sampling.loop import KeptLatents, denoise
from mflux_core.sampling.samplers import new_sampler
from mflux_core.sampling.schedule import flux_sigmas, img2img_start_step

# preview(step done (1-based), packed latents after the step, the clean latents the step points at (packed),
# latent grid (h, w)) -> the image shown for it
Preview = Callable[[int, mx.array, mx.array, tuple[int, int]], Image.Image]


def denoised_estimate(before: mx.array, after: mx.array, sigma_before: float, sigma_after: float) -> mx.array:
    """The clean latents a step points at: flow matching's x0 = x - sigma v, v the step's own slope (Euler's
    velocity; the other samplers' average over the step, Euler a's with its fresh noise in it). What A1111 and
    ComfyUI preview: the picture the model aims at, where the latents themselves are still mostly noise."""
    return after - sigma_after * (after - before) / (sigma_after - sigma_before)


@dataclass
class ToolInputs:
    """What a tool module builds for the runner."""

    request: GenerationRequest  # the request with everything the tool decided filled in (size, guidance)
    conditioning: Conditioning
    start_image_latents: mx.array | None = None  # packed latents of the img2img input
    image_strength: float | None = None  # mflux meaning: how much of the start image is kept
    finish: Callable[[Image.Image], Image.Image] | None = None  # e.g. Fill's keep-unmasked paste
    # (width, height) sampled and decoded when not the request's: an in-context diptych is two of its panels
    canvas: tuple[int, int] | None = None
    notes: tuple[str, ...] = ()  # what the tool did to its inputs that the user should hear of (a resize)
    controlnets: tuple[FluxTransformerConfig, ...] = ()  # the side networks run before each transformer pass (the plan)
    estimated: tuple[tuple[str, int], ...] = ()  # (phase, peak bytes above the weights) of side models the tool ran
    # packed mask, 1 where the model paints: outside it the start image's latents are kept (inpainting on a base model)
    repaint_mask: mx.array | None = None
    recorded: dict = field(default_factory=dict)  # what the tool decided beyond the request, kept in the metadata


def initial_noise(model: FluxModel, request: GenerationRequest, h: int, w: int) -> mx.array:
    """The seed's noise (or the init noise file's), moved `variation_strength` of the way towards the variation
    seed's (A1111's variation seed)."""
    shape = (1, model.latent_channels, h, w)
    noise = load_init_noise(Path(request.init_noise_path), shape) if request.init_noise_path else \
        seeded_noise(request.seed, shape)
    if request.variation_strength:
        noise = slerp(request.variation_strength, noise, seeded_noise(request.variation_seed, shape))
    return noise


def run_tool(
    model: FluxModel,
    inputs: ToolInputs,
    cancelled: Callable[[], bool] | None = None,
    preview: Preview | None = None,
) -> Generator[Step, None, Image.Image]:
    """Yields a Step after each denoise step (with a preview when given one); returns the decoded image."""
    request = inputs.request
    width, height = inputs.canvas or (request.width, request.height)
    h, w = latent_grid(height, width, model.vae_scale_factor)
    steps = request.steps or model.default_steps
    noise = latents = pack_latents(initial_noise(model, request, h, w))
    sigmas = flux_sigmas(steps, latents.shape[1], model.scheduler_config, request.schedule)
    start = 0
    if inputs.start_image_latents is not None:
        start = img2img_start_step(steps, inputs.image_strength or 0.0)
        if start >= steps:
            raise InvalidRequest(
                f"With image strength {inputs.image_strength} and {steps} steps no step is left to run; "
                "lower the image strength or raise the steps."
            )
        sigma = float(np.float32(sigmas[start]))
        latents = sigma * latents + (1.0 - sigma) * inputs.start_image_latents
    image_ids = image_position_ids(h, w)
    clock = StepClock()
    sampler = new_sampler(request.sampler, request.seed)
    before = latents
    kept = None if inputs.repaint_mask is None else KeptLatents(inputs.start_image_latents, noise, inputs.repaint_mask)
    for i, latents in denoise(model.transformer, latents, sigmas, inputs.conditioning, image_ids, start, sampler,
                              kept):
        mx.eval(latents)
        if cancelled is not None and cancelled():
            raise Cancelled(f"Stopped after step {i + 1} of {steps}.")
        shown = None
        if preview is not None:
            aim = denoised_estimate(before, latents, float(sigmas[i]), float(sigmas[i + 1]))
            shown = preview(i + 1, latents, aim, (h, w))
        yield clock.step(i + 1, steps, shown)
        before = latents
    image = decode_latents(model, latents, (h, w), forced_tile=request.forced_vae_tile)
    return inputs.finish(image) if inputs.finish else image


def decode_latents(model: FluxModel, packed: mx.array, grid: tuple[int, int], forced_tile: int = 0) -> Image.Image:
    """Packed latents -> image, decoded in tiles when the whole would not fit the model's memory allowance."""
    # MLX's buffer cache is full of the denoise step's buffers, of sizes the VAE never asks for; decoding
    # beside them took 95 s instead of 66 at 1024x1024 on the CPU (bench/RESULTS.md, 2026-12-03).
    mx.clear_cache()
    f = model.vae_scale_factor
    tile = model.vae_tile(grid[0] * f, grid[1] * f, "decode", forced_tile)
    pixels = model.vae.decode(unpack_latents(packed, *grid), tiled=tile is not None, tile_size=tile or 0)
    if not mx.all(mx.isfinite(pixels)).item():
        precision = str(model.dtype).removeprefix("mlx.core.")
        cause = "its weights hold NaN or overflow float32" if model.dtype == mx.float32 else \
            f"its numbers overflowed in {precision}, or its weights hold NaN; try --dtype float32"
        raise StudioError(f"The image came out as NaN (not a number): {cause}.")
    return pixels_to_pil(pixels.astype(mx.float32))
