"""Upscaler models: the studio's MLX networks (mflux_core/models/esrgan.py, run as upscaler_models.py runs them: one
192 px tile, A1111's) against spandrel's torch modules (what ComfyUI runs them with) on the same input, at the
published sizes with random weights: ESRGAN / Real-ESRGAN x4plus (RRDBNet, 23 blocks of 64 features) and
Real-ESRGAN's general-x4v3 (Compact, 32 convolutions of 64 features).

Each side runs in a process of its own, alternating (ours, spandrel, ours, spandrel, ...), so that its memory is its
own: printed per network are the seconds of one tile (after a warm-up), the peak resident memory the tile added
(VmHWM after less VmRSS before), and ours / spandrel.

    python -m bench.upscaler_models [--repeats 2] [--tile 192]
"""

import argparse
import json
import sys
import time
from pathlib import Path

from bench.timing import load_line, machine_line, median, run_worker, table

NETWORKS = {"RRDBNet x4 (23 blocks, 64 features)": ("rrdb", {"scale": 4, "num_filters": 64, "num_blocks": 23}),
            "Compact x4 (32 convolutions, 64 features)": ("compact", {"num_feat": 64, "num_conv": 32, "upscale": 4})}


def peak_rss_bytes() -> int:
    """VmHWM: the process's peak resident memory (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(side: str, network: str, tile: int, folder: Path) -> None:
    """One side, one network: load, one warm-up tile, one timed tile; prints RESULT {seconds, peak_growth}."""
    import mflux_core  # noqa: F401 (before numpy/torch: the BLAS choice)
    import numpy as np
    import torch
    from PIL import Image

    kind, shape = NETWORKS[network]
    path = folder / f"{kind}.pth"
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (tile, tile, 3), np.uint8))
    if side == "ours":
        from mflux_core.upscaler_models import model_pass, read_upscaler

        model = read_upscaler(path)

        def run():
            model_pass(model, image, None)
    else:
        from tests.spandrel_reference import reference_module

        module = reference_module(torch.load(path, weights_only=True))
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)[None]

        def run():
            with torch.no_grad():
                module(pixels)
    run()
    before = rss_bytes()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    print("RESULT " + json.dumps({"seconds": seconds, "peak_growth": max(0, peak_rss_bytes() - before)}))


def write_models(folder: Path) -> None:
    from tests.fixtures.upscaler_models import random_compact, random_rrdb, write

    write(random_rrdb(**NETWORKS[next(iter(NETWORKS))][1]), folder / "rrdb.pth")
    write(random_compact(**NETWORKS[list(NETWORKS)[1]][1]), folder / "compact.pth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tile", type=int, default=192)
    parser.add_argument("--worker", nargs=3, metavar=("SIDE", "NETWORK", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.tile, Path(args.worker[2]))
        return
    import tempfile

    print(machine_line())
    print(load_line())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_models(Path(folder))
        for network in NETWORKS:
            runs = {"ours": [], "spandrel": []}
            for _ in range(args.repeats):
                for side in runs:
                    result = run_worker("bench.upscaler_models", "--tile", str(args.tile), "--worker", side,
                                        network, folder)
                    if "error" in result:
                        sys.exit(f"{side} failed on {network}:\n{result['error']}")
                    runs[side].append(result)
            seconds = {side: median([r["seconds"] for r in results]) for side, results in runs.items()}
            memory = {side: median([r["peak_growth"] for r in results]) / 2**20 for side, results in runs.items()}
            rows.append([network, seconds["ours"], seconds["spandrel"], seconds["ours"] / seconds["spandrel"],
                         f"{memory['ours']:.0f}", f"{memory['spandrel']:.0f}",
                         f"{memory['ours'] / max(memory['spandrel'], 1):.2f}"])
    print(f"one {args.tile} px tile, median of {args.repeats} processes a side")
    print(table(["network", "ours s", "spandrel s", "ours/spandrel", "ours peak MiB", "spandrel peak MiB",
                 "ours/spandrel"], rows))
    print(load_line())


if __name__ == "__main__":
    main()
