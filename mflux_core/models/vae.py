"""The FLUX.1 VAE: diffusers' AutoencoderKL in MLX, channels-last (NHWC) inside.

Module names follow the diffusers checkpoint (`encoder.down_blocks.0.resnets.0.norm1.weight`,
`decoder.up_blocks.0.upsamplers.0.conv.weight`, `encoder.mid_block.attentions.0.to_q.weight`),
so `sanitize` only transposes convolutions and maps the older attention keys (`query`, `proj_attn`...).
"""

import re
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.models.kernels import attention, scaled_silu
from mflux_core.models.conv_choice import Convolution
from mflux_core.models.vae_tiles import run_in_tiles, shared_statistics
from mflux_core.weights.loading import load_component

GROUP_NORM_EPS = 1e-6


@dataclass(frozen=True)
class VAEConfig:
    in_channels: int
    out_channels: int
    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    scaling_factor: float
    shift_factor: float
    use_quant_conv: bool
    use_post_quant_conv: bool
    mid_block_add_attention: bool
    native_side: int  # the image side the model family was trained at: a text-to-image request's default

    @classmethod
    def from_dict(cls, config_json: dict) -> "VAEConfig":
        """Read a diffusers AutoencoderKL config.json; absent optional keys take diffusers' defaults."""
        if "block_out_channels" not in config_json:
            raise ModelLoadError("The VAE config.json has no block_out_channels: is this an AutoencoderKL folder?")
        blocks = tuple(config_json["block_out_channels"])
        for key, supported in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            kinds = set(config_json.get(key, [supported]))
            if kinds != {supported}:
                raise ModelLoadError(f"The VAE config.json asks for {key} {sorted(kinds)}; only {supported} works.")
        if config_json.get("act_fn", "silu") != "silu":
            raise ModelLoadError(f"The VAE config.json asks for act_fn {config_json['act_fn']!r}; only silu works.")
        return cls(
            in_channels=config_json.get("in_channels", 3),
            out_channels=config_json.get("out_channels", 3),
            latent_channels=config_json.get("latent_channels", 4),
            block_out_channels=blocks,
            layers_per_block=config_json.get("layers_per_block", 1),
            norm_num_groups=config_json.get("norm_num_groups", 32),
            scaling_factor=float(config_json.get("scaling_factor", 0.18215)),
            shift_factor=float(config_json.get("shift_factor") or 0.0),
            use_quant_conv=bool(config_json.get("use_quant_conv", True)),
            use_post_quant_conv=bool(config_json.get("use_post_quant_conv", True)),
            mid_block_add_attention=bool(config_json.get("mid_block_add_attention", True)),
            native_side=native_side(config_json),
        )


FLUX_SIDE = 1024
LATENT_SIDE = 128  # diffusers' FluxPipeline.default_sample_size: its default size in latent pixels


def scale_factor(block_out_channels) -> int:
    """Image pixels per latent pixel along a side: each block after the first halves the size."""
    return 2 ** (len(block_out_channels) - 1)


def native_side(config_json: dict) -> int:
    """The config's sample_size (1024 in FLUX.1's VAE, 64 in the demo's); where it is missing or is the 32
    diffusers writes for a config that never set one, FluxPipeline's default: 128 latent pixels a side (FLUX.1's
    1024 for its 8x VAE; 128 for a test model's VAE that does not downsample)."""
    side = int(config_json.get("sample_size") or 0)
    if side >= 64 and side % 16 == 0:
        return side
    blocks = len(config_json.get("block_out_channels") or (0, 0, 0, 0))
    return LATENT_SIDE * 2 ** (blocks - 1)


# The most bytes of unfolded input one band of a 3x3 convolution may take per image: MLX's CPU conv2d
# copies its input 9x (im2col), 9.4 GB for a 256-channel 1024x1024 layer, so convolutions run a band of
# rows at a time.
BAND_BYTES = 64 << 20


_inference = ContextVar("vae_inference", default=False)


@contextmanager
def inference():
    """Within: `settle` evaluates. AutoencoderKL.encode/decode run in it; training calls the encoder and
    decoder directly, where the graph must stay lazy (mx.compile cannot evaluate while it traces)."""
    token = _inference.set(True)
    try:
        yield
    finally:
        _inference.reset(token)


