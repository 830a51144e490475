"""How many bytes the VAE needs, worked out from its configuration before anything is allocated.

MLX's CPU backend cannot raise on an allocation it cannot satisfy (the process dies), so the memory
planner asks here first. The estimate walks the layers as `vae.py` runs them: at each step the
full-size tensors that step keeps alive, plus the temporaries of one band of rows (see
`conv_in_bands`), plus the blending buffers when tiled. It counts the output but not the input the
caller already holds, nor the weights.
"""

from dataclasses import dataclass
from typing import Literal

import mlx.core as mx

from mflux_core.models import winograd_conv
from mflux_core.models.conv_choice import method_for
from mflux_core.models.kernels import attention_peak_bytes
from mflux_core.models.vae import VAEConfig, band_height

TILE_SIDES = (512, 384, 256, 128, 64)  # automatic tile sizes (pixels) tried, largest first

# Copies of one band that are alive at once, fitted to mx.get_peak_memory: the conv input band
# (activation, its padded copy), and the output band (the product, the bias and residual sums).
# A convolution run tap by tap (tap_conv, the CPU backend) unfolds nothing and fits the same copies;
# one run by Winograd also holds a block-transformed copy (36 values per 16 pixels) of the wider side.
INPUT_BAND_COPIES = 2
WINOGRAD_EXPANSION = winograd_conv.PATCH**2 / winograd_conv.OUTPUT_BLOCK**2
OUTPUT_BAND_COPIES = 3

Direction = Literal["decode", "encode"]


@dataclass(frozen=True)
class Image:
    """One image's spatial size and channels at some layer."""

    height: int
    width: int
    channels: int

    def elements(self) -> int:
        return self.height * self.width * self.channels


