"""What a tool hands the denoise loop: the only place where tools differ."""

from dataclasses import dataclass
from typing import Callable

import mlx.core as mx

# (packed latents, timestep (1,), guidance (1,) | None, the step's prompt tokens, its pooled vector)
#   -> (double-block residuals, single-block residuals)
ControlResiduals = Callable[[mx.array, mx.array, mx.array | None, mx.array, mx.array], tuple[list | None, list | None]]


@dataclass(frozen=True)
class PromptChange:
    """From step `step` (0-based) on, the transformer sees this prompt (A1111's prompt editing)."""

    step: int
    text: mx.array
    pooled: mx.array


@dataclass
class NegativePrompt:
    """True CFG (diffusers' true_cfg_scale): each step also runs the transformer on the negative prompt, with
    everything else the same, and steps along neg + scale * (pos - neg)."""

    text: mx.array  # (1, L', joint_dim): the negative prompt's T5 tokens (L' may differ from the prompt's: Redux)
    pooled: mx.array  # (1, pooled_dim)
    scale: float  # > 1
    changes: tuple[PromptChange, ...] = ()  # later prompts, by step


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
    changes: tuple[PromptChange, ...] = ()  # later prompts, by step (A1111's [from:to:when] and [a|b])

    def with_prompt_tokens(self, transform: Callable[[mx.array], mx.array]) -> None:
        """Apply `transform` to the prompt's tokens and every later prompt's (Redux appends its image tokens)."""
        self.text = transform(self.text)
        self.changes = tuple(PromptChange(c.step, transform(c.text), c.pooled) for c in self.changes)
