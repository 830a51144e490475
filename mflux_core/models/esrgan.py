"""The upscaler networks of A1111's ESRGAN / RealESRGAN folders and ComfyUI's upscale_models, in MLX (NHWC):

- ESRGAN's RRDBNet: ESRGAN, BSRGAN, Real-ESRGAN (x4plus, x2plus with its pixel unshuffle, anime 6B),
  4x-UltraSharp and most community 4x models; the original layout (`model.0`, `model.1.sub.N.RDB1.conv1.0`), Real-
  ESRGAN's (`conv_first`, `body.N.rdb1.conv1`) and BSRGAN's (`RRDB_trunk.N.RDB1.conv1`), and ESRGAN+'s extra 1x1
  paths;
- Real-ESRGAN's SRVGGNetCompact (realesr-general-x4v3, realesr-animevideov3): convolutions with PReLU, then a
  pixel shuffle added to the nearest-upsampled input.

What each network is, its hyperparameters included, is read from the weights' names and shapes (as spandrel,
ComfyUI's loader, reads them); the results equal spandrel's float32 modules (tests/test_upscaler_models.py).
Input and output are RGB in [0, 1], as A1111 and ComfyUI feed them.
"""

import math
import re
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mflux_core.errors import ModelLoadError
from mflux_core.models.conv_choice import Convolution
from mflux_core.models.vae import BAND_BYTES, Rows, convolution_in_bands, settle

State = dict[str, np.ndarray]
WRAPPERS = ("params_ema.", "params.", "state_dict.", "model_state_dict.", "module.")  # training checkpoints' nesting
RESIDUAL_SCALE = 0.2  # ESRGAN's dense blocks add a fifth of their output
LEAKY_SLOPE = 0.2


def _conv(state: State, name: str) -> Convolution:
    """A layer readied once (its method chosen, Winograd's kernel transformed): a pass runs hundreds of them."""
    weight = np.transpose(state[f"{name}.weight"], (0, 2, 3, 1)).astype(np.float32)  # torch OIHW -> MLX OHWI
    return Convolution(mx.array(weight), mx.array(state[f"{name}.bias"].astype(np.float32)), stride=1, settle=settle)


def _run(conv: Convolution, x: mx.array | Rows) -> mx.array:
    """A "same" convolution a band of output rows at a time (the VAE's way): at 4x a 192 px tile's 768 px features
    would otherwise take several copies of themselves in one convolution's buffers."""
    half = conv.weight.shape[1] // 2
    return convolution_in_bands(conv, x if isinstance(x, Rows) else Rows.of(x), padding=(half, half))


def leaky_relu(x: mx.array) -> mx.array:
    return mx.maximum(x, LEAKY_SLOPE * x)


def nearest_upsample(x: mx.array, factor: int) -> mx.array:
    n, h, w, c = x.shape
    return mx.broadcast_to(x[:, :, None, :, None, :], (n, h, factor, w, factor, c)).reshape(n, h * factor,
                                                                                            w * factor, c)


def pixel_shuffle(x: mx.array, factor: int) -> mx.array:
    """torch's pixel_shuffle in NHWC: channel c * f * f + i * f + j becomes pixel (i, j) of channel c's block."""
    n, h, w, channels = x.shape
    c = channels // (factor * factor)
    x = x.reshape(n, h, w, c, factor, factor).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(n, h * factor, w * factor, c)


