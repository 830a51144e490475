"""The VAE's CPU convolutions (one GEMM per tap; Winograd F(4x4, 3x3)) against MLX's conv2d on random tensors.

Tolerances, float32, relative to the largest output: taps within 1e-5 (measured ~4e-7); Winograd within 5e-5
(measured 3e-6 to 1.2e-5: its transforms' constants, up to 8, round more).
"""

import mlx.core as mx
import numpy as np
import pytest

from mflux_core.models.conv_choice import Convolution, method_for
from mflux_core.models.tap_conv import MIN_TAP_CHANNELS
from mflux_core.models.winograd_conv import MIN_WINOGRAD_CHANNELS

TOLERANCE = {"taps": 1e-5, "winograd": 5e-5}


@pytest.mark.parametrize("batch,height,width,in_channels,out_channels,kernel,padding,method", [
    (1, 9, 13, 16, 24, 3, ((1, 1), (1, 1)), "taps"),  # a VAE layer
    (2, 7, 5, 32, 3, 3, ((1, 1), (1, 1)), "taps"),  # a batch, three output channels (conv_out)
    (1, 6, 11, 16, 8, 3, ((0, 1), (2, 1)), "taps"),  # a band: top rows present, bottom padded by more
    (1, 8, 8, 20, 12, 5, ((2, 0), (1, 3)), "taps"),  # another kernel, uneven padding on both axes
    (1, 9, 13, 64, 72, 3, ((1, 1), (1, 1)), "winograd"),  # sides that are not whole 4x4 blocks
    (2, 7, 5, 96, 64, 3, ((1, 1), (1, 1)), "winograd"),  # a batch
    (1, 6, 11, 64, 64, 3, ((0, 1), (2, 1)), "winograd"),  # a band
    (1, 16, 20, 128, 128, 3, ((2, 0), (0, 2)), "winograd"),  # uneven padding on both axes
])
def test_cpu_convolutions_equal_conv2d(batch, height, width, in_channels, out_channels, kernel, padding, method):
    rng = np.random.default_rng(kernel * in_channels + height)
    x = mx.array(rng.standard_normal((batch, height, width, in_channels), dtype=np.float32))
    weight = mx.array(rng.standard_normal((out_channels, kernel, kernel, in_channels), dtype=np.float32))
    bias = mx.array(rng.standard_normal((out_channels,), dtype=np.float32))
    convolution = Convolution(weight, bias, stride=1)
    assert convolution.method == method  # on this CPU backend
    expected = np.array(mx.conv_general(x, weight, stride=1, padding=padding) + bias)
    ours = np.array(convolution(x, padding))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= TOLERANCE[method] * np.abs(expected).max()


def test_thin_inputs_strides_and_other_dtypes_keep_simpler_methods():
    assert method_for((64, 3, 3, MIN_TAP_CHANNELS - 1), 1, mx.float32) == "conv2d"
    assert method_for((64, 3, 3, 64), 2, mx.float32) == "conv2d"
    assert method_for((64, 1, 1, 64), 1, mx.float32) == "conv2d"
    assert method_for((3, 3, 3, 128), 1, mx.float32) == "taps"  # conv_out: too few output channels
    assert method_for((128, 3, 3, MIN_WINOGRAD_CHANNELS - 1), 1, mx.float32) == "taps"
    assert method_for((128, 3, 3, 128), 1, mx.bfloat16) == "taps"  # Winograd rounds too much below float32
    assert method_for((128, 5, 5, 128), 1, mx.float32) == "taps"
