"""The FLUX.1 transformer (diffusers' FluxTransformer2DModel) in MLX.

Module names follow diffusers' checkpoint keys, so a diffusers `transformer/` folder loads 1:1.
Image and text tokens run through double-stream blocks (separate weights per stream, joint
attention over [text; image]), then single-stream blocks over the concatenated sequence.
Every block is modulated by one conditioning vector built from the timestep, the guidance
scale (dev) and the pooled CLIP embedding.
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Protocol

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.kernels import attention, gated_residual, gelu_tanh
from mflux_core.models.rope import apply_rope, rope_tables
from mflux_core.weights.float8 import Float8Linear
from mflux_core.weights.loading import load_component

NORM_EPS = 1e-6
TIMESTEP_CHANNELS = 256
MLP_RATIO = 4
HALF_MAX = 65504.0  # the largest finite float16


@dataclass(frozen=True)
class FluxTransformerConfig:
    in_channels: int
    out_channels: int
    num_layers: int
    num_single_layers: int
    attention_head_dim: int
    num_attention_heads: int
    joint_attention_dim: int
    pooled_projection_dim: int
    guidance_embeds: bool
    axes_dims_rope: tuple[int, ...]

    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, config_json: dict) -> "FluxTransformerConfig":
        """Read a diffusers transformer config.json; absent keys take diffusers' defaults."""
        if config_json.get("patch_size", 1) != 1:
            raise ModelLoadError(f"Unsupported transformer patch_size {config_json['patch_size']} (FLUX.1 uses 1).")
        in_channels = config_json.get("in_channels", 64)
        config = cls(
            in_channels=in_channels,
            out_channels=config_json.get("out_channels") or in_channels,
            num_layers=config_json.get("num_layers", 19),
            num_single_layers=config_json.get("num_single_layers", 38),
            attention_head_dim=config_json.get("attention_head_dim", 128),
            num_attention_heads=config_json.get("num_attention_heads", 24),
            joint_attention_dim=config_json.get("joint_attention_dim", 4096),
            pooled_projection_dim=config_json.get("pooled_projection_dim", 768),
            guidance_embeds=bool(config_json.get("guidance_embeds", False)),
            axes_dims_rope=tuple(config_json.get("axes_dims_rope", (16, 56, 56))),
        )
        if sum(config.axes_dims_rope) != config.attention_head_dim:
            raise ModelLoadError(
                f"Transformer config: axes_dims_rope {config.axes_dims_rope} must add up to "
                f"attention_head_dim {config.attention_head_dim}."
            )
        return config


def linear_dtype(layer: nn.Module) -> mx.Dtype:
    """Compute dtype of a linear layer, also when quantized (its scales), held in FP8 or wrapped by a LoRA (its
    base)."""
    while "base" in layer:
        layer = layer["base"]
    if isinstance(layer, Float8Linear):
        return layer.compute_dtype
    return layer["scales"].dtype if "scales" in layer else layer["weight"].dtype


# --- conditioning embedders -------------------------------------------------------------------


def timestep_embedding(values: mx.array, channels: int = TIMESTEP_CHANNELS) -> mx.array:
    """Sinusoidal embedding (B,) -> (B, channels), [cos | sin] (diffusers: flip_sin_to_cos, shift 0)."""
    half = channels // 2
    exponents = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000.0)) / np.float32(half)
    # exp in float64 rounds to the float32 values torch gets; MLX's float32 exp is off by an ulp or
    # more in most entries, which timesteps near 1000 magnify to ~6e-5 in the embedding.
    frequencies = mx.array(np.exp(exponents.astype(np.float64)).astype(np.float32))
    angles = values.astype(mx.float32)[:, None] * frequencies[None, :]
    return mx.concatenate([mx.cos(angles), mx.sin(angles)], axis=-1)


