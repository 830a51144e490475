"""The rectified-flow objective FLUX.1 is trained with, for the transformer in mflux_core.models.

A clean packed latent x0 and noise e are mixed at sigma: x = (1 - sigma) x0 + sigma e; the
transformer predicts the velocity e - x0, which is what the sampler's Euler step integrates
(sampling/loop.py). Sigmas are drawn like the inference schedule: uniform, then shifted by the
same resolution-dependent mu (sampling/schedule.py), so training spends its effort where
sampling needs it.
"""

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mflux_core.sampling.schedule import resolution_shift_mu


@dataclass
class FlowBatch:
    latents: mx.array  # (B, N, C) clean packed latents (the target image)
    noise: mx.array  # (B, N, C) standard normal
    sigmas: mx.array  # (B,) in (0, 1)
    text: mx.array  # (B, L, joint_dim) T5 hidden states
    pooled: mx.array  # (B, pooled_dim) CLIP pooled output
    image_ids: mx.array  # (N, 3)
    guidance: mx.array | None = None  # (B,) for models with a guidance embedding
    extra_channels: mx.array | None = None  # (B, N, C') concatenated per token (Fill, Depth)
    reference_tokens: mx.array | None = None  # (B, M, C) appended after the image tokens (Kontext)
    reference_ids: mx.array | None = None  # (M, 3)
    rope: tuple | None = None  # the transformer's RoPE tables for [text; image (; reference)]: needed under mx.compile
    token_weights: mx.array | None = None  # (B, N) loss weight per image token; None weighs all alike


def shifted_sigmas(rng: np.random.Generator, count: int, image_tokens: int, scheduler_config: dict) -> np.ndarray:
    """Training sigmas: uniform in (0, 1), shifted as the inference schedule shifts them."""
    u = rng.uniform(0.0, 1.0, size=count).clip(1e-4, 1 - 1e-4)
    if scheduler_config.get("use_dynamic_shifting", False):
        shift = math.exp(resolution_shift_mu(image_tokens, scheduler_config))
    else:
        shift = scheduler_config.get("shift", 1.0)
    return (shift * u / (1 + (shift - 1) * u)).astype(np.float32)


def noisy_latents(latents: mx.array, noise: mx.array, sigmas: mx.array) -> mx.array:
    s = sigmas[:, None, None]
    return (1 - s) * latents + s * noise


def predicted_velocity(transformer, batch: FlowBatch, text: mx.array | None = None,
                       pooled: mx.array | None = None) -> mx.array:
    """The transformer's velocity for the batch's image tokens (text/pooled override the batch's)."""
    x = noisy_latents(batch.latents, batch.noise, batch.sigmas)
    ids = batch.image_ids
    if batch.extra_channels is not None:
        x = mx.concatenate([x, batch.extra_channels], axis=-1)
    if batch.reference_tokens is not None:
        x = mx.concatenate([x, batch.reference_tokens], axis=1)
        ids = mx.concatenate([ids, batch.reference_ids], axis=0)
    text = batch.text if text is None else text
    pooled = batch.pooled if pooled is None else pooled
    text_ids = mx.zeros((text.shape[1], 3), dtype=mx.float32)
    velocity = transformer(x, text, pooled, batch.sigmas, ids, text_ids, guidance=batch.guidance, rope=batch.rope)
    return velocity[:, : batch.latents.shape[1]]


def velocity_loss(velocity: mx.array, batch: FlowBatch, target: mx.array | None = None) -> mx.array:
    """Squared error between a predicted velocity and the target (by default the true one, noise - clean
    latents), averaged over tokens by the batch's token weights (plainly when it has none)."""
    target = batch.noise - batch.latents if target is None else target
    per_token = mx.mean(mx.square(velocity - target), axis=-1)
    if batch.token_weights is None:
        return mx.mean(per_token)
    return mx.sum(batch.token_weights * per_token) / mx.sum(batch.token_weights)


def flow_matching_loss(transformer, batch: FlowBatch, text: mx.array | None = None,
                       pooled: mx.array | None = None) -> mx.array:
    return velocity_loss(predicted_velocity(transformer, batch, text, pooled), batch)