def settle(x: mx.array) -> mx.array:
    """Evaluate `x` now when running for inference: memory is bounded only if one band or layer is
    finished before the next starts (MLX otherwise allocates ahead of the work it has queued)."""
    if _inference.get():
        mx.eval(x)
    return x


@dataclass(frozen=True)
class Rows:
    """An NHWC image made a band of rows at a time, so that a layer's input needs no full-size copy."""

    shape: tuple[int, int, int, int]
    band: Callable[[int, int], mx.array]  # rows [start, stop) -> (B, stop - start, W, C)

    @classmethod
    def of(cls, x: mx.array) -> "Rows":
        return cls(x.shape, lambda start, stop: x[:, start:stop])

    def upsampled(self) -> "Rows":
        """Nearest-neighbour 2x, each band broadcast from the source rows it covers."""
        batch, height, width, channels = self.shape

        def band(start: int, stop: int) -> mx.array:
            first, last = start // 2, (stop + 1) // 2
            x = self.band(first, last)[:, :, None, :, None, :]
            x = mx.broadcast_to(x, (batch, last - first, 2, width, 2, channels))
            x = x.reshape(batch, 2 * (last - first), 2 * width, channels)
            return x[:, start - 2 * first : stop - 2 * first]

        return Rows((batch, 2 * height, 2 * width, channels), band)


