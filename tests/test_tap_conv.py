"""The tap-by-tap convolution against MLX's conv2d on random tensors (float32: within 1e-5 relative)."""

import mlx.core as mx
import numpy as np
import pytest

from mflux_core.models.tap_conv import MIN_TAP_CHANNELS, convolve, uses_taps


@pytest.mark.parametrize("batch,height,width,in_channels,out_channels,kernel,padding", [
    (1, 9, 13, 16, 24, 3, ((1, 1), (1, 1))),  # a VAE layer
    (2, 7, 5, 32, 3, 3, ((1, 1), (1, 1))),  # a batch, three output channels (conv_out)
    (1, 6, 11, 16, 8, 3, ((0, 1), (2, 1))),  # a band: top rows present, bottom padded by more
    (1, 8, 8, 20, 12, 5, ((2, 0), (1, 3))),  # another kernel, uneven padding on both axes
])
def test_convolution_by_taps_equals_conv2d(batch, height, width, in_channels, out_channels, kernel, padding):
    assert uses_taps(kernel, 1, in_channels)  # on this CPU backend the taps run, not conv2d
    rng = np.random.default_rng(kernel * in_channels)
    x = mx.array(rng.standard_normal((batch, height, width, in_channels), dtype=np.float32))
    weight = mx.array(rng.standard_normal((out_channels, kernel, kernel, in_channels), dtype=np.float32))
    expected = np.array(mx.conv_general(x, weight, stride=1, padding=padding))
    ours = np.array(convolve(x, weight, 1, padding))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()


def test_thin_inputs_and_strides_keep_conv2d():
    assert not uses_taps(3, 1, MIN_TAP_CHANNELS - 1)
    assert not uses_taps(3, 2, 64)
    assert not uses_taps(1, 1, 64)