def pixel_unshuffle(x: mx.array, factor: int) -> mx.array:
    n, h, w, c = x.shape
    x = x.reshape(n, h // factor, factor, w // factor, factor, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(n, h // factor, w // factor, c * factor * factor)


class DenseBlock:
    """ESRGAN's residual dense block: five convolutions, each reading the input and every earlier output."""

    def __init__(self, state: State, name: str):
        self.convs = [_conv(state, f"{name}.conv{index}.0") for index in range(1, 6)]
        shortcut = state.get(f"{name}.conv1x1.weight")  # ESRGAN+'s 1x1 path, without bias
        self.shortcut = None if shortcut is None else mx.array(np.transpose(shortcut, (0, 2, 3, 1)).astype(np.float32))

    def __call__(self, x: mx.array) -> mx.array:
        features = [x]
        for index, convolution in enumerate(self.convs[:4]):
            out = leaky_relu(_run(convolution, mx.concatenate(features, axis=-1)))
            if self.shortcut is not None and index == 1:  # ESRGAN+
                out = out + mx.conv2d(x, self.shortcut)
            if self.shortcut is not None and index == 3:
                out = out + features[2]
            features.append(out)
        return _run(self.convs[4], mx.concatenate(features, axis=-1)) * RESIDUAL_SCALE + x

    def arrays(self) -> list[mx.array]:
        shortcut = [] if self.shortcut is None else [self.shortcut]
        return [array for conv in self.convs for array in conv.arrays] + shortcut


class RRDBNet:
    def __init__(self, state: State):
        state = _original_layout(state)
        top = sorted({int(key.split(".")[1]) for key in state if re.match(r"model\.\d+\.weight$", key)})
        blocks = sorted({int(m.group(1)) for key in state if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB1\.", key))})
        if len(top) < 3 or not blocks:
            raise ModelLoadError("it has the names of an ESRGAN model but not its layers")
        self.first = _conv(state, "model.0")
        self.blocks = [[DenseBlock(state, f"model.1.sub.{block}.RDB{index}") for index in (1, 2, 3)]
                       for block in blocks]
        self.trunk = _conv(state, f"model.1.sub.{len(blocks)}")
        self.ups = [_conv(state, f"model.{index}") for index in top[1:-2]]
        self.hr, self.last = _conv(state, f"model.{top[-2]}"), _conv(state, f"model.{top[-1]}")
        in_channels, out_channels = self.first.weight.shape[-1], self.last.weight.shape[0]
        # Real-ESRGAN's x2 (and x1) models see the image pixel-unshuffled into 4 (16) times the channels
        self.unshuffle = int(math.isqrt(in_channels // out_channels)) if in_channels in (4 * out_channels,
                                                                                         16 * out_channels) else 1
        self.scale = 2 ** len(self.ups) // self.unshuffle
        self.features = self.first.weight.shape[0]
        self.growth = self.blocks[0][0].convs[0].weight.shape[0]

    def __call__(self, x: mx.array) -> mx.array:
        if self.unshuffle > 1:
            x = pixel_unshuffle(x, self.unshuffle)
        features = _run(self.first, x)
        trunk = features
        for block in self.blocks:
            out = trunk
            for dense in block:
                out = dense(out)
            trunk = settle(out * RESIDUAL_SCALE + trunk)
        features = features + _run(self.trunk, trunk)
        for up in self.ups:
            features = leaky_relu(_run(up, Rows.of(features).upsampled()))
        return _run(self.last, leaky_relu(_run(self.hr, features)))

    def arrays(self) -> list[mx.array]:
        layers = (self.first, self.trunk, *self.ups, self.hr, self.last)
        dense = [array for block in self.blocks for layer in block for array in layer.arrays()]
        return [array for conv in layers for array in conv.arrays] + dense

    def peak_bytes(self, height: int, width: int) -> int:
        """Bytes live at once in a pass over a height x width input (float32), as MLX measures them within a fifth
        (tests/test_upscaler_models.py): at the output's size a convolution's input, output and activation, and
        its band's transforms (conv_in_bands); at the input's size a dense block's features and concatenation."""
        pixels = height * width // (self.unshuffle * self.unshuffle)
        upsampled = 4 * pixels * (2 ** len(self.ups)) ** 2 * self.features
        dense = 4 * pixels * (3 * self.features + 8 * self.growth)
        return int(max(3 * upsampled + min(BAND_BYTES / 2, 4.5 * upsampled), dense + min(BAND_BYTES / 2, 1.5 * dense)))


class CompactNet:
    def __init__(self, state: State):
        count = max(int(key.split(".")[1]) for key in state if key.startswith("body.")) + 1
        self.convs = [_conv(state, f"body.{index}") for index in range(0, count, 2)]
        self.slopes = [mx.array(state[f"body.{index}.weight"].astype(np.float32)) for index in range(1, count - 1, 2)]
        in_channels, shuffled = self.convs[0].weight.shape[-1], self.convs[-1].weight.shape[0]
        self.scale = int(math.isqrt(shuffled // in_channels))
        self.unshuffle = 1  # only RRDBNet's x2 and x1 models unshuffle their input
        self.features = self.convs[0].weight.shape[0]

    def __call__(self, x: mx.array) -> mx.array:
        out = x
        for convolution, slope in zip(self.convs, self.slopes):
            out = _run(convolution, out)
            out = mx.maximum(out, 0) + slope * mx.minimum(out, 0)  # PReLU
        out = pixel_shuffle(_run(self.convs[-1], out), self.scale)
        return out + nearest_upsample(x, self.scale)

    def arrays(self) -> list[mx.array]:
        return [array for conv in self.convs for array in conv.arrays] + self.slopes

    def peak_bytes(self, height: int, width: int) -> int:
        """As RRDBNet's: a convolution's input, output and activation with its band's transforms, then the shuffled
        output beside the upsampled input."""
        features, shuffled = 4 * height * width * self.features, 4 * height * width * 3 * self.scale * self.scale
        return int(3 * features + 2 * shuffled + min(BAND_BYTES / 2, 4.5 * features))


UpscalerNet = RRDBNet | CompactNet


@dataclass(frozen=True)
class UpscalerModel:
    name: str
    net: UpscalerNet

    @property
    def scale(self) -> int:
        return self.net.scale

    @property
    def description(self) -> str:
        net = self.net
        if isinstance(net, CompactNet):
            return f"Real-ESRGAN Compact ({len(net.convs)} convolutions, {net.features} features), x{net.scale}"
        return f"ESRGAN ({len(net.blocks)} RRDB blocks, {net.features} features), x{net.scale}"

    def parameters(self) -> list[mx.array]:
        """Its weights and Winograd's transformed kernels (what the resident models' memory counts)."""
        return self.net.arrays()


def without_wrappers(state: State) -> State:
    """The weights without a training checkpoint's nesting (`params_ema.`, `module.`, ...)."""
    for prefix in WRAPPERS:
        if any(key.startswith(prefix) for key in state):
            state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    return state


def network_for(state: State) -> UpscalerNet:
    """The network the weights describe; ModelLoadError when they are none this studio runs."""
    state = without_wrappers(state)
    first_blocks = ("model.1.sub.0.RDB1.conv1.0.weight", "body.0.rdb1.conv1.weight", "RRDB_trunk.0.RDB1.conv1.weight")
    if any(name in state for name in first_blocks):  # conv_first alone is also SwinIR's, HAT's, ...
        return RRDBNet(state)
    if "body.0.weight" in state and "body.1.weight" in state and state["body.1.weight"].ndim == 1:
        return CompactNet(state)
    raise ModelLoadError("it is not an ESRGAN, Real-ESRGAN or Real-ESRGAN Compact model (other upscaler "
                         "architectures, such as SwinIR, DAT or HAT, are not supported)")


def _original_layout(state: State) -> State:
    """Real-ESRGAN's and BSRGAN's names as ESRGAN's original ones (`model.<index>...`)."""
    if "conv_first.weight" not in state:
        return state
    ups = sorted({int(m.group(2)) for key in state if (m := re.match(r"(upconv|conv_up)(\d)\.weight$", key))})
    blocks = {int(m.group(2)) for key in state if (m := re.match(r"(body|RRDB_trunk)\.(\d+)\.", key))}
    renames = [(r"^conv_first\.", "model.0."),
               (r"^(?:body|RRDB_trunk)\.(\d+)\.(?:rdb|RDB)(\d)\.conv(\d)\.", r"model.1.sub.\1.RDB\2.conv\3.0."),
               (r"^(?:body|RRDB_trunk)\.(\d+)\.(?:rdb|RDB)(\d)\.conv1x1\.", r"model.1.sub.\1.RDB\2.conv1x1."),
               (r"^(?:conv_body|trunk_conv)\.", f"model.1.sub.{len(blocks)}."),
               (r"^(?:HRconv|conv_hr)\.", f"model.{3 * len(ups) + 2}."),
               (r"^conv_last\.", f"model.{3 * len(ups) + 4}.")]
    renames += [(rf"^(?:upconv|conv_up){number}\.", f"model.{3 * (index + 1)}.") for index, number in enumerate(ups)]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in renames:
            key, count = re.subn(pattern, replacement, key)
            if count:
                break
        renamed[key] = value
    return renamed
