"""The CLIP text encoder of FLUX.1 (transformers' CLIPTextModel) in MLX; FLUX uses only its pooled output."""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mflux_core.errors import ModelLoadError
from mflux_core.models.encoder_layer import ACTIVATIONS, PreNormEncoderLayer
from mflux_core.weights.loading import load_component


# Configs written before transformers PR #24773 carry eos_token_id 2 (FLUX's does); for those the
# pooled token is the one with the highest id, which is the end-of-text token in CLIP's vocabulary.
LEGACY_EOS_TOKEN_ID = 2


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    layer_norm_eps: float
    hidden_act: str
    eos_token_id: int

    @classmethod
    def from_dict(cls, config: dict) -> "CLIPTextConfig":
        try:
            result = cls(
                vocab_size=config["vocab_size"],
                hidden_size=config["hidden_size"],
                intermediate_size=config["intermediate_size"],
                num_hidden_layers=config["num_hidden_layers"],
                num_attention_heads=config["num_attention_heads"],
                max_position_embeddings=config.get("max_position_embeddings", 77),
                layer_norm_eps=config.get("layer_norm_eps", 1e-5),
                hidden_act=config.get("hidden_act", "quick_gelu"),
                eos_token_id=config.get("eos_token_id", 49407),  # transformers' default
            )
        except KeyError as error:
            raise ModelLoadError(f"The CLIP text encoder's config.json has no {error.args[0]!r}.") from None
        if result.hidden_act not in ACTIVATIONS:
            raise ModelLoadError(f"Unsupported CLIP activation {result.hidden_act!r} in config.json.")
        return result


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def __call__(self, input_ids: mx.array) -> mx.array:
        length = input_ids.shape[1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:length]


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = [
            PreNormEncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                                config.hidden_act, config.layer_norm_eps, causal=True)
            for _ in range(config.num_hidden_layers)
        ]

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, input_ids: mx.array) -> tuple[mx.array, mx.array]:
        """input_ids (B, L) -> (last_hidden_state (B, L, hidden), pooled (B, hidden))."""
        x = self.final_layer_norm(self.encoder(self.embeddings(input_ids)))
        pooled = x[mx.arange(x.shape[0]), self.pooled_positions(input_ids)]
        return x, pooled

    def pooled_positions(self, input_ids: mx.array) -> mx.array:
        """The end-of-text position of each sequence, picked the way transformers picks it."""
        if self.config.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return mx.argmax(input_ids, axis=-1)
        # First occurrence: the padding token may be the end-of-text token too.
        return mx.argmax((input_ids == self.config.eos_token_id).astype(mx.int32), axis=-1)


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Drop the `text_model.` prefix of the published files and the stored position_ids buffer."""
    renamed = {k.removeprefix("text_model."): v for k, v in weights.items()}
    renamed.pop("embeddings.position_ids", None)
    return renamed


def load_clip_text_model(folder: Path, dtype: mx.Dtype = mx.float32, evaluated: bool = True) -> CLIPTextModel:
    return load_component(folder, build=lambda cfg: CLIPTextModel(CLIPTextConfig.from_dict(cfg)),
                          sanitize=sanitize, dtype=dtype, evaluated=evaluated, part="text_encoder")
