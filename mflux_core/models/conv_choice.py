"""Which algorithm runs one of the VAE's convolutions, chosen once per layer and run band by band.

On the CPU backend, measured per layer shape (bench/RESULTS.md, `python -m bench.vae_conv`): Winograd
F(4x4, 3x3) for 3x3 float32 layers with at least 64 channels in and out, one GEMM per tap for the other
stride-1 layers with at least 16 input channels, MLX's conv2d for the rest (3 input channels, the
stride-2 downsamplers). Metal and CUDA always run conv2d.
"""

from typing import Callable, Literal

import mlx.core as mx

from mflux_core.models import winograd_conv
from mflux_core.models.tap_conv import MIN_TAP_CHANNELS, by_taps

Method = Literal["conv2d", "taps", "winograd"]
Padding = tuple[tuple[int, int], tuple[int, int]]  # ((top, left), (bottom, right))


def method_for(weight_shape: tuple[int, ...], stride: int, dtype: mx.Dtype) -> Method:
    """The algorithm for an OHWI weight of `weight_shape` at `stride` on the current device."""
    out_channels, kernel, _, in_channels = weight_shape
    if winograd_conv.uses_winograd(kernel, stride, in_channels, out_channels, dtype):
        return "winograd"
    if mx.default_device().type == mx.DeviceType.cpu and stride == 1 and kernel > 1 and in_channels >= MIN_TAP_CHANNELS:
        return "taps"
    return "conv2d"


class Convolution:
    """A layer's weight and bias readied for its bands: the method picked and Winograd's transformed
    kernel computed once, not per band."""

    def __init__(self, weight: mx.array, bias: mx.array | None, stride: int,
                 settle: Callable[[mx.array], mx.array] = lambda stage: stage):
        """`settle` runs on a multi-stage method's intermediates (vae.settle: evaluated when inferring)."""
        self.weight, self.bias, self.stride, self.settle = weight, bias, stride, settle
        self.method = method_for(weight.shape, stride, weight.dtype)
        self._winograd_kernel = winograd_conv.transformed_kernel(weight) if self.method == "winograd" else None

    @property
    def arrays(self) -> list[mx.array]:
        """What it holds: the weight, the bias and Winograd's transformed kernel (what a resident model counts)."""
        return [array for array in (self.weight, self.bias, self._winograd_kernel) if array is not None]

    def __call__(self, x: mx.array, padding: Padding) -> mx.array:
        """conv(x) + bias for NHWC `x`, as `mx.conv_general(x, weight, stride, padding)` computes it."""
        if self.method == "conv2d":
            return self._plus_bias(mx.conv_general(x, self.weight, stride=self.stride, padding=padding))
        return mx.concatenate([self._one_image(x[i : i + 1], padding) for i in range(x.shape[0])]) \
            if x.shape[0] > 1 else self._one_image(x, padding)

    def _one_image(self, x: mx.array, padding: Padding) -> mx.array:
        if self.method == "winograd":
            return winograd_conv.convolve(x, self._winograd_kernel, self.bias, padding, self.settle)
        return self._plus_bias(by_taps(x, self.weight, padding))

    def _plus_bias(self, y: mx.array) -> mx.array:
        return y if self.bias is None else y + self.bias