def band_height(width: int, unfolded_channels: int, itemsize: int) -> int:
    """Output rows per band: as many as keep one image's unfolded band under BAND_BYTES."""
    return max(1, BAND_BYTES // (width * unfolded_channels * itemsize))


def conv_in_bands(conv: nn.Conv2d, rows: Rows, padding: tuple[int, int] = (1, 1),
                  residual: Rows | None = None) -> mx.array:
    """`conv` over `rows` padded by (before, after) on both axes, plus `residual`, one band of output rows
    evaluated at a time into the output. Each output pixel sees the same inputs as one conv2d over the
    whole image; only the GEMM's row count changes."""
    return convolution_in_bands(Convolution(conv.weight, conv.bias, conv.stride[0], settle), rows, padding, residual)


def convolution_in_bands(convolution: Convolution, rows: Rows, padding: tuple[int, int] = (1, 1),
                         residual: Rows | None = None) -> mx.array:
    """As conv_in_bands, with the layer's Convolution readied once by the caller (its method chosen, Winograd's
    kernel transformed) for a network that runs the same layer many times."""
    batch, height, width, _ = rows.shape
    out_channels, kernel, _, in_channels = convolution.weight.shape
    stride = convolution.stride
    before, after = padding
    out_height = (height + before + after - kernel) // stride + 1
    out_width = (width + before + after - kernel) // stride + 1
    step = band_height(out_width, kernel * kernel * in_channels, convolution.weight.dtype.size)
    out = None
    for first in range(0, out_height, step):
        last = min(first + step, out_height)
        top, bottom = first * stride - before, (last - 1) * stride - before + kernel
        x = rows.band(max(top, 0), min(bottom, height))
        pad = ([max(-top, 0), before], [max(bottom - height, 0), after])
        y = convolution(x, pad)
        if residual is not None:
            y = y + residual.band(first, last)
        if last - first == out_height:
            return settle(y)
        if out is None:
            out = mx.zeros((batch, out_height, out_width, out_channels), dtype=y.dtype)
        out[:, first:last] = y
        settle(out)
    return out


class GroupNorm(nn.Module):
    """torch's GroupNorm (contiguous channel groups) on NHWC input.

    Not nn.GroupNorm: its single layer_norm over each whole group (up to millions of values) was
    ~1e-3 off torch at 512x512 and 2-4x slower on CPU. Here the statistics come from per-channel
    reductions over (H, W), which are contiguous in NHWC, with a second pass for the variance that
    runs a band of rows at a time (no full-size temporary).
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.groups = groups
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def _per_channel(self, group_values: mx.array) -> mx.array:
        batch, groups, _ = group_values.shape
        channels = self.weight.shape[0]
        return mx.broadcast_to(group_values, (batch, groups, channels // groups)).reshape(batch, 1, 1, channels)

    def _group_mean(self, channel_values: mx.array) -> mx.array:
        groups = channel_values.reshape(channel_values.shape[0], self.groups, -1)
        return self._per_channel(groups.mean(axis=2, keepdims=True))

    def statistics(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Per-channel (B, 1, 1, C) group mean and variance of `x`, in float32."""
        count = x.shape[1] * x.shape[2]
        mean = self._group_mean(self._band_sums(x) / count)
        return mean, self._group_mean(self._band_sums(x, mean) / count)

    def channel_moments(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Per-channel (B, C) mean and sum of squared deviations over height and width, in float32 (tiling
        measures these over the part of the image each tile owns, see vae_tiles)."""
        mean = self._band_sums(x) / (x.shape[1] * x.shape[2])
        return mean, self._band_sums(x, mean[:, None, None])

    def _band_sums(self, x: mx.array, centre: mx.array | None = None) -> mx.array:
        """Per-channel (B, C) sums over height and width of x, or of (x - centre)^2, a band of rows at a time (no
        full-size temporary). In float32: MLX sums float16 into float16, which overflows past 65,504 (a 256 px
        channel of values near 1 does), and the NaN it makes turns the whole image black."""
        batch, height, width, channels = x.shape
        step = band_height(width, channels, mx.float32.size)
        sums = mx.zeros((batch, channels), dtype=mx.float32)
        for first in range(0, height, step):
            band = x[:, first : first + step].astype(mx.float32)
            sums = settle(sums + (band if centre is None else mx.square(band - centre)).sum(axis=(1, 2)))
        return sums

    def grouped(self, count: int, mean: mx.array, squares: mx.array) -> tuple[mx.array, mx.array]:
        """Per-channel moments over `count` pixels -> per-channel (B, 1, 1, C) group mean and variance."""
        group_mean = self._group_mean(mean)
        spread = mx.square(mean.reshape(group_mean.shape) - group_mean)
        return group_mean, self._group_mean(squares / count) + self._group_mean(spread.reshape(mean.shape))

    def scale_and_shift(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """Per-channel (B, 1, 1, C) factors with norm(x) = x * scale + shift."""
        shared = shared_statistics.get()
        mean, group_var = self.statistics(x) if shared is None else shared.statistics(self, x)
        scale = mx.rsqrt(group_var + GROUP_NORM_EPS) * self.weight
        return scale.astype(x.dtype), (self.bias - mean * scale).astype(x.dtype)

    def __call__(self, x: mx.array) -> mx.array:
        scale, shift = self.scale_and_shift(x)
        return x * scale + shift

    def activated(self, x: mx.array) -> Rows:
        """silu(norm(x)), made a band at a time."""
        scale, shift = self.scale_and_shift(x)
        return Rows(x.shape, lambda start, stop: scaled_silu(x[:, start:stop], scale, shift))


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = GroupNorm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = GroupNorm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def _shortcut(self, x: mx.array) -> Rows:
        if "conv_shortcut" not in self:
            return Rows.of(x)
        # a matmul, not conv2d: MLX's 1x1 conv2d copies its input first
        out_channels, _, _, in_channels = self.conv_shortcut.weight.shape
        weight = self.conv_shortcut.weight.reshape(out_channels, in_channels).T
        return Rows((*x.shape[:3], out_channels),
                    lambda start, stop: mx.addmm(self.conv_shortcut.bias, x[:, start:stop], weight))

    def __call__(self, x: mx.array) -> mx.array:
        h = conv_in_bands(self.conv1, self.norm1.activated(x))
        return conv_in_bands(self.conv2, self.norm2.activated(h), residual=self._shortcut(x))


class SpatialSelfAttention(nn.Module):
    """One attention head over all pixels, with a residual (diffusers' `Attention` in the mid block)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = GroupNorm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = [nn.Linear(channels, channels)]

    def __call__(self, x: mx.array) -> mx.array:
        batch, height, width, channels = x.shape
        h = self.group_norm(x).reshape(batch, 1, height * width, channels)
        q, k, v = self.to_q(h), self.to_k(h), self.to_v(h)
        h = attention(q, k, v, scale=channels**-0.5)  # in chunks: 2048 px has 65536 tokens
        return x + self.to_out[0](h).reshape(batch, height, width, channels)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = [ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)]
        self.attentions = [SpatialSelfAttention(channels, groups)] if add_attention else []

    @property
    def layers(self) -> list[nn.Module]:
        return [self.resnets[0], *self.attentions, self.resnets[1]]


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the bottom and right only (as diffusers does)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def __call__(self, x: mx.array) -> mx.array:
        return conv_in_bands(self.conv, Rows.of(x), padding=(0, 1))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv: the upsampled image only ever exists a band at a time."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        return conv_in_bands(self.conv, Rows.of(x).upsampled())


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, groups: int, downsample: bool):
        super().__init__()
        self.resnets = [
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_resnets)
        ]
        if downsample:
            self.downsamplers = [Downsample(out_channels)]

    @property
    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *self.get("downsamplers", [])]


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_resnets: int, groups: int, upsample: bool):
        super().__init__()
        self.resnets = [
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_resnets)
        ]
        if upsample:
            self.upsamplers = [Upsample(out_channels)]

    @property
    def layers(self) -> list[nn.Module]:
        return [*self.resnets, *self.get("upsamplers", [])]


