"""What a tool hands the denoise loop: the only place where tools differ."""

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx

# (packed latents, timestep (1,), guidance (1,) | None) -> (double-block residuals, single-block residuals)
ControlResiduals = Callable[[mx.array, mx.array, mx.array | None], tuple[list | None, list | None]]


@dataclass
class NegativePrompt:
    """True CFG (diffusers' true_cfg_scale): each step also runs the transformer on the negative prompt, with
    everything else the same, and steps along neg + scale * (pos - neg)."""

    text: mx.array  # (1, L', joint_dim): the negative prompt's T5 tokens (L' may differ from the prompt's: Redux)
    pooled: mx.array  # (1, pooled_dim)
    scale: float  # > 1


@dataclass
class Conditioning:
    text: mx.array  # (1, L, joint_dim): T5 tokens, plus Redux image tokens
    pooled: mx.array  # (1, pooled_dim): CLIP pooled output
    guidance: float | None  # None for models without a guidance embedding (schnell)
    extra_channels: mx.array | None = None  # (1, N, C): concatenated to every image token (Fill, Depth)
    reference_tokens: mx.array | None = None  # (1, M, C): appended after the image tokens (Kontext)
    reference_ids: mx.array | None = None  # (M, 3) position ids of the reference tokens
    control: ControlResiduals | None = None  # side network residuals (ControlNet)
    negative: NegativePrompt | None = None  # true CFG's second pass
    attention_mask: mx.array | None = None  # (L + N, L + N) additive bias on the prompt pass's attention (regions)
