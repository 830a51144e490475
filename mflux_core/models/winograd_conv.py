"""A 3x3, stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3), for MLX's CPU backend.

Each 4x4 block of output pixels comes from the 6x6 input patch around it: the patch is transformed
(B^T d B), multiplied channel by channel with the transformed kernel (G g G^T) as 36 GEMMs of
(blocks, Cin) @ (Cin, Cout), and transformed back (A^T m A). That is 36 multiplications per 16 outputs
and channel pair where a direct convolution does 144: the GEMMs do a quarter of the arithmetic of the
tap-by-tap convolution (tap_conv.py). The transforms are small GEMMs too (the Kronecker products of the
1-D matrices, 36x36 and 16x36) over a copy of the overlapping patches, not in MLX's CPU elementwise
loops (~3 ns a value over fresh buffers: written that way they cost more than they saved, bench/RESULTS.md). Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks" (2015); interpolation points 0, +-1, +-2 and infinity.

The transforms' constants (up to 8) cost accuracy: about 1e-5 of the output's largest value in float32
against 4e-7 for the taps, so this runs in float32 only, and only where both channel counts are wide
enough for the GEMMs to pay for the transforms (below 64 the taps win).
"""

from functools import cache
from typing import Callable

import mlx.core as mx
import numpy as np

MIN_WINOGRAD_CHANNELS = 64
OUTPUT_BLOCK = 4  # output pixels per block side
PATCH = OUTPUT_BLOCK + 2  # input pixels per patch side, for a 3x3 kernel

_INPUT = ((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0),
          (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1))  # B^T
_KERNEL = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6),
           (1 / 24, 1 / 12, 1 / 6), (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))  # G
_OUTPUT = ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))  # A^T


@cache
def _transform(rows: tuple[tuple[float, ...], ...]) -> mx.array:
    """The 2-D transform of a 1-D one: its Kronecker product with itself, as float32."""
    matrix = np.array(rows, dtype=np.float64)
    return mx.array(np.kron(matrix, matrix).astype(np.float32))


def uses_winograd(kernel: int, stride: int, in_channels: int, out_channels: int, dtype: mx.Dtype) -> bool:
    """Whether Winograd is the method for a convolution of this shape (conv_choice.method_for asks)."""
    return (mx.default_device().type == mx.DeviceType.cpu and kernel == 3 and stride == 1
            and dtype == mx.float32 and min(in_channels, out_channels) >= MIN_WINOGRAD_CHANNELS)


def transformed_kernel(weight: mx.array) -> mx.array:
    """OHWI 3x3 `weight` -> (36, Cin, Cout): G g G^T for every channel pair, one GEMM."""
    out_channels, _, _, in_channels = weight.shape
    taps = weight.transpose(1, 2, 3, 0).reshape(9, in_channels * out_channels)
    return (_transform(_KERNEL) @ taps).reshape(PATCH * PATCH, in_channels, out_channels)


def convolve(x: mx.array, kernel: mx.array, bias: mx.array | None,
             padding: tuple[tuple[int, int], tuple[int, int]],
             settle: Callable[[mx.array], mx.array] = lambda stage: stage) -> mx.array:
    """One image (1, H, W, Cin) convolved at stride 1 with `padding` ((top, left), (bottom, right)) by the
    `transformed_kernel`, plus `bias`. `settle` runs after each stage: evaluating there lets each stage's
    input go (peak 6.5 copies of the output instead of 10.8: one lazy graph keeps them all to its end)."""
    (top, left), (bottom, right) = padding
    _, height, width, channels = x.shape
    out_height, out_width = height + top + bottom - 2, width + left + right - 2
    rows, columns = -(-out_height // OUTPUT_BLOCK), -(-out_width // OUTPUT_BLOCK)
    transformed = _transformed_patches(x, top, left, rows, columns)
    products = settle(settle(transformed).reshape(PATCH * PATCH, rows * columns, channels) @ kernel)
    blocks = _transform(_OUTPUT) @ products.reshape(PATCH * PATCH, -1)
    y = blocks.reshape(OUTPUT_BLOCK, OUTPUT_BLOCK, rows, columns, -1).transpose(2, 0, 3, 1, 4)
    if bias is not None:
        y = y + bias  # the add writes the blocks out in pixel order, so the reshape below copies nothing
    y = y.reshape(1, OUTPUT_BLOCK * rows, OUTPUT_BLOCK * columns, -1)
    return y[:, :out_height, :out_width]


def _transformed_patches(x: mx.array, top: int, left: int, rows: int, columns: int) -> mx.array:
    """B^T d B for each 6x6 patch d of `x` padded to whole blocks: (36, rows * columns * Cin)."""
    _, height, width, channels = x.shape
    # padded on the bottom and right to whole blocks; the extra outputs are cut off by the caller
    padded_height, padded_width = OUTPUT_BLOCK * rows + 2, OUTPUT_BLOCK * columns + 2
    padded = mx.pad(x[0], [(top, padded_height - height - top), (left, padded_width - width - left), (0, 0)])
    row, pixel = padded_width * channels, channels
    patches = mx.as_strided(padded, (PATCH, PATCH, rows, columns, channels),
                            (row, pixel, OUTPUT_BLOCK * row, OUTPUT_BLOCK * pixel, 1))
    return _transform(_INPUT) @ patches.reshape(PATCH * PATCH, -1)
