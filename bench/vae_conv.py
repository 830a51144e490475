"""One 3x3 convolution of the FLUX VAE's shapes on the CPU, run as the VAE runs it (bands of rows, see
`vae.conv_in_bands`): MLX's conv2d vs one GEMM per tap (tap_conv.py) vs Winograd F(4x4, 3x3)
(winograd_conv.py) vs torch's conv2d (what diffusers runs, whole image), float32, one image, with bias.

CPU seconds (all threads of this process: steadier than wall time on a shared machine), alternating
within each round, median over the rounds; MLX's peak memory above the input for the MLX contenders;
the largest difference from MLX's conv2d relative to its largest output.

    python -m bench.vae_conv [--shapes 512x128x128,256x256x256,128x512x512,64x512x512,512x3x128,512x128x3] [--repeats 3]
"""

import argparse

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np
import torch

from bench.timing import alternate, load_line, machine_line, median, table
from mflux_core import process_memory
from mflux_core.models import winograd_conv
from mflux_core.models.tap_conv import by_taps
from mflux_core.models.vae import band_height

SHAPES = "512x128x128,256x256x256,128x512x512,64x512x512,512x3x128,512x128x3"  # side x in channels x out channels


def in_bands(convolve, x: mx.array, rows: int) -> mx.array:
    """`convolve(band, padding)` over `x` (padding 1) a band of `rows` output rows at a time, each evaluated
    into the output as `conv_in_bands` does."""
    height = x.shape[1]
    out = None
    for first in range(0, height, rows):
        last = min(first + rows, height)
        top, bottom = first - 1, last + 1
        band = x[:, max(top, 0) : min(bottom, height)]
        y = convolve(band, ((max(-top, 0), 1), (max(bottom - height, 0), 1)))
        if out is None:
            out = mx.zeros((*x.shape[:3], y.shape[-1]), dtype=y.dtype)
        out[:, first:last] = y
        mx.eval(out)
    return out


def evaluated(x: mx.array) -> mx.array:
    mx.eval(x)
    return x


def mlx_peak(fn) -> int:
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(fn())
    return mx.get_peak_memory() - before


def rows_for(side: int, in_channels: int, out_channels: int, repeats: int) -> list[list]:
    rng = np.random.default_rng(side + in_channels)
    x_np = rng.standard_normal((1, side, side, in_channels), dtype=np.float32)
    w_np = (rng.standard_normal((out_channels, 3, 3, in_channels)) / np.sqrt(9 * in_channels)).astype(np.float32)
    b_np = rng.standard_normal(out_channels).astype(np.float32)
    x, w, b = mx.array(x_np), mx.array(w_np), mx.array(b_np)
    rows = band_height(side, 9 * in_channels, 4)

    def winograd():
        kernel = winograd_conv.transformed_kernel(w)
        return in_bands(lambda band, pad: winograd_conv.convolve(band, kernel, b, pad, evaluated), x, rows)

    mlx_calls = {
        "mx.conv2d": lambda: mx.conv_general(x, w, padding=((1, 1), (1, 1))) + b,
        "taps": lambda: in_bands(lambda band, pad: by_taps(band, w, pad) + b, x, rows),
        "winograd": winograd,
    }
    expected = np.array(mlx_calls["mx.conv2d"]())
    errors = {name: np.abs(np.array(fn()) - expected).max() / np.abs(expected).max() for name, fn in mlx_calls.items()}
    tx = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
    tw, tb = torch.from_numpy(w_np).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(b_np)

    def torch_conv():
        with torch.inference_mode():
            return torch.nn.functional.conv2d(tx, tw, tb, padding=1)

    calls = {name: (lambda fn=fn: mx.eval(fn())) for name, fn in mlx_calls.items()} | {"torch": torch_conv}
    cpu: dict[str, list[float]] = {}
    alternate(calls, repeats=repeats, cpu=cpu)
    peaks = {name: mlx_peak(fn) for name, fn in mlx_calls.items()}
    flop = 2 * side * side * in_channels * out_channels * 9
    base = median(cpu["mx.conv2d"])
    return [[f"{side}x{side} {in_channels}->{out_channels}", name, median(seconds), f"{flop / median(seconds) / 1e9:.0f}",
             f"{median(seconds) / base:.2f}", f"{peaks[name] / 2**20:.0f}" if name in peaks else "n/a",
             f"{errors[name]:.0e}" if name in errors and name != "mx.conv2d" else ""] for name, seconds in cpu.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    process_memory.reuse_large_buffers(1 << 30)  # as a run whose plan leaves room does (MemoryBudget.check)
    print(machine_line())
    rows = []
    for shape in args.shapes.split(","):
        rows += rows_for(*(int(v) for v in shape.split("x")), repeats=args.repeats)
        print(load_line(), flush=True)
    print(table(["shape", "contender", "CPU s", "GFLOP/CPU-s (direct's FLOP)", "of conv2d's time", "MLX peak MiB",
                 "rel. error"], rows))


if __name__ == "__main__":
    main()
