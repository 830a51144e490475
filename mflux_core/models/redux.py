"""FLUX.1-Redux image conditioning: SigLIP patch tokens -> ReduxImageEncoder -> extra text tokens.

Two ways to join the image tokens to the prompt's (see `combine_redux` and `append_redux_tokens`):
diffusers' FluxPriorReduxPipeline and mflux's `--redux-image-strengths` differ when there is more
than one image or a strength other than 1.
"""

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.models import siglip
from mflux_core.weights.loading import load_component
from mflux_core.weights.safetensors_io import read_json


@dataclass(frozen=True)
class ReduxEmbedderConfig:
    redux_dim: int = 1152
    txt_in_features: int = 4096

    @classmethod
    def from_dict(cls, config_json: dict) -> "ReduxEmbedderConfig":
        return cls(**{name: config_json[name] for name in cls.__dataclass_fields__ if name in config_json})


class ReduxImageEmbedder(nn.Module):
    """diffusers' ReduxImageEncoder: SigLIP width -> 3x text width -> SiLU -> text width."""

    def __init__(self, config: ReduxEmbedderConfig):
        super().__init__()
        self.redux_up = nn.Linear(config.redux_dim, 3 * config.txt_in_features)
        self.redux_down = nn.Linear(3 * config.txt_in_features, config.txt_in_features)

    def __call__(self, image_features: mx.array) -> mx.array:
        return self.redux_down(nn.silu(self.redux_up(image_features)))


def sanitize_embedder(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The diffusers names (redux_up, redux_down) already match the module."""
    return weights


class ReduxEncoder(nn.Module):
    """The Redux repo's three parts: preprocessing, SigLIP tower and image embedder."""

    def __init__(
        self,
        image_encoder: siglip.SiglipVisionTower,
        image_embedder: ReduxImageEmbedder,
        preprocess_config: siglip.SiglipPreprocessConfig,
    ):
        super().__init__()
        self.image_encoder = image_encoder
        self.image_embedder = image_embedder
        self.preprocess_config = preprocess_config

    @classmethod
    def from_folder(cls, folder: Path, dtype: mx.Dtype = mx.float32) -> "ReduxEncoder":
        """Load a FLUX.1-Redux folder (image_encoder/, feature_extractor/, image_embedder/)."""
        folder = Path(folder)
        image_encoder = load_component(
            folder / "image_encoder",
            build=lambda cfg: siglip.SiglipVisionTower(siglip.SiglipVisionConfig.from_dict(cfg)),
            sanitize=siglip.sanitize,
            dtype=dtype,
        )
        image_embedder = load_component(
            folder / "image_embedder",
            build=lambda cfg: ReduxImageEmbedder(ReduxEmbedderConfig.from_dict(cfg)),
            sanitize=sanitize_embedder,
            dtype=dtype,
        )
        preprocess_config = siglip.SiglipPreprocessConfig.from_dict(
            read_json(folder / "feature_extractor" / "preprocessor_config.json")
        )
        return cls(image_encoder, image_embedder, preprocess_config)

    @property
    def token_width(self) -> int:
        """The width of the tokens it makes (the text width of the transformer it is made for)."""
        return self.image_embedder.redux_down.weight.shape[0]

    @property
    def itemsize(self) -> int:
        return self.image_encoder.post_layernorm.weight.dtype.size

    def encode_image(self, image: Image.Image) -> mx.array:
        """PIL image -> image tokens (1, num_patches, txt_in_features), unscaled."""
        pixels = siglip.siglip_preprocess(image, self.preprocess_config)
        dtype = self.image_encoder.post_layernorm.weight.dtype
        features = self.image_encoder(pixels.astype(dtype))
        mx.eval(features)  # the tower's and the embedder's peaks never add up (the plan counts the larger)
        return self.image_embedder(features)


def _check_per_image(name: str, values: list[float], count: int) -> None:
    if len(values) != count:
        raise InvalidRequest(f"{len(values)} {name} were given for {count} Redux image(s); give one per image.")


def combine_redux(
    text_embeds: mx.array,
    pooled_embeds: mx.array,
    image_tokens: list[mx.array],
    prompt_embeds_scales: list[float],
    pooled_embeds_scales: list[float],
) -> tuple[mx.array, mx.array]:
    """diffusers' FluxPriorReduxPipeline rule: image i gives [text; tokens_i] * prompt_scale_i and
    pooled * pooled_scale_i, and these are summed over the images.

    So with several images their tokens are summed position by position (not concatenated), and the
    text tokens and pooled vector end up multiplied by the sum of the scales. text_embeds (1, L, D),
    pooled_embeds (1, P), each image_tokens entry (1, N, D) -> ((1, L + N, D), (1, P)). Without text
    encoders the pipeline uses zeros of shape (1, 512, 4096) and (1, 768) for the text.
    """
    count = len(image_tokens)
    if count == 0:
        raise InvalidRequest("Redux needs at least one image.")
    _check_per_image("prompt_embeds scales", prompt_embeds_scales, count)
    _check_per_image("pooled_embeds scales", pooled_embeds_scales, count)
    prompt_embeds = sum(
        scale * mx.concatenate([text_embeds, tokens], axis=1)
        for scale, tokens in zip(prompt_embeds_scales, image_tokens)
    )
    return prompt_embeds, sum(scale * pooled_embeds for scale in pooled_embeds_scales)


def append_redux_tokens(text_embeds: mx.array, image_tokens: list[mx.array], strengths: list[float]) -> mx.array:
    """mflux's rule (`--redux-image-strengths`): [text; s_1 * tokens_1; ...; s_n * tokens_n].

    The text tokens and the pooled vector are left as they are. With one image and strength 1 this
    equals `combine_redux` with scales [1.0]; otherwise the two differ (diffusers scales the text
    tokens too and sums, rather than concatenates, the images' tokens).
    """
    if not image_tokens:
        raise InvalidRequest("Redux needs at least one image.")
    _check_per_image("strengths", strengths, len(image_tokens))
    return mx.concatenate([text_embeds] + [s * tokens for s, tokens in zip(strengths, image_tokens)], axis=1)
