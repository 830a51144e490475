"""How many bytes the depth estimator needs, worked out from its config and the photo's size before it runs.

The estimate walks the layers as `depth.py` runs them for inference, where each layer is evaluated
(`settle`) before the next starts: at each step the tensors still needed later, plus the step's own
temporaries. A convolution's are its padded input, its unfolded input (MLX's CPU conv2d copies it
kernel^2 times) and its output; a resize's, its input and four outputs' worth (the taps gathered and
weighted); a DINOv2 layer's, attention's chunked scratch (kernels.attention_peak_bytes) and a few
token-wide copies. It counts everything it allocates, the model's input and the depth map at the
photo's size included, but not the weights.
"""

from mflux_core.models.depth import DepthAnythingConfig, DepthEstimator, model_input_size
from mflux_core.models.kernels import attention_peak_bytes

RESIZE_OUTPUTS = 4  # outputs' worth alive while a resize gathers and weights its taps (measured 3.9-4.1)
# Token-wide copies alive in one DINOv2 layer beside attention's scratch, in hidden and MLP widths (x, its
# norm, q, k, v, the attention output and its projection; fc1's output). With the scratch (most of it), within
# 20% of mx.get_peak_memory from 1,370 to 2,705 tokens at widths 64-384.
LAYER_HIDDEN_COPIES = 8
LAYER_MLP_COPIES = 1


def conv_elements(height: int, width: int, channels: int, out_channels: int, kernel: int,
                  stride: int = 1) -> tuple[int, tuple[int, int]]:
    """Elements a convolution padded by kernel // 2 allocates (padded copy, unfolded input, output),
    and its output's size."""
    pad = kernel // 2
    out_height, out_width = (height + 2 * pad - kernel) // stride + 1, (width + 2 * pad - kernel) // stride + 1
    padded = (height + 2 * pad) * (width + 2 * pad) * channels if pad else 0
    unfolded = out_height * out_width * kernel * kernel * channels if kernel > 1 else 0
    return padded + unfolded + out_height * out_width * out_channels, (out_height, out_width)


class Walk:
    """The running peak over the steps, above what is held between them."""

    def __init__(self, held: int = 0):
        self.held, self.peak = held, held

    def step(self, temporaries: int) -> None:
        self.peak = max(self.peak, self.held + temporaries)


def residual_layer(walk: Walk, height: int, width: int, channels: int) -> None:
    """PreActResidualLayer over x (held): relu and the first conv, then relu, the second conv and the sum."""
    x = height * width * channels
    conv, _ = conv_elements(height, width, channels, channels, 3)
    walk.step(x + conv)
    walk.step(2 * x + conv + x)


def depth_estimate_bytes(config: DepthAnythingConfig, input_size: tuple[int, int], photo_size: tuple[int, int],
                         itemsize: int) -> int:
    """Peak bytes of DepthEstimator.estimate on a photo of `photo_size` (height, width), resized for the model
    to `input_size` (depth.model_input_size), with weights of `itemsize` bytes."""
    height, width = input_size
    p, backbone = config.patch_size, config.backbone
    grid = (height // p, width // p)
    tokens = grid[0] * grid[1] + 1
    d, f, outputs = backbone.hidden_size, config.fusion_hidden_size, len(backbone.out_indices)
    pixels = height * width * 3
    walk = Walk(pixels)
    features = outputs * tokens * d
    walk.held += features  # the hidden states kept for the neck (held through it)
    scratch = attention_peak_bytes(1, backbone.num_attention_heads, tokens, tokens,
                                   d // backbone.num_attention_heads, itemsize) // itemsize
    walk.step(scratch + tokens * (LAYER_HIDDEN_COPIES * d + LAYER_MLP_COPIES * backbone.mlp_hidden_size))

    sizes = []
    for channels, factor in zip(config.neck_hidden_sizes, config.reassemble_factors):
        projected = grid[0] * grid[1] * channels
        walk.step(grid[0] * grid[1] * config.reassemble_hidden_size + projected)
        if factor > 1:
            size = (int(grid[0] * factor), int(grid[1] * factor))
            walk.step(projected + size[0] * size[1] * channels)
        elif factor < 1:
            conv, size = conv_elements(*grid, channels, channels, 3, int(1 / factor))
            walk.step(projected + conv)
        else:
            size = grid
        sizes.append(size)
        walk.held += size[0] * size[1] * channels
    for (h, w), channels in zip(sizes, config.neck_hidden_sizes):  # each map to the fusion width, replacing it
        conv, _ = conv_elements(h, w, channels, f, 3)
        walk.step(conv)
        walk.held += h * w * (f - channels)

    sizes = sizes[::-1]
    for index, (h, w) in enumerate(sizes):  # coarsest first, each upsampled to the next's size and kept
        x = h * w * f
        if index:
            residual_layer(walk, h, w, f)
            walk.held += x  # the sum of the last output and this residual
        residual_layer(walk, h, w, f)
        up = sizes[index + 1] if index + 1 < len(sizes) else (2 * h, 2 * w)
        walk.step(x + RESIZE_OUTPUTS * up[0] * up[1] * f)
        walk.step(x + 2 * up[0] * up[1] * f)  # the upsampled map and its projection
        walk.held += up[0] * up[1] * f - (x if index else 0)

    h, w = 2 * sizes[-1][0], 2 * sizes[-1][1]
    walk.held = pixels + h * w * f  # the neck's last output, alone
    conv, _ = conv_elements(h, w, f, f // 2, 3)
    walk.step(conv)
    full = grid[0] * p * grid[1] * p
    walk.step(h * w * f // 2 + RESIZE_OUTPUTS * full * f // 2)
    walk.held += full * f // 2 - h * w * f
    conv, _ = conv_elements(grid[0] * p, grid[1] * p, f // 2, config.head_hidden_size, 3)
    walk.step(conv)
    walk.step(full * config.head_hidden_size + 2 * full)
    model_peak = walk.peak * itemsize
    # the depth map, float32, resized to the photo's size (held: the model's output)
    resize = full + RESIZE_OUTPUTS * (grid[0] * p + photo_size[0]) * photo_size[1]  # both passes, one graph
    return max(model_peak, pixels * itemsize + resize * 4)


def estimator_peak_bytes(estimator: DepthEstimator, photo_size: tuple[int, int]) -> int:
    """Peak bytes of `estimator.estimate` on a photo of `photo_size` (width, height)."""
    width, height = photo_size
    size = model_input_size(height, width, estimator.preprocess_config)
    return depth_estimate_bytes(estimator.model.config, size, (height, width), estimator.model.head.conv3.weight.dtype.size)
