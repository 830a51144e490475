"""One 3x3 convolution of the FLUX VAE's shapes on the CPU: MLX's conv2d vs the tap-by-tap convolution the
VAE uses there (mflux_core/models/tap_conv.py) vs torch's conv2d (what diffusers runs), float32, one image.

CPU seconds (all threads of this process: steadier than wall time on a shared machine), alternating
within each round, median over the rounds; MLX's peak memory above the input for the MLX contenders.

    python -m bench.vae_conv [--shapes 512x128x128,256x256x256,512x3x128,512x128x3] [--repeats 3]
"""

import argparse

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np
import torch

from bench.timing import alternate, load_line, machine_line, median, table
from mflux_core.models.tap_conv import by_taps

SHAPES = "512x128x128,256x256x256,512x3x128,512x128x3"  # side x in channels x out channels
PADDING = ((1, 1), (1, 1))


def mlx_peak(fn) -> int:
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(fn())
    return mx.get_peak_memory() - before


def rows_for(side: int, in_channels: int, out_channels: int, repeats: int) -> list[list]:
    rng = np.random.default_rng(side + in_channels)
    x_np = rng.standard_normal((1, side, side, in_channels), dtype=np.float32)
    w_np = (rng.standard_normal((out_channels, 3, 3, in_channels)) / np.sqrt(9 * in_channels)).astype(np.float32)
    x, w = mx.array(x_np), mx.array(w_np)
    tx = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous()
    tw = torch.from_numpy(w_np).permute(0, 3, 1, 2).contiguous()
    mlx_calls = {"mx.conv2d": lambda: mx.conv_general(x, w, padding=PADDING), "taps": lambda: by_taps(x, w, PADDING)}
    expected = np.array(mlx_calls["mx.conv2d"]())
    error = np.abs(np.array(mlx_calls["taps"]()) - expected).max() / np.abs(expected).max()

    def torch_conv():
        with torch.inference_mode():
            return torch.nn.functional.conv2d(tx, tw, padding=1)

    calls = {name: (lambda fn=fn: mx.eval(fn())) for name, fn in mlx_calls.items()} | {"torch": torch_conv}
    cpu: dict[str, list[float]] = {}
    alternate(calls, repeats=repeats, cpu=cpu)
    peaks = {name: mlx_peak(fn) for name, fn in mlx_calls.items()}
    flop = 2 * side * side * in_channels * out_channels * 9
    base = median(cpu["mx.conv2d"])
    return [[f"{side}x{side} {in_channels}->{out_channels}", name, median(seconds), f"{flop / median(seconds) / 1e9:.0f}",
             f"{median(seconds) / base:.2f}", f"{peaks[name] / 2**20:.0f}" if name in peaks else "n/a",
             f"{error:.0e}" if name == "taps" else ""] for name, seconds in cpu.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine_line())
    rows = []
    for shape in args.shapes.split(","):
        rows += rows_for(*(int(v) for v in shape.split("x")), repeats=args.repeats)
        print(load_line(), flush=True)
    print(table(["shape", "contender", "CPU s", "GFLOP/CPU-s", "of conv2d's time", "MLX peak MiB", "rel. error"], rows))


if __name__ == "__main__":
    main()