def conv_peak(source: Image, out_channels: int, itemsize: int, held: int, kernel: int = 3, stride: int = 1,
              padding: int = 2, upsample: bool = False) -> tuple[int, Image]:
    """Peak elements while `conv_in_bands` runs over `source` (optionally upsampled first, `padding`
    rows and columns added in all) with `held` elements of other tensors alive, and the output's size."""
    scale = 2 if upsample else 1
    height, width = source.height * scale, source.width * scale
    out = Image((height + padding - kernel) // stride + 1, (width + padding - kernel) // stride + 1, out_channels)
    rows = min(out.height, band_height(out.width, kernel * kernel * source.channels, itemsize))
    in_band = ((rows - 1) * stride + kernel) * (width + padding) * source.channels
    dtype = mx.float32 if itemsize == 4 else mx.float16  # the methods tell only float32 from narrower types
    method = method_for((out_channels, kernel, kernel, source.channels), stride, dtype)
    unfolded = {"conv2d": rows * out.width * kernel * kernel * source.channels, "taps": 0,
                "winograd": rows * out.width * WINOGRAD_EXPANSION * max(source.channels, out_channels)}[method]
    band = unfolded + INPUT_BAND_COPIES * in_band + OUTPUT_BAND_COPIES * rows * out.width * out_channels
    weights = source.channels * out_channels
    # Winograd's transformed kernel (36 values per tap pair's 9) stays for the layer; making it, the taps' copy too
    transformed = winograd_conv.PATCH**2 * weights if method == "winograd" else 0
    making = transformed + kernel * kernel * weights if method == "winograd" else 0
    whole_output = out.elements() if rows < out.height else 0
    return held + source.elements() + whole_output + max(transformed + band, making), out


def norm_peak(x: Image, itemsize: int, held: int) -> int:
    """The variance pass of GroupNorm: x minus its mean and squared, a band at a time."""
    band = min(x.height, band_height(x.width, x.channels, itemsize)) * x.width * x.channels
    return held + x.elements() + 2 * band


def resnet_peak(x: Image, out_channels: int, itemsize: int) -> tuple[int, Image]:
    peak, h = conv_peak(x, out_channels, itemsize, held=0)
    second, out = conv_peak(h, out_channels, itemsize, held=x.elements())
    return max(norm_peak(x, itemsize, 0), peak, norm_peak(h, itemsize, x.elements()), second), out


def attention_peak(x: Image, itemsize: int) -> int:
    """x, its normalised copy, q, k, v, the output and its projection, and the chunked attention's scratch
    under the current attention limit (kernels.set_attention_memory)."""
    tokens = x.height * x.width
    scratch = attention_peak_bytes(1, 1, tokens, tokens, x.channels, itemsize)
    return 6 * x.elements() + -(-scratch // itemsize)


class Walk:
    """The running maximum of peak elements over the layers, and the current activation."""

    def __init__(self, x: Image, itemsize: int):
        self.x, self.itemsize, self.peak = x, itemsize, 0

    def step(self, peak: int, out: Image) -> None:
        self.peak, self.x = max(self.peak, peak), out

    def conv(self, out_channels: int, **conv_args) -> None:
        self.step(*conv_peak(self.x, out_channels, self.itemsize, held=0, **conv_args))

    def resnets(self, out_channels: int, count: int) -> None:
        for _ in range(count):
            self.step(*resnet_peak(self.x, out_channels, self.itemsize))

    def mid_block(self, config: VAEConfig) -> None:
        self.resnets(self.x.channels, 1)
        if config.mid_block_add_attention:
            self.step(attention_peak(self.x, self.itemsize), self.x)
        self.resnets(self.x.channels, 1)

    def output(self, out_channels: int) -> None:
        self.step(norm_peak(self.x, self.itemsize, 0), self.x)
        self.conv(out_channels)


def decoder_at_latents(walk: Walk, config: VAEConfig) -> None:
    walk.conv(config.block_out_channels[-1])
    walk.mid_block(config)


def decoder_above_latents(walk: Walk, config: VAEConfig) -> None:
    channels = tuple(reversed(config.block_out_channels))
    for i, block_channels in enumerate(channels):
        walk.resnets(block_channels, config.layers_per_block + 1)
        if i < len(channels) - 1:
            walk.conv(block_channels, upsample=True)
    walk.output(config.out_channels)


def encoder_above_latents(walk: Walk, config: VAEConfig) -> None:
    channels = config.block_out_channels
    walk.conv(channels[0])
    for i, block_channels in enumerate(channels):
        walk.resnets(block_channels, config.layers_per_block)
        if i < len(channels) - 1:
            walk.conv(block_channels, stride=2, padding=1)


def encoder_at_latents(walk: Walk, config: VAEConfig) -> None:
    walk.mid_block(config)
    walk.output(2 * config.latent_channels)


def blending_elements(out: Image, itemsize: int) -> int:
    """The blended output and its copy while a tile is added in; float32 blend weights (numpy) beside it."""
    return 2 * out.elements() + -(-out.height * out.width * 4 // itemsize)


def decode_elements(config: VAEConfig, height: int, width: int, itemsize: int, tile_size: int | None = None) -> int:
    """Peak elements of a decode; tiled, the layers at the latents' resolution still run on the whole
    image (vae.py), and their output is held while the tiles run."""
    f = 2 ** (len(config.block_out_channels) - 1)
    at_latents = Walk(Image(height // f, width // f, config.latent_channels), itemsize)
    decoder_at_latents(at_latents, config)
    features = at_latents.x
    tile = Walk(features if tile_size is None else
                Image(min(tile_size, height) // f, min(tile_size, width) // f, features.channels), itemsize)
    decoder_above_latents(tile, config)
    if tile_size is None:
        return max(at_latents.peak, tile.peak)
    return max(at_latents.peak,
               features.elements() + tile.peak + blending_elements(Image(height, width, config.out_channels), itemsize))


def encode_elements(config: VAEConfig, height: int, width: int, itemsize: int, tile_size: int | None = None) -> int:
    """Peak elements of an encode; tiled, the tiles' features are blended at the latents' resolution and
    the layers there run on the whole image."""
    f = 2 ** (len(config.block_out_channels) - 1)
    whole = Image(height, width, config.in_channels)
    tile = Walk(whole if tile_size is None else Image(min(tile_size, height), min(tile_size, width), whole.channels),
                itemsize)
    encoder_above_latents(tile, config)
    features = Image(height // f, width // f, tile.x.channels)
    at_latents = Walk(features, itemsize)
    encoder_at_latents(at_latents, config)
    if tile_size is None:
        return max(tile.peak, at_latents.peak)
    return max(tile.peak + blending_elements(features, itemsize), at_latents.peak)


def vae_peak_bytes(config: VAEConfig, height: int, width: int, itemsize: int, direction: Direction,
                   tile_size: int | None) -> int:
    """Peak bytes above the weights (and the input) of decoding or encoding one `height` x `width`
    image, untiled (`tile_size` None) or in tiles of `tile_size` pixels (one tile at a time, whatever
    the overlap)."""
    elements = decode_elements if direction == "decode" else encode_elements
    return elements(config, height, width, itemsize, tile_size) * itemsize


def choose_vae_tiling(config: VAEConfig, height: int, width: int, itemsize: int, direction: Direction,
                      allowance_bytes: int) -> int | None:
    """None when the untiled run fits in `allowance_bytes`, else the largest tile size (pixels) whose
    estimate fits (multiples of 8 latent pixels), else the smallest tile size: the caller compares
    its estimate and refuses."""
    def fits(tile_size: int | None) -> bool:
        return vae_peak_bytes(config, height, width, itemsize, direction, tile_size) <= allowance_bytes

    if fits(None):
        return None
    f = 2 ** (len(config.block_out_channels) - 1)
    sides = [side for side in TILE_SIDES if side % (8 * f) == 0] or [8 * f]
    return next((side for side in sides if fits(side)), sides[-1])
