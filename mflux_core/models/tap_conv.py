"""A stride-1 convolution as one matmul per kernel tap, for MLX's CPU backend.

MLX's CPU conv2d unfolds its input (im2col, kernel^2 copies) before one GEMM. Here the input is
padded once and flattened to (pixels, channels) rows; with the padded width Wp as the output's row
stride, tap (dy, dx) reads the contiguous rows starting at dy * Wp + dx, so each tap is a plain
(rows, Cin) @ (Cin, Cout) GEMM on a view, accumulated in place of the unfolded copy. The last
kernel - 1 columns of each output row wrap into the next row and are dropped. Measured on the FLUX
VAE's 3x3 layers (bench/RESULTS.md): 1.5-1.6x faster than conv2d at 128-256 channels, 3.8x with 3
output channels, a third of the memory; with 3 input channels the GEMMs are too thin and conv2d
wins, so those keep it, as do the GPU backends (conv_choice.py picks).
"""

import mlx.core as mx

MIN_TAP_CHANNELS = 16  # below this many input channels each tap's GEMM is too thin to beat conv2d


def by_taps(x: mx.array, weight: mx.array, padding: tuple[tuple[int, int], tuple[int, int]]) -> mx.array:
    """One image (1, H, W, Cin) convolved at stride 1 with `padding` ((top, left), (bottom, right))."""
    (top, left), (bottom, right) = padding
    out_channels, kernel, _, in_channels = weight.shape
    # one extra zero row below: the last tap's view runs kernel - 1 elements past the padded image
    padded = mx.pad(x, [(0, 0), (top, bottom + 1), (left, right), (0, 0)])
    _, padded_height, padded_width, _ = padded.shape
    out_height, out_width = padded_height - kernel, padded_width - kernel + 1
    rows = padded.reshape(-1, in_channels)
    count = out_height * padded_width
    out = None
    for dy in range(kernel):
        for dx in range(kernel):
            start = dy * padded_width + dx
            tap = weight[:, dy, dx, :].T
            view = rows[start : start + count]
            out = view @ tap if out is None else mx.addmm(out, view, tap)
    return out.reshape(1, out_height, padded_width, out_channels)[:, :, :out_width]
