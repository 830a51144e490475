"""The T5 encoder of FLUX.1 (transformers' T5EncoderModel) in MLX: v1.1's gated feed-forward, as the real
checkpoints have, and the original T5's plain one, as small test encoders (hf-internal-testing's) have."""

import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.kernels import gelu_tanh
from mflux_core.weights.loading import load_component

ACTIVATIONS = {
    "gelu_new": gelu_tanh,  # the tanh approximation, what the real checkpoints use
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu": nn.gelu,
    "relu": nn.relu,
    "silu": nn.silu,
}


@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int
    relative_attention_max_distance: int
    layer_norm_epsilon: float
    dense_act_fn: str
    is_gated_act: bool

    @classmethod
    def from_dict(cls, config: dict) -> "T5Config":
        feed_forward_proj = config.get("feed_forward_proj", "relu")
        # transformers' T5Config reads "gated-ACT" or "ACT" (T5 v1.0's configs name none: relu), and maps
        # "gated-gelu" to the tanh GELU.
        is_gated = feed_forward_proj.startswith("gated-")
        default_act = "gelu_new" if feed_forward_proj == "gated-gelu" else feed_forward_proj.removeprefix("gated-")
        try:
            result = cls(
                vocab_size=config["vocab_size"],
                d_model=config["d_model"],
                d_kv=config["d_kv"],
                d_ff=config["d_ff"],
                num_layers=config["num_layers"],
                num_heads=config["num_heads"],
                relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
                relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
                layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
                dense_act_fn=config.get("dense_act_fn", default_act),
                is_gated_act=config.get("is_gated_act", is_gated),
            )
        except KeyError as error:
            raise ModelLoadError(f"The T5 encoder's config.json has no {error.args[0]!r}.") from None
        if result.dense_act_fn not in ACTIVATIONS:
            raise ModelLoadError(
                f"The T5 encoder's activation {result.dense_act_fn!r} (config.json) is not one the studio runs: "
                f"{', '.join(ACTIVATIONS)}."
            )
        return result


def relative_position_buckets(length: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """(length, length) bucket index of key position minus query position, bidirectional as in T5.

    Half the buckets hold keys after the query. Within a half, distances below a quarter of the
    buckets get one bucket each; larger ones share log-spaced buckets up to max_distance. The float32
    arithmetic follows transformers so that distances on a bucket boundary land in the same bucket.
    """
    relative = np.arange(length)[None, :] - np.arange(length)[:, None]
    half = num_buckets // 2
    max_exact = half // 2
    distance = np.abs(relative)
    log_ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
    log_ratio = log_ratio / np.float32(math.log(max_distance / max_exact))
    log_bucket = np.minimum(max_exact + (log_ratio * np.float32(half - max_exact)).astype(np.int32), half - 1)
    return (relative > 0) * half + np.where(distance < max_exact, distance, log_bucket)


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.config = config
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def position_bias(self, length: int) -> mx.array:
        """(1, heads, length, length) additive attention bias shared by every block."""
        buckets = relative_position_buckets(
            length, self.config.relative_attention_num_buckets, self.config.relative_attention_max_distance
        )
        return self.relative_attention_bias(mx.array(buckets, dtype=mx.int32)).transpose(2, 0, 1)[None]

    def __call__(self, x: mx.array, position_bias: mx.array) -> mx.array:
        batch, length, _ = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.config.num_heads, self.config.d_kv).transpose(0, 2, 1, 3)

        # T5 folds the 1/sqrt(d) scale into its weights: the scores are unscaled.
        out = mx.fast.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), scale=1.0, mask=position_bias
        )
        return self.o(out.transpose(0, 2, 1, 3).reshape(batch, length, -1))


class T5SelfAttentionLayer(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)

    def __call__(self, x: mx.array, position_bias: mx.array) -> mx.array:
        return x + self.SelfAttention(self.layer_norm(x), position_bias)


class T5GatedFeedForward(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.activation = ACTIVATIONS[config.dense_act_fn]

    def __call__(self, x: mx.array) -> mx.array:
        return self.wo(self.activation(self.wi_0(x)) * self.wi_1(x))


class T5PlainFeedForward(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.activation = ACTIVATIONS[config.dense_act_fn]

    def __call__(self, x: mx.array) -> mx.array:
        return self.wo(self.activation(self.wi(x)))


class T5FeedForwardLayer(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        feed_forward = T5GatedFeedForward if config.is_gated_act else T5PlainFeedForward
        self.DenseReluDense = feed_forward(config)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.layer = [T5SelfAttentionLayer(config, has_relative_attention_bias), T5FeedForwardLayer(config)]

    def __call__(self, x: mx.array, position_bias: mx.array) -> mx.array:
        self_attention, feed_forward = self.layer
        return feed_forward(self_attention(x, position_bias))


class T5Stack(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        # Only the first block owns the relative position bias table; the others reuse its bias.
        self.block = [T5Block(config, has_relative_attention_bias=i == 0) for i in range(config.num_layers)]
        self.final_layer_norm = nn.RMSNorm(config.d_model, eps=config.layer_norm_epsilon)

    def __call__(self, x: mx.array) -> mx.array:
        position_bias = self.block[0].layer[0].SelfAttention.position_bias(x.shape[1]).astype(x.dtype)
        for block in self.block:
            x = block(x, position_bias)
        return self.final_layer_norm(x)


class T5Encoder(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config)

    def __call__(self, input_ids: mx.array) -> mx.array:
        """input_ids (B, L) -> hidden states (B, L, d_model)."""
        x = self.shared(input_ids)
        # T5 v1.1's feed-forward outputs pass float16's range (T5-XXL's reach 1e5; transformers keeps `wo` in float32
        # for it): with float16 weights the activations run in float32, each layer's weight promoted as it is used
        return self.encoder(x.astype(mx.float32) if x.dtype == mx.float16 else x)


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Some files also store the token embedding as encoder.embed_tokens (a copy of shared)."""
    weights = dict(weights)
    embed_tokens = weights.pop("encoder.embed_tokens.weight", None)
    if embed_tokens is not None and "shared.weight" not in weights:
        weights["shared.weight"] = embed_tokens
    return weights


def load_t5_encoder(folder: Path, dtype: mx.Dtype = mx.float32, evaluated: bool = True,
                    bits: int | None = None, fp8_scales: bool = False) -> T5Encoder:
    return load_component(folder, build=lambda cfg: T5Encoder(T5Config.from_dict(cfg)), sanitize=sanitize, dtype=dtype,
                          evaluated=evaluated, part="text_encoder_2", bits=bits, fp8_scales=fp8_scales)