def run_layers(layers: list[Callable[[mx.array], mx.array]], x: mx.array) -> mx.array:
    """`layers` in one flat loop, each finished before the next: no caller holds a block's input while
    later layers run."""
    for layer in layers:
        x = settle(layer(x))
    return x


class Encoder(nn.Module):
    """Pixels (B, H, W, in) -> posterior moments (B, H/f, W/f, 2 * latent), mean first."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        blocks, groups = config.block_out_channels, config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, blocks[0], 3, padding=1)
        self.down_blocks = [
            DownBlock(blocks[max(i - 1, 0)], blocks[i], config.layers_per_block, groups, downsample=i < len(blocks) - 1)
            for i in range(len(blocks))
        ]
        self.mid_block = MidBlock(blocks[-1], groups, config.mid_block_add_attention)
        self.conv_norm_out = GroupNorm(blocks[-1], groups)
        self.conv_out = nn.Conv2d(blocks[-1], 2 * config.latent_channels, 3, padding=1)

    def above_latent_resolution(self, x: mx.array) -> mx.array:
        """conv_in and the down blocks: everything above the lowest resolution (tiled when asked)."""
        down = [layer for block in self.down_blocks for layer in block.layers]
        return run_layers([lambda t: conv_in_bands(self.conv_in, Rows.of(t)), *down], x)

    def at_latent_resolution(self, x: mx.array) -> mx.array:
        """The mid block (with the attention over all pixels), norm, silu and conv_out."""
        return run_layers([*self.mid_block.layers,
                           lambda t: conv_in_bands(self.conv_out, self.conv_norm_out.activated(t))], x)

    def __call__(self, x: mx.array) -> mx.array:
        return self.at_latent_resolution(self.above_latent_resolution(x))


class Decoder(nn.Module):
    """Latents (B, h, w, latent) -> pixels (B, h*f, w*f, out)."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        reversed_blocks, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        self.conv_in = nn.Conv2d(config.latent_channels, reversed_blocks[0], 3, padding=1)
        self.mid_block = MidBlock(reversed_blocks[0], groups, config.mid_block_add_attention)
        self.up_blocks = [
            UpBlock(
                reversed_blocks[max(i - 1, 0)], reversed_blocks[i], config.layers_per_block + 1, groups,
                upsample=i < len(reversed_blocks) - 1,
            )
            for i in range(len(reversed_blocks))
        ]
        self.conv_norm_out = GroupNorm(reversed_blocks[-1], groups)
        self.conv_out = nn.Conv2d(reversed_blocks[-1], config.out_channels, 3, padding=1)

    def at_latent_resolution(self, z: mx.array) -> mx.array:
        """conv_in and the mid block (with the attention over all pixels), at the latents' resolution."""
        return run_layers([lambda t: conv_in_bands(self.conv_in, Rows.of(t)), *self.mid_block.layers], z)

    def above_latent_resolution(self, x: mx.array) -> mx.array:
        """The up blocks, norm, silu and conv_out: everything above the lowest resolution (tiled when asked)."""
        up = [layer for block in self.up_blocks for layer in block.layers]
        return run_layers([*up, lambda t: conv_in_bands(self.conv_out, self.conv_norm_out.activated(t))], x)

    def __call__(self, x: mx.array) -> mx.array:
        return self.above_latent_resolution(self.at_latent_resolution(x))


