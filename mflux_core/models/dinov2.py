"""DINOv2 vision transformer used as a backbone (transformers' Dinov2Backbone), in MLX.

Also home to the separable resampling that reproduces torch's `interpolate` (bicubic with
align_corners=False for the position embeddings, bilinear with align_corners=True for DPT necks)
to float32 rounding (a few ulps): each output pixel is a weighted sum of a few gathered input
rows, with the weights computed the way torch's CPU kernels compute them, summed in torch's order
(width, then height).
"""

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.kernels import attention
from mflux_core.models.vae import settle

CUBIC_A = np.float32(-0.75)  # torch's bicubic convolution constant


def bilinear_taps_align_corners(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, both (out_size, 2), of torch's bilinear align_corners=True."""
    scale = np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1 else np.float32(0)
    source = scale * np.arange(out_size, dtype=np.float32)
    first = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
    frac = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
    indices = np.stack([first, np.minimum(first + 1, in_size - 1)], axis=1)
    return indices, np.stack([np.float32(1) - frac, frac], axis=1)


def fma32(a, b, c) -> np.ndarray:
    """a * b + c rounded once to float32: torch's CPU kernels are compiled with fused multiply-adds,
    and rounding twice instead moves bicubic weights by up to ~1e-5 on large upsamplings."""
    return (np.float64(a) * np.float64(b) + np.float64(c)).astype(np.float32)


def bicubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, both (out_size, 4), of torch's bicubic align_corners=False.

    Taps past the border read the edge pixel (torch clamps the index, not the position).
    """
    scale = np.float32(in_size) / np.float32(out_size)
    source = fma32(scale, np.arange(out_size, dtype=np.float32) + np.float32(0.5), -0.5)
    first = np.minimum(np.floor(source).astype(np.int32), in_size - 1)
    t = np.clip(source - first.astype(np.float32), 0, 1).astype(np.float32)
    a, one = CUBIC_A, np.float32(1)

    def near(x):  # |x| <= 1: ((a + 2) x - (a + 3)) x^2 + 1
        return fma32(fma32(a + 2, x, -(a + 3)) * x, x, 1)

    def far(x):  # 1 < |x| < 2: ((a x - 5a) x + 8a) x - 4a
        return fma32(fma32(fma32(a, x, -5 * a), x, 8 * a), x, -4 * a)

    rest = one - t
    weights = np.stack([far(t + one), near(t), near(rest), far(rest + one)], axis=1)
    indices = np.clip(first[:, None] + np.arange(-1, 3, dtype=np.int32)[None, :], 0, in_size - 1)
    return indices, weights


def resample_axis(x: mx.array, taps: tuple[np.ndarray, np.ndarray], axis: int) -> mx.array:
    """Resample one axis of x: out[i] = sum_t weights[i, t] * x[indices[i, t]]."""
    indices, weights = taps
    shape = [1] * x.ndim
    shape[axis] = -1
    out = None
    for t in range(indices.shape[1]):
        term = mx.take(x, mx.array(indices[:, t]), axis=axis) * mx.array(weights[:, t]).reshape(shape).astype(x.dtype)
        out = term if out is None else out + term
    return out


def resize_bilinear_align_corners(x: mx.array, size: tuple[int, int]) -> mx.array:
    """torch's interpolate(mode="bilinear", align_corners=True) on axes 1 and 2 (NHWC)."""
    x = resample_axis(x, bilinear_taps_align_corners(x.shape[2], size[1]), axis=2)
    return resample_axis(x, bilinear_taps_align_corners(x.shape[1], size[0]), axis=1)


def resize_bicubic(x: mx.array, size: tuple[int, int]) -> mx.array:
    """torch's interpolate(mode="bicubic", align_corners=False) on axes 1 and 2 (NHWC)."""
    x = resample_axis(x, bicubic_taps(x.shape[2], size[1]), axis=2)
    return resample_axis(x, bicubic_taps(x.shape[1], size[0]), axis=1)


@dataclass(frozen=True)
class Dinov2Config:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_hidden_size: int
    layer_norm_eps: float
    image_size: int
    patch_size: int
    num_channels: int
    qkv_bias: bool
    out_indices: tuple[int, ...]
    apply_layernorm: bool

    @classmethod
    def from_dict(cls, config: dict) -> "Dinov2Config":
        """Missing keys take transformers' Dinov2Config defaults: hub configs omit values equal to them."""
        if config.get("use_swiglu_ffn", False):
            raise ModelLoadError("DINOv2 backbones with a SwiGLU MLP (giant models) are not supported.")
        if config.get("hidden_act", "gelu") != "gelu":
            raise ModelLoadError(f"Unsupported DINOv2 activation {config['hidden_act']!r} (expected 'gelu').")
        hidden_size = config.get("hidden_size", 768)
        num_layers = config.get("num_hidden_layers", 12)
        if "out_indices" in config:
            out_indices = config["out_indices"]
        elif "out_features" in config:
            out_indices = [0 if name == "stem" else int(name.removeprefix("stage")) for name in config["out_features"]]
        else:
            out_indices = [num_layers]
        return cls(
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=config.get("num_attention_heads", 12),
            mlp_hidden_size=int(hidden_size * config.get("mlp_ratio", 4)),
            layer_norm_eps=config.get("layer_norm_eps", 1e-6),
            image_size=config.get("image_size", 224),
            patch_size=config.get("patch_size", 14),
            num_channels=config.get("num_channels", 3),
            qkv_bias=config.get("qkv_bias", True),
            out_indices=tuple(i % (num_layers + 1) for i in out_indices),
            apply_layernorm=config.get("apply_layernorm", True),
        )


class Dinov2PatchEmbeddings(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        p = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=p, stride=p)


class Dinov2Embeddings(nn.Module):
    """CLS token + patch embeddings + position embeddings (bicubically resized to the patch grid)."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.trained_grid = config.image_size // config.patch_size
        self.cls_token = mx.zeros((1, 1, config.hidden_size))
        self.position_embeddings = mx.zeros((1, self.trained_grid**2 + 1, config.hidden_size))
        self.patch_embeddings = Dinov2PatchEmbeddings(config)

    def position_grid(self, height: int, width: int) -> mx.array:
        """(1, height * width, D) patch position embeddings; resized in float32 as transformers does."""
        n, d = self.trained_grid, self.position_embeddings.shape[-1]
        grid = self.position_embeddings[:, 1:].reshape(1, n, n, d).astype(mx.float32)
        grid = resize_bicubic(grid, (height, width)).astype(self.position_embeddings.dtype)
        return grid.reshape(1, height * width, d)

    def __call__(self, pixels: mx.array) -> mx.array:
        patches = self.patch_embeddings.projection(pixels)
        batch, height, width, dim = patches.shape
        cls = mx.broadcast_to(self.cls_token + self.position_embeddings[:, :1], (batch, 1, dim))
        tokens = patches.reshape(batch, height * width, dim) + self.position_grid(height, width)
        return mx.concatenate([cls, tokens], axis=1)


class Dinov2Attention(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        dim = config.hidden_size
        self.heads = config.num_attention_heads
        self.scale = (dim // self.heads) ** -0.5
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.output = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        batch, length, dim = x.shape

        def split_heads(t):
            return t.reshape(batch, length, self.heads, -1).transpose(0, 2, 1, 3)

        q, k, v = split_heads(self.query(x)), split_heads(self.key(x)), split_heads(self.value(x))
        return self.output(attention(q, k, v, self.scale))  # in chunks: memory that depth_memory can plan


class Dinov2LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lambda1 = mx.ones((dim,))

    def __call__(self, x: mx.array) -> mx.array:
        return x * self.lambda1


class Dinov2MLP(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_hidden_size)
        self.fc2 = nn.Linear(config.mlp_hidden_size, config.hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.fc2(nn.gelu(self.fc1(x)))


class Dinov2Layer(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        dim, eps = config.hidden_size, config.layer_norm_eps
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attention = Dinov2Attention(config)
        self.layer_scale1 = Dinov2LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Dinov2MLP(config)
        self.layer_scale2 = Dinov2LayerScale(dim)

    def __call__(self, x: mx.array) -> mx.array:
        x = x + self.layer_scale1(self.attention(self.norm1(x)))
        return x + self.layer_scale2(self.mlp(self.norm2(x)))


class Dinov2Encoder(nn.Module):
    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.layer = [Dinov2Layer(config) for _ in range(config.num_hidden_layers)]


class Dinov2Backbone(nn.Module):
    """pixels (B, H, W, C) -> the hidden states at `out_indices` (0 = embeddings), each (B, 1 + N, D)."""

    def __init__(self, config: Dinov2Config):
        super().__init__()
        self.out_indices = config.out_indices
        self.apply_layernorm = config.apply_layernorm
        self.embeddings = Dinov2Embeddings(config)
        self.encoder = Dinov2Encoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def __call__(self, pixels: mx.array) -> list[mx.array]:
        x = self.embeddings(pixels)
        states = {0: x}
        for index, layer in enumerate(self.encoder.layer, start=1):
            x = settle(layer(x))
            if index in self.out_indices:
                states[index] = x
        features = [states[i] for i in self.out_indices]
        return [self.layernorm(f) for f in features] if self.apply_layernorm else features
