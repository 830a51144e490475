"""ConceptAttention (Helbling et al. 2025) on the FLUX.1 transformer, without touching its forward path.

Concept tokens (T5 states of the concept words) travel through the double-stream blocks next to the
prompt's tokens, with the text stream's weights and a modulation built from the timestep alone (a
zero pooled vector, as in the paper). Their queries attend to themselves and to the image tokens,
but no image or prompt token attends to them, so the velocity (and the image) is exactly what
plain generation makes. In each chosen block, the image tokens' attention outputs (before the
output projection) are compared with each concept's by dot product: that is the concept's map.

`ConceptRecorder` stands in for the transformer in the one denoise loop (sampling/loop.py); the
blocks are run one by one here, reusing their submodules.
"""

from dataclasses import dataclass

import mlx.core as mx

from mflux_core.models.rope import apply_rope
from mflux_core.models.transformer import (
    DoubleStreamBlock, FluxTransformer, JointAttention, modulated_layer_norm, query_or_key_heads, residual_update,
    rope_attention, value_heads,
)


@dataclass(frozen=True)
class ConceptTokens:
    states: mx.array  # (1, K, joint_dim): the T5 states of every concept's tokens, one concept after another
    spans: tuple[tuple[int, int], ...]  # (start, end) of each concept's tokens in `states`

    @property
    def count(self) -> int:
        return len(self.spans)


def _text_stream_heads(attn: JointAttention, x: mx.array):
    h = attn.heads
    return (query_or_key_heads(attn.add_q_proj(x), attn.norm_added_q, h),
            query_or_key_heads(attn.add_k_proj(x), attn.norm_added_k, h),
            value_heads(attn.add_v_proj(x), h))


def _merge_heads(x: mx.array) -> mx.array:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)


def double_block_with_concepts(block: DoubleStreamBlock, image, text, concepts, temb, concept_temb, rope, concept_rope):
    """One double-stream block with the concept stream riding along.

    The image and text streams are computed exactly as DoubleStreamBlock does (same operations, same
    order, so the same bits). Returns (text, image, concepts, image attention output, concept
    attention output); the two attention outputs are (B, tokens, heads * head_dim), before projection.
    """
    attn = block.attn
    image_attn_mod, image_mlp_mod = block.norm1(temb)
    text_attn_mod, text_mlp_mod = block.norm1_context(temb)
    concept_attn_mod, concept_mlp_mod = block.norm1_context(concept_temb)

    image_in = modulated_layer_norm(image, image_attn_mod.shift, image_attn_mod.scale)
    text_in = modulated_layer_norm(text, text_attn_mod.shift, text_attn_mod.scale)
    concept_in = modulated_layer_norm(concepts, concept_attn_mod.shift, concept_attn_mod.scale)
    text_q, text_k, text_v = _text_stream_heads(attn, text_in)
    concept_q, concept_k, concept_v = _text_stream_heads(attn, concept_in)
    image_q = query_or_key_heads(attn.to_q(image_in), attn.norm_q, attn.heads)
    image_k = query_or_key_heads(attn.to_k(image_in), attn.norm_k, attn.heads)
    image_v = value_heads(attn.to_v(image_in), attn.heads)

    joint = rope_attention(mx.concatenate([text_q, image_q], axis=2), mx.concatenate([text_k, image_k], axis=2),
                           mx.concatenate([text_v, image_v], axis=2), rope)
    text_tokens = text.shape[1]
    image_out, text_out = joint[:, text_tokens:], joint[:, :text_tokens]

    # The concepts' queries over [concepts; image]: a one-way look at the image.
    cos, sin = concept_rope
    concept_tokens = concepts.shape[1]
    keys = apply_rope(mx.concatenate([concept_k, image_k], axis=2), cos, sin)
    queries = apply_rope(concept_q, cos[:concept_tokens], sin[:concept_tokens])
    concept_out = _merge_heads(mx.fast.scaled_dot_product_attention(
        queries, keys, mx.concatenate([concept_v, image_v], axis=2), scale=queries.shape[-1] ** -0.5))

    image = residual_update(image, attn.to_out[0](image_out), image_attn_mod, image_mlp_mod, block.ff)
    text = residual_update(text, attn.to_add_out(text_out), text_attn_mod, text_mlp_mod, block.ff_context)
    concepts = residual_update(concepts, attn.to_add_out(concept_out), concept_attn_mod, concept_mlp_mod,
                               block.ff_context)
    return text, image, concepts, image_out, concept_out


