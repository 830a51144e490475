"""ConceptAttention (Helbling et al. 2025) on the FLUX.1 transformer, without touching its forward path.

Concept tokens (T5 states of the concept words) travel through the double-stream blocks next to the
prompt's tokens, with the text stream's weights and a modulation built from the timestep alone (a
zero pooled vector, as in the paper). Their queries attend to themselves and to the image tokens,
but no image or prompt token attends to them, so the velocity (and the image) is exactly what
plain generation makes. In each chosen block, the image tokens' attention outputs (before the
output projection) are compared with each concept's by dot product: that is the concept's map.

The concept stream rides on the transformer's attention hook (`ConceptStream`), reusing each double
block's text-stream steps; `ConceptRecorder` stands in for the transformer in the one denoise loop
(sampling/loop.py) and turns the hook on at the chosen steps.
"""

import inspect
from dataclasses import dataclass

import mlx.core as mx

from mflux_core.models.rope import apply_rope
from mflux_core.models.transformer import DoubleStreamBlock, FluxTransformer, Heads


@dataclass(frozen=True)
class ConceptTokens:
    states: mx.array  # (1, K, joint_dim): the T5 states of every concept's tokens, one concept after another
    spans: tuple[tuple[int, int], ...]  # (start, end) of each concept's tokens in `states`

    @property
    def count(self) -> int:
        return len(self.spans)


def _merge_heads(x: mx.array) -> mx.array:
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, tokens, heads * head_dim)


def concept_scores(image_attention: mx.array, concept_attention: mx.array, spans) -> mx.array:
    """(C, N) float32: each concept's mean output vector dotted with every image token's output vector."""
    concept_vectors = mx.stack([concept_attention[0, start:end].astype(mx.float32).mean(axis=0)
                                for start, end in spans])
    return concept_vectors @ image_attention[0].astype(mx.float32).T


class ConceptStream:
    """The transformer's AttentionHook for one forward: carries the concept tokens through the double blocks
    up to the last chosen layer, and keeps {layer: (C, N) concept scores} in `scores`."""

    def __init__(self, states: mx.array, temb: mx.array, rope: tuple[mx.array, mx.array],
                 concepts: ConceptTokens, layers: tuple[int, ...]):
        self.states = states  # (B, K, dim), the concept tokens entering the next block
        self.temb = temb  # their conditioning: the timestep's alone
        self.rope = rope  # the tables of [concepts; image]
        self.concepts = concepts
        self.layers = layers
        self.last = max(layers)
        self.scores: dict[int, mx.array] = {}

    def joint_attention(self, block_index: int, block: DoubleStreamBlock, image: Heads,
                        image_attention: mx.array) -> None:
        if block_index > self.last:
            return
        modulation = block.norm1_context(self.temb)
        concept = block.text_heads(self.states, modulation)
        # The concepts' queries over [concepts; image]: a one-way look at the image.
        cos, sin = self.rope
        concept_tokens = self.states.shape[1]
        keys = apply_rope(mx.concatenate([concept.k, image.k], axis=2), cos, sin)
        queries = apply_rope(concept.q, cos[:concept_tokens], sin[:concept_tokens])
        concept_attention = _merge_heads(mx.fast.scaled_dot_product_attention(
            queries, keys, mx.concatenate([concept.v, image.v], axis=2), scale=queries.shape[-1] ** -0.5))
        self.states = block.text_update(self.states, concept_attention, modulation)
        if block_index in self.layers:
            self.scores[block_index] = concept_scores(image_attention, concept_attention, self.concepts.spans)


def velocity_with_concepts(transformer: FluxTransformer, concepts: ConceptTokens, layers: tuple[int, ...],
                           *inputs, **options) -> tuple[mx.array, dict[int, mx.array]]:
    """The transformer's velocity (identical to `transformer(*inputs, **options)`) and {layer: (C, N) concept
    scores}. The concept stream reads the arguments it needs by name, bound to the transformer's signature."""
    call = inspect.signature(transformer).bind(*inputs, **options)
    call.apply_defaults()
    given = call.arguments
    stream = ConceptStream(
        transformer.context_embedder(concepts.states.astype(given["encoder_hidden_states"].dtype)),
        transformer.time_text_embed(given["timestep"], mx.zeros_like(given["pooled_projections"]), given["guidance"]),
        transformer.rope_tables(given["img_ids"], mx.zeros((concepts.states.shape[1], 3), dtype=mx.float32)),
        concepts, layers)
    velocity = transformer(*inputs, **options, attention_hook=stream)
    return velocity, stream.scores


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

    def __call__(self, *inputs, **options):
        """The transformer's arguments, as the denoise loop passes them."""
        step, self.step = self.step, self.step + 1
        if step not in self.steps:
            return self.transformer(*inputs, **options)
        velocity, scores = velocity_with_concepts(self.transformer, self.concepts, self.layers, *inputs, **options)
        for layer, layer_scores in scores.items():
            self.scores[(step, layer)] = layer_scores
        return velocity

    def settle(self) -> None:
        """Evaluate the recorded scores, so they stop holding on to the attention outputs they came from."""
        mx.eval(list(self.scores.values()))