class MLPEmbedder(nn.Module):
    """linear_1 -> SiLU -> linear_2 (diffusers' TimestepEmbedding and PixArtAlphaTextProjection)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class TimeTextEmbedding(nn.Module):
    """The conditioning vector: timestep (+ guidance) embeddings plus the projected pooled text."""

    def __init__(self, dim: int, pooled_dim: int, guidance_embeds: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(TIMESTEP_CHANNELS, dim)
        if guidance_embeds:
            self.guidance_embedder = MLPEmbedder(TIMESTEP_CHANNELS, dim)
        self.text_embedder = MLPEmbedder(pooled_dim, dim)

    @property
    def guidance_embeds(self) -> bool:
        return "guidance_embedder" in self

    def __call__(self, timestep: mx.array, pooled: mx.array, guidance: mx.array | None) -> mx.array:
        """timestep: sigma in [0, 1] and guidance: the scale, each (B,); both are scaled by 1000 here."""
        if self.guidance_embeds != (guidance is not None):
            needs = "needs a guidance value" if self.guidance_embeds else "takes no guidance value"
            raise ValueError(f"This transformer {needs} (config guidance_embeds={self.guidance_embeds}).")
        dtype = linear_dtype(self.text_embedder.linear_1)
        embedding = self.timestep_embedder(timestep_embedding(timestep.astype(dtype) * 1000).astype(dtype))
        if guidance is not None:
            guidance_proj = timestep_embedding(guidance.astype(dtype) * 1000).astype(dtype)
            embedding = embedding + self.guidance_embedder(guidance_proj)
        return embedding + self.text_embedder(pooled)


# --- modulation -------------------------------------------------------------------------------


class Modulation(NamedTuple):
    shift: mx.array  # (B, dim)
    scale: mx.array
    gate: mx.array


def modulated_layer_norm(x: mx.array, shift: mx.array, scale: mx.array) -> mx.array:
    """LayerNorm without affine (eps 1e-6) of x (B, S, dim), then * (1 + scale) + shift per batch row."""
    if x.shape[0] == 1:  # one image: the modulation rides in the norm kernel as its weight and bias
        return mx.fast.layer_norm(x, 1 + scale[0], shift[0], NORM_EPS)
    return mx.fast.layer_norm(x, None, None, NORM_EPS) * (1 + scale[:, None]) + shift[:, None]


class AdaLNZero(nn.Module):
    """diffusers' AdaLayerNormZero(Single): SiLU(conditioning) -> `count` (shift, scale, gate) triples.

    Only the projection lives here; the norm is applied by `modulated_layer_norm`.
    """

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.count = count
        self.linear = nn.Linear(dim, 3 * count * dim)

    def __call__(self, temb: mx.array) -> list[Modulation]:
        chunks = mx.split(self.linear(nn.silu(temb)), 3 * self.count, axis=-1)
        return [Modulation(*chunks[i : i + 3]) for i in range(0, 3 * self.count, 3)]


class AdaLayerNormContinuous(nn.Module):
    """The final norm: SiLU(conditioning) -> (scale, shift), in that order (diffusers' norm_out)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def __call__(self, x: mx.array, temb: mx.array) -> mx.array:
        scale, shift = mx.split(self.linear(nn.silu(temb)), 2, axis=-1)
        return modulated_layer_norm(x, shift, scale)


# --- attention --------------------------------------------------------------------------------


class Heads(NamedTuple):
    """Attention inputs of one stream, each (B, heads, S, head_dim), before RoPE."""

    q: mx.array
    k: mx.array
    v: mx.array


def query_or_key_heads(x: mx.array, norm: nn.RMSNorm, heads: int) -> mx.array:
    """(B, S, heads * d) -> RMS-normalised per head -> (B, heads, S, d) (a view; RoPE makes the copy)."""
    batch, tokens, _ = x.shape
    return norm(x.reshape(batch, tokens, heads, -1)).transpose(0, 2, 1, 3)


def value_heads(x: mx.array, heads: int) -> mx.array:
    batch, tokens, _ = x.shape
    return x.reshape(batch, tokens, heads, -1).transpose(0, 2, 1, 3)


def project_heads(x: mx.array, to_q, to_k, to_v, norm_q: nn.RMSNorm, norm_k: nn.RMSNorm, heads: int) -> Heads:
    return Heads(query_or_key_heads(to_q(x), norm_q, heads), query_or_key_heads(to_k(x), norm_k, heads),
                 value_heads(to_v(x), heads))


def rope_attention(q: mx.array, k: mx.array, v: mx.array, rope: tuple[mx.array, mx.array],
                   mask: mx.array | None = None) -> mx.array:
    """Attention over (B, heads, S, d) with RoPE on q and k -> (B, S, heads * d); `mask`: an additive
    (S, S) bias over [text; image] (regional prompts), None for plain joint attention."""
    return attention(apply_rope(q, *rope), apply_rope(k, *rope), v, scale=q.shape[-1] ** -0.5, mask=mask)


class AttentionProjections(nn.Module):
    """q, k and v projections with per-head RMS norms: the image stream's of a double block, a single block's."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * head_dim)
        self.to_k = nn.Linear(dim, heads * head_dim)
        self.to_v = nn.Linear(dim, heads * head_dim)
        self.norm_q = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=NORM_EPS)

    def project(self, x: mx.array) -> Heads:
        return project_heads(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k, self.heads)


class JointAttention(AttentionProjections):
    """Double-block attention weights: per-stream q/k/v and output projections (the text stream's are
    the added ones); the block runs one attention over [text; image]."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__(dim, heads, head_dim)
        self.to_out = [nn.Linear(heads * head_dim, dim)]
        self.add_q_proj = nn.Linear(dim, heads * head_dim)
        self.add_k_proj = nn.Linear(dim, heads * head_dim)
        self.add_v_proj = nn.Linear(dim, heads * head_dim)
        self.norm_added_q = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.norm_added_k = nn.RMSNorm(head_dim, eps=NORM_EPS)
        self.to_add_out = nn.Linear(heads * head_dim, dim)

    def project_text(self, text: mx.array) -> Heads:
        return project_heads(text, self.add_q_proj, self.add_k_proj, self.add_v_proj, self.norm_added_q,
                             self.norm_added_k, self.heads)


class SingleAttention(AttentionProjections):
    """Single-block attention over the whole sequence; its output projection is the block's proj_out."""

    def __call__(self, x: mx.array, rope: tuple[mx.array, mx.array], mask: mx.array | None = None) -> mx.array:
        return rope_attention(*self.project(x), rope, mask)


# --- blocks -----------------------------------------------------------------------------------


class GeluProjection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def __call__(self, x: mx.array) -> mx.array:
        return gelu_tanh(self.proj(x))


class FeedForward(nn.Module):
    """dim -> mlp_dim -> GELU (tanh) -> dim. net.1 stands for diffusers' dropout (no weights)."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.net = [GeluProjection(dim, mlp_dim), nn.Identity(), nn.Linear(mlp_dim, dim)]

    def __call__(self, x: mx.array) -> mx.array:
        return self.net[2](self.net[0](x))


def within_half_range(x: mx.array) -> mx.array:
    """x clipped to float16's finite range when it is float16 (diffusers clips there too): FLUX.1's text stream
    outgrows float16, and an infinity there turns the next block's norms, and so the image, to NaN."""
    return mx.clip(x, -HALF_MAX, HALF_MAX) if x.dtype == mx.float16 else x


def residual_update(x: mx.array, attended: mx.array, attn_mod: Modulation, mlp_mod: Modulation, ff: FeedForward):
    """One stream of a double block after attention: gated attention residual, then the gated MLP."""
    x = gated_residual(x, attn_mod.gate, attended)
    return gated_residual(x, mlp_mod.gate, ff(modulated_layer_norm(x, mlp_mod.shift, mlp_mod.scale)))


class AttentionHook(Protocol):
    """A caller's look inside the double-stream blocks' joint attention (ConceptAttention runs its concept
    stream here). It must not change the arrays it is given: the blocks go on with them."""

    def joint_attention(self, block_index: int, block: "DoubleStreamBlock", image: Heads,
                        image_attention: mx.array) -> None:
        """Called in every double block after attention: the image stream's heads and its attention output
        (B, N, heads * head_dim), before the output projection."""


class DoubleStreamBlock(nn.Module):
    """diffusers' FluxTransformerBlock: image and text keep their own weights and share attention."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = AdaLNZero(dim, count=2)
        self.norm1_context = AdaLNZero(dim, count=2)
        self.attn = JointAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim, MLP_RATIO * dim)
        self.ff_context = FeedForward(dim, MLP_RATIO * dim)

    def text_heads(self, text: mx.array, modulation: list[Modulation]) -> Heads:
        """The text stream's attention inputs; `modulation` is norm1_context's for the stream's conditioning."""
        return self.attn.project_text(modulated_layer_norm(text, modulation[0].shift, modulation[0].scale))

    def text_update(self, text: mx.array, attended: mx.array, modulation: list[Modulation]) -> mx.array:
        """The text stream after attention, from its attention output (B, L, heads * head_dim)."""
        return within_half_range(residual_update(text, self.attn.to_add_out(attended), *modulation, self.ff_context))

    def __call__(self, image: mx.array, text: mx.array, temb: mx.array, rope: tuple[mx.array, mx.array],
                 hook: AttentionHook | None = None, index: int = 0, mask: mx.array | None = None):
        """-> (text, image), diffusers' order. `index` is the block's place, for the hook."""
        image_attn_mod, image_mlp_mod = self.norm1(temb)
        text_modulation = self.norm1_context(temb)
        image_heads = self.attn.project(modulated_layer_norm(image, image_attn_mod.shift, image_attn_mod.scale))
        text_heads = self.text_heads(text, text_modulation)
        attended = rope_attention(*(mx.concatenate(pair, axis=2) for pair in zip(text_heads, image_heads)), rope, mask)
        text_tokens = text.shape[1]
        image_attention, text_attention = attended[:, text_tokens:], attended[:, :text_tokens]
        if hook is not None:
            hook.joint_attention(index, self, image_heads, image_attention)
        image = residual_update(image, self.attn.to_out[0](image_attention), image_attn_mod, image_mlp_mod, self.ff)
        return self.text_update(text, text_attention, text_modulation), image


class SingleStreamBlock(nn.Module):
    """diffusers' FluxSingleTransformerBlock over [text; image]: attention and MLP side by side."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm = AdaLNZero(dim, count=1)
        self.attn = SingleAttention(dim, heads, head_dim)
        self.proj_mlp = nn.Linear(dim, MLP_RATIO * dim)
        self.proj_out = nn.Linear(dim + MLP_RATIO * dim, dim)

    def __call__(self, x: mx.array, temb: mx.array, rope: tuple[mx.array, mx.array],
                 mask: mx.array | None = None) -> mx.array:
        (mod,) = self.norm(temb)
        normed = modulated_layer_norm(x, mod.shift, mod.scale)
        mixed = mx.concatenate([self.attn(normed, rope, mask), gelu_tanh(self.proj_mlp(normed))], axis=-1)
        return within_half_range(gated_residual(x, mod.gate, self.proj_out(mixed)))


class BlockTap(Protocol):
    """Reads or changes the image tokens after each block (ControlNet: takes its samples, or adds them)."""

    def after_double(self, block_index: int, image: mx.array) -> mx.array:
        """The image stream (B, N, dim) after double block `block_index` -> the stream the next block gets."""

    def after_single(self, block_index: int, x: mx.array, text_tokens: int) -> mx.array:
        """The sequence [text; image] after single block `block_index` -> the sequence the next block gets."""


class ControlNetResiduals:
    """The BlockTap that adds a ControlNet's samples (B, N, dim) to the image tokens after the main blocks:
    each sample covers ceil(blocks / samples) consecutive blocks (diffusers' interval)."""

    def __init__(self, block_samples: list[mx.array] | None, single_block_samples: list[mx.array] | None,
                 double_count: int, single_count: int):
        self.double = self.per_block(block_samples, double_count)
        self.single = self.per_block(single_block_samples, single_count)

    @staticmethod
    def per_block(samples: list[mx.array] | None, block_count: int) -> list[mx.array]:
        if not samples:
            return []
        interval = math.ceil(block_count / len(samples))
        return [samples[i // interval] for i in range(block_count)]

    def after_double(self, block_index: int, image: mx.array) -> mx.array:
        return image + self.double[block_index] if self.double else image

    def after_single(self, block_index: int, x: mx.array, text_tokens: int) -> mx.array:
        if not self.single:
            return x
        return mx.concatenate([x[:, :text_tokens], x[:, text_tokens:] + self.single[block_index]], axis=1)


# --- the model --------------------------------------------------------------------------------


class FluxTrunk(nn.Module):
    """What the transformer and its ControlNet share: the input embedders, the blocks and their RoPE."""

    def __init__(self, config: FluxTransformerConfig):
        super().__init__()
        self.config = config
        dim, heads, head_dim = config.hidden_size, config.num_attention_heads, config.attention_head_dim
        self.x_embedder = nn.Linear(config.in_channels, dim)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.time_text_embed = TimeTextEmbedding(dim, config.pooled_projection_dim, config.guidance_embeds)
        self.transformer_blocks = [DoubleStreamBlock(dim, heads, head_dim) for _ in range(config.num_layers)]
        self.single_transformer_blocks = [
            SingleStreamBlock(dim, heads, head_dim) for _ in range(config.num_single_layers)
        ]

    @property
    def dtype(self) -> mx.Dtype:
        return linear_dtype(self.x_embedder)

    # Training sets this: a block's activations are then recomputed in the backward pass instead of kept from the
    # forward (gradient checkpointing, as kohya and ai-toolkit train FLUX.1), so a step holds one block's at a time.
    recompute_blocks = False

    def _run(self, block: nn.Module, call: Callable, *inputs: mx.array):
        return nn.utils.checkpoint(block, call)(*inputs) if self.recompute_blocks else call(*inputs)

    def rope_tables(self, img_ids, txt_ids) -> tuple[mx.array, mx.array]:
        """RoPE tables for the sequence [text; image]; compute once per resolution and pass as `rope`."""
        ids = np.concatenate([np.asarray(txt_ids, dtype=np.float64), np.asarray(img_ids, dtype=np.float64)])
        return rope_tables(ids, self.config.axes_dims_rope)

    def embed(self, hidden_states: mx.array, encoder_hidden_states: mx.array, pooled_projections: mx.array,
              timestep: mx.array, guidance: mx.array | None) -> tuple[mx.array, mx.array, mx.array]:
        """-> (image tokens, text tokens, conditioning vector), from FluxTransformer's arguments of those names."""
        return (self.x_embedder(hidden_states), self.context_embedder(encoder_hidden_states),
                self.time_text_embed(timestep, pooled_projections, guidance))

    def run_blocks(self, image: mx.array, text: mx.array, temb: mx.array, rope: tuple[mx.array, mx.array],
                   tap: BlockTap | None = None, hook: AttentionHook | None = None,
                   mask: mx.array | None = None) -> tuple[mx.array, int]:
        """Every double block, then every single block over [text; image] -> (that sequence, text token count).
        `mask`: the additive attention bias every block's attention gets (see rope_attention)."""
        for i, block in enumerate(self.transformer_blocks):
            text, image = self._run(block, lambda im, tx, tb, block=block, i=i: block(im, tx, tb, rope, hook, i, mask),
                                    image, text, temb)
            if tap is not None:
                image = tap.after_double(i, image)

        text_tokens = text.shape[1]
        x = mx.concatenate([text, image], axis=1)
        for i, block in enumerate(self.single_transformer_blocks):
            x = self._run(block, lambda x, tb, block=block: block(x, tb, rope, mask), x, temb)
            if tap is not None:
                x = tap.after_single(i, x, text_tokens)
        return x, text_tokens


class FluxTransformer(FluxTrunk):
    def __init__(self, config: FluxTransformerConfig):
        super().__init__(config)
        self.norm_out = AdaLayerNormContinuous(config.hidden_size)
        self.proj_out = nn.Linear(config.hidden_size, config.out_channels)

    def __call__(
        self,
        hidden_states: mx.array,
        encoder_hidden_states: mx.array,
        pooled_projections: mx.array,
        timestep: mx.array,
        img_ids: mx.array,
        txt_ids: mx.array,
        guidance: mx.array | None = None,
        controlnet_block_samples: list | None = None,
        controlnet_single_block_samples: list | None = None,
        rope: tuple | None = None,
        attention_hook: AttentionHook | None = None,
        attention_mask: mx.array | None = None,
    ) -> mx.array:
        """Packed latents (B, N, in_channels) -> velocity (B, N, out_channels).

        timestep is sigma in [0, 1] and guidance the guidance scale, each (B,); img_ids (N, 3) and
        txt_ids (L, 3) are position ids. N may include extra tokens (Kontext's reference image).
        ControlNet samples (B, N, dim) are added to the image tokens after the blocks they cover.
        attention_mask: an additive (L + N, L + N) bias on every block's attention logits (regional prompts).
        """
        if rope is None:
            rope = self.rope_tables(img_ids, txt_ids)
        image, text, temb = self.embed(hidden_states, encoder_hidden_states, pooled_projections, timestep, guidance)
        tap = None
        if controlnet_block_samples or controlnet_single_block_samples:
            tap = ControlNetResiduals(controlnet_block_samples, controlnet_single_block_samples,
                                      len(self.transformer_blocks), len(self.single_transformer_blocks))
        x, text_tokens = self.run_blocks(image, text, temb, rope, tap, attention_hook, attention_mask)
        return self.proj_out(self.norm_out(x[:, text_tokens:], temb))


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """diffusers' transformer keys already match the module names one to one."""
    return weights


def load_transformer(folder: Path, dtype: mx.Dtype = mx.float32, evaluated: bool = True,
                     bits: int | None = None, fp8_scales: bool = False) -> FluxTransformer:
    """Load a diffusers `transformer/` folder (config.json + sharded safetensors); see load_component."""
    return load_component(folder, build=lambda cfg: FluxTransformer(FluxTransformerConfig.from_dict(cfg)),
                          sanitize=sanitize, dtype=dtype, evaluated=evaluated, bits=bits, fp8_scales=fp8_scales)