def concept_scores(image_out: mx.array, concept_out: mx.array, spans) -> mx.array:
    """(C, N) float32: each concept's mean output vector dotted with every image token's output vector."""
    concept_vectors = mx.stack([concept_out[0, start:end].astype(mx.float32).mean(axis=0) for start, end in spans])
    return concept_vectors @ image_out[0].astype(mx.float32).T


def velocity_with_concepts(
    transformer: FluxTransformer,
    concepts: ConceptTokens,
    layers: tuple[int, ...],
    hidden_states: mx.array,
    encoder_hidden_states: mx.array,
    pooled_projections: mx.array,
    timestep: mx.array,
    img_ids: mx.array,
    txt_ids: mx.array,
    guidance: mx.array | None = None,
    rope: tuple | None = None,
) -> tuple[mx.array, dict[int, mx.array]]:
    """The transformer's velocity (identical to `transformer(...)`) and {layer: (C, N) concept scores}."""
    if rope is None:
        rope = transformer.rope_tables(img_ids, txt_ids)
    concept_rope = transformer.rope_tables(img_ids, mx.zeros((concepts.states.shape[1], 3), dtype=mx.float32))
    image = transformer.x_embedder(hidden_states)
    text = transformer.context_embedder(encoder_hidden_states)
    concept_stream = transformer.context_embedder(concepts.states.astype(encoder_hidden_states.dtype))
    temb = transformer.time_text_embed(timestep, pooled_projections, guidance)
    concept_temb = transformer.time_text_embed(timestep, mx.zeros_like(pooled_projections), guidance)

    scores = {}
    last = max(layers)
    for i, block in enumerate(transformer.transformer_blocks):
        if i > last:
            text, image = block(image, text, temb, rope)
            continue
        text, image, concept_stream, image_out, concept_out = double_block_with_concepts(
            block, image, text, concept_stream, temb, concept_temb, rope, concept_rope)
        if i in layers:
            scores[i] = concept_scores(image_out, concept_out, concepts.spans)

    text_tokens = text.shape[1]
    x = mx.concatenate([text, image], axis=1)
    for block in transformer.single_transformer_blocks:
        x = block(x, temb, rope)
    return transformer.proj_out(transformer.norm_out(x[:, text_tokens:], temb)), scores


class ConceptRecorder:
    """Stands in for the transformer in the denoise loop: the same velocity at every step, and at the
    chosen steps the concept scores of the chosen layers, kept in `scores[(step, layer)]`.

    `step` is the index of the next call's step; it counts up by one per call (set it to start elsewhere).
    """

    def __init__(self, transformer: FluxTransformer, concepts: ConceptTokens, layers: tuple[int, ...],
                 steps: tuple[int, ...], first_step: int = 0):
        self.transformer = transformer
        self.concepts = concepts
        self.layers = tuple(layers)
        self.steps = frozenset(steps)
        self.step = first_step
        self.scores: dict[tuple[int, int], mx.array] = {}

    @property
    def config(self):
        return self.transformer.config

    @property
    def dtype(self) -> mx.Dtype:
        return self.transformer.dtype

    def rope_tables(self, img_ids, txt_ids):
        return self.transformer.rope_tables(img_ids, txt_ids)

    def __call__(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                 guidance=None, controlnet_block_samples=None, controlnet_single_block_samples=None, rope=None):
        step, self.step = self.step, self.step + 1
        if step not in self.steps:
            return self.transformer(hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids,
                                    txt_ids, guidance=guidance, controlnet_block_samples=controlnet_block_samples,
                                    controlnet_single_block_samples=controlnet_single_block_samples, rope=rope)
        if controlnet_block_samples or controlnet_single_block_samples:
            raise ValueError("Concept attention does not take ControlNet residuals.")
        velocity, scores = velocity_with_concepts(
            self.transformer, self.concepts, self.layers, hidden_states, encoder_hidden_states, pooled_projections,
            timestep, img_ids, txt_ids, guidance=guidance, rope=rope)
        for layer, layer_scores in scores.items():
            self.scores[(step, layer)] = layer_scores
        return velocity

    def settle(self) -> None:
        """Evaluate the recorded scores, so they stop holding on to the attention outputs they came from."""
        mx.eval(list(self.scores.values()))
