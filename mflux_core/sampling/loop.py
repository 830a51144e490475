"""The one denoise loop. Every tool runs through it; tools differ only in their Conditioning.

The loop is a generator: it yields after each sampler step, so the caller owns evaluation,
progress, previews and cancellation (see `ModelManager`).
"""

from typing import Iterator, NamedTuple

import mlx.core as mx
import numpy as np

from mflux_core.sampling.conditioning import Conditioning, PromptChange
from mflux_core.sampling.latents import text_position_ids
from mflux_core.sampling.samplers import Euler


class TextInputs(NamedTuple):
    """One transformer pass's text: tokens, pooled vector, their position ids and the RoPE tables of [text; image]."""

    text: mx.array
    pooled: mx.array
    text_ids: mx.array
    rope: tuple[mx.array, mx.array]
    attention_mask: mx.array | None = None  # regional prompts' bias (the prompt's pass only)


def text_inputs(transformer, text: mx.array, pooled: mx.array, image_ids: mx.array,
                attention_mask: mx.array | None = None) -> TextInputs:
    text_ids = text_position_ids(text.shape[1])
    return TextInputs(text, pooled, text_ids, transformer.rope_tables(image_ids, text_ids), attention_mask)


def text_at_step(first: TextInputs, changes: tuple[PromptChange, ...], step: int) -> TextInputs:
    """The text inputs step `step` sees: the last prompt change at or before it, else the first prompt (a change
    keeps the token count, so the position ids and RoPE tables stay)."""
    change = next((c for c in reversed(changes) if c.step <= step), None)
    return first if change is None else first._replace(text=change.text, pooled=change.pooled)


class KeptLatents(NamedTuple):
    """Inpainting on a model without a mask input (diffusers' FluxInpaintPipeline): after every step, outside the
    mask the latents are the image's, noised to the next step's sigma with the run's own noise (at the last step,
    sigma 0: the image's as they are)."""

    image: mx.array  # packed latents of the image
    noise: mx.array  # the run's initial noise, packed
    repaint: mx.array  # packed mask: 1 where the model paints, 0 where the image is kept

    def applied(self, latents: mx.array, next_sigma: float) -> mx.array:
        kept = next_sigma * self.noise + (1.0 - next_sigma) * self.image
        return (1.0 - self.repaint) * kept + self.repaint * latents


def model_timestep(sigma: float) -> mx.array:
    """The timestep the transformer sees: diffusers forms t = sigma * 1000 and divides by 1000 again,
    both in float32; doing the same keeps the last bit identical."""
    t = np.float32(np.float32(sigma) * np.float32(1000.0)) / np.float32(1000.0)
    return mx.array([float(t)], dtype=mx.float32)  # mlx 0.32.4 refuses numpy scalars in lists


def denoise(
    transformer,
    latents: mx.array,
    sigmas: np.ndarray,
    conditioning: Conditioning,
    image_ids: mx.array,
    start_step: int = 0,
    sampler=None,
    kept: KeptLatents | None = None,
) -> Iterator[tuple[int, mx.array]]:
    """Flow-matching steps from `start_step` with `sampler` (default: a new Euler, mflux_core.sampling.samplers),
    the `kept` latents restored outside their mask after each; yields (step index, packed latents) after each step."""
    num_image_tokens = latents.shape[1]
    ids = image_ids
    if conditioning.reference_tokens is not None:
        ids = mx.concatenate([image_ids, conditioning.reference_ids], axis=0)
    first_prompt = text_inputs(transformer, conditioning.text, conditioning.pooled, ids, conditioning.attention_mask)
    negative = conditioning.negative
    first_negative = None if negative is None else text_inputs(transformer, negative.text, negative.pooled, ids)
    prompt_text, negative_text = first_prompt, first_negative
    guidance = None if conditioning.guidance is None else mx.array([conditioning.guidance], dtype=mx.float32)
    dtype = conditioning.text.dtype

    def velocity(latents: mx.array, sigma: float) -> mx.array:
        """One model evaluation at `sigma`: the transformer's velocity for the latents (true CFG: two passes)."""
        timestep = model_timestep(sigma)
        model_input = latents
        if conditioning.extra_channels is not None:
            model_input = mx.concatenate([model_input, conditioning.extra_channels], axis=-1)
        if conditioning.reference_tokens is not None:
            model_input = mx.concatenate([model_input, conditioning.reference_tokens], axis=1)
        blocks, singles = (None, None)
        if conditioning.control is not None:  # computed once, on the prompt, for both passes (as diffusers)
            blocks, singles = conditioning.control(latents, timestep, guidance, prompt_text.text, prompt_text.pooled)

        def velocity_for(text: TextInputs) -> mx.array:
            return transformer(
                model_input.astype(dtype), text.text, text.pooled, timestep, ids, text.text_ids, guidance=guidance,
                controlnet_block_samples=blocks, controlnet_single_block_samples=singles, rope=text.rope,
                attention_mask=text.attention_mask,
            )[:, :num_image_tokens]

        result = velocity_for(prompt_text)
        if negative is not None:
            mx.eval(result)  # one pass at a time: a lazy graph of both would hold both passes' activations
            negative_velocity = velocity_for(negative_text)
            result = negative_velocity + negative.scale * (result - negative_velocity)
        return result.astype(mx.float32)

    sampler = sampler or Euler()
    for i in range(start_step, len(sigmas) - 1):
        prompt_text = text_at_step(first_prompt, conditioning.changes, i)
        if negative is not None:
            negative_text = text_at_step(first_negative, negative.changes, i)
        latents = sampler.step(velocity, latents, sigmas, i)
        if kept is not None:
            latents = kept.applied(latents, float(np.float32(sigmas[i + 1])))
        yield i, latents