class AutoencoderKL(nn.Module):
    """encode: pixels (B, H, W, 3) in [-1, 1] -> normalised latents (B, C, H/f, W/f) (the posterior mean).
    decode: normalised latents (B, C, h, w) -> pixels (B, h*f, w*f, 3), unclamped.

    `tiled=True` runs the layers above the latents' resolution over overlapping tiles of `tile_size`
    pixels overlapping by `tile_overlap` pixels (default: a quarter of the tile), normalised with the
    whole image's statistics and blended linearly (vae_tiles): memory stays bounded on big images, at
    twice the compute of those layers; the results stay close to untiled but not equal (the
    convolutions' reach across a tile's edge). See `vae_memory.choose_vae_tiling`: tile only what
    does not fit untiled.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.latent_channels, 2 * config.latent_channels, 1)
        if config.use_post_quant_conv:
            self.post_quant_conv = nn.Conv2d(config.latent_channels, config.latent_channels, 1)

    @property
    def scale_factor(self) -> int:
        return scale_factor(self.config.block_out_channels)

    @property
    def dtype(self) -> mx.Dtype:
        return self.decoder.conv_in.weight.dtype

    def encode(self, pixels: mx.array, tiled: bool = False, tile_size: int = 512,
               tile_overlap: int | None = None) -> mx.array:
        pixels = pixels.astype(self.dtype)
        with inference():
            if tiled:
                tile, overlap = self._tile_in_latents(tile_size, tile_overlap)
                features = run_in_tiles(self.encoder.above_latent_resolution, pixels, tile, overlap,
                                        in_scale=self.scale_factor, out_scale=1)
            else:
                features = self.encoder.above_latent_resolution(pixels)
            moments = self.encoder.at_latent_resolution(features)
        if "quant_conv" in self:
            moments = self.quant_conv(moments)
        latents = (moments[..., : self.config.latent_channels] - self.config.shift_factor) * self.config.scaling_factor
        return latents.transpose(0, 3, 1, 2)

    def decode(self, latents: mx.array, tiled: bool = False, tile_size: int = 512,
               tile_overlap: int | None = None) -> mx.array:
        z = latents.astype(self.dtype).transpose(0, 2, 3, 1)
        z = z / self.config.scaling_factor + self.config.shift_factor
        if "post_quant_conv" in self:
            z = self.post_quant_conv(z)
        with inference():
            features = self.decoder.at_latent_resolution(z)
            if not tiled:
                return self.decoder.above_latent_resolution(features)
            tile, overlap = self._tile_in_latents(tile_size, tile_overlap)
            return run_in_tiles(self.decoder.above_latent_resolution, features, tile, overlap,
                                in_scale=1, out_scale=self.scale_factor)

    def _tile_in_latents(self, tile_size: int, tile_overlap: int | None) -> tuple[int, int]:
        f = self.scale_factor
        if tile_overlap is None:
            tile_overlap = tile_size // 4 // f * f
        if tile_size % f or tile_overlap % f or not 0 <= tile_overlap < tile_size:
            raise InvalidRequest(
                f"VAE tiles must be multiples of {f} pixels with an overlap smaller than the tile "
                f"(got tile {tile_size}, overlap {tile_overlap})."
            )
        return tile_size // f, tile_overlap // f


OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
OLD_ATTENTION_KEY = re.compile(r"(\.attentions\.\d+\.)(query|key|value|proj_attn)\.")


def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """diffusers names -> ours: older attention names renamed, 1x1-conv attention weights squeezed,
    conv weights OIHW -> OHWI."""
    sanitized = {}
    for name, value in weights.items():
        name = OLD_ATTENTION_KEY.sub(lambda m: m.group(1) + OLD_ATTENTION_NAMES[m.group(2)] + ".", name)
        if value.ndim == 4:
            value = value.reshape(value.shape[:2]) if ".attentions." in name else value.transpose(0, 2, 3, 1)
        sanitized[name] = value
    return sanitized


def load_vae(folder: Path, dtype: mx.Dtype = mx.float32) -> AutoencoderKL:
    def build(config_json: dict) -> AutoencoderKL:
        return AutoencoderKL(VAEConfig.from_dict(config_json))

    return load_component(folder, build=build, sanitize=sanitize, dtype=dtype, part="vae")
