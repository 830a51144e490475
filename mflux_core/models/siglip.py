"""SigLIP vision tower (transformers' SiglipVisionModel up to last_hidden_state) and its preprocessing.

FLUX.1-Redux uses the patch tokens after post_layernorm; the attention-pooling head that the
checkpoint also carries (`vision_model.head.*`) is never used, so `sanitize` drops it.
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from PIL import Image

from mflux_core.errors import ModelLoadError
from mflux_core.models.encoder_layer import ACTIVATIONS, PreNormEncoderLayer



@dataclass(frozen=True)
class SiglipVisionConfig:
    # Defaults are transformers' SiglipVisionConfig defaults: a config.json may omit any of them.
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @classmethod
    def from_dict(cls, config_json: dict) -> "SiglipVisionConfig":
        """Read a SiglipVisionConfig, or the `vision_config` section of a full SiglipConfig."""
        vision = config_json.get("vision_config", config_json)
        config = cls(**{name: vision[name] for name in cls.__dataclass_fields__ if name in vision})
        if config.hidden_act not in ACTIVATIONS:
            raise ModelLoadError(f"Unsupported SigLIP activation {config.hidden_act!r}.")
        if not isinstance(config.image_size, int) or not isinstance(config.patch_size, int):
            raise ModelLoadError("Only square SigLIP image and patch sizes are supported.")
        return config

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SiglipVisionEmbeddings(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.position_embedding = nn.Embedding(config.num_patches, config.hidden_size)

    def __call__(self, pixels: mx.array) -> mx.array:
        patches = self.patch_embedding(pixels)  # (B, h, w, hidden), row-major like torch's flatten(2)
        batch, _, _, hidden = patches.shape
        return patches.reshape(batch, -1, hidden) + self.position_embedding.weight


class SiglipEncoder(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.layers = [
            PreNormEncoderLayer(config.hidden_size, config.num_attention_heads, config.intermediate_size,
                                config.hidden_act, config.layer_norm_eps, causal=False)
            for _ in range(config.num_hidden_layers)
        ]


class SiglipVisionTower(nn.Module):
    def __init__(self, config: SiglipVisionConfig):
        super().__init__()
        self.config = config
        self.embeddings = SiglipVisionEmbeddings(config)
        self.encoder = SiglipEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, pixels: mx.array) -> mx.array:
        """(B, image_size, image_size, 3) normalised pixels -> last_hidden_state (B, num_patches, hidden)."""
        x = self.embeddings(pixels)
        for layer in self.encoder.layers:
            x = layer(x)
        return self.post_layernorm(x)


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """Drop the `vision_model.` prefix (absent when transformers 5 saved the file) and the unused
    pooling head; conv weight OIHW -> OHWI."""
    sanitized = {}
    for name, value in weights.items():
        name = name.removeprefix("vision_model.")
        if name.startswith("head.") or name.endswith("position_ids"):
            continue
        if name == "embeddings.patch_embedding.weight":
            value = value.transpose(0, 2, 3, 1)
        sanitized[name] = value
    return sanitized


@dataclass(frozen=True)
class SiglipPreprocessConfig:
    """feature_extractor/preprocessor_config.json. Defaults are SiglipImageProcessor's."""

    height: int = 224
    width: int = 224
    resample: int = Image.Resampling.BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, config_json: dict) -> "SiglipPreprocessConfig":
        size = config_json.get("size", {"height": cls.height, "width": cls.width})
        if not isinstance(size, dict) or set(size) != {"height", "width"}:
            raise ModelLoadError(f"Unsupported SigLIP preprocessing size {size!r}: expected height and width.")
        fields = {
            name: config_json[name]
            for name in ("resample", "do_resize", "do_rescale", "rescale_factor", "do_normalize")
            if config_json.get(name) is not None
        }
        for name in ("image_mean", "image_std"):
            if config_json.get(name) is not None:
                value = config_json[name]
                fields[name] = tuple(value) if isinstance(value, list) else (value,) * 3
        return cls(height=size["height"], width=size["width"], **fields)


def siglip_preprocess(image: Image.Image, config: SiglipPreprocessConfig) -> mx.array:
    """PIL image -> (1, H, W, 3) float32, as transformers' SiglipImageProcessor (PIL backend) does it
    when FluxPriorReduxPipeline calls it: RGB (transparency composited onto white), PIL resize,
    rescale in float64 then float32, normalise in float32."""
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if has_alpha:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, image.convert("RGBA"))
    image = image.convert("RGB")
    if config.do_resize:
        image = image.resize((config.width, config.height), resample=config.resample)
    pixels = np.asarray(image)
    if config.do_rescale:
        pixels = (pixels.astype(np.float64) * config.rescale_factor).astype(np.float32)
    else:
        pixels = pixels.astype(np.float32)
    if config.do_normalize:
        mean = np.array(config.image_mean, dtype=np.float32)
        std = np.array(config.image_std, dtype=np.float32)
        pixels = (pixels - mean) / std
    return mx.array(pixels[None])
