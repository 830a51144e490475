"""Upscale in tiles against the same upscale in one piece, on the shipped demo weights (a copy that lists no native
sizes, so they run at the asked size), each run a fresh `mflux-studio upscale` process with the same memory budget:
the Lanczos upscaler at image strength 0.65, a 256 px picture to each output size.

  whole   the output in one pass (the VAE tiles itself when the whole does not fit the budget)
  tiles   --tile-size TILE: the transformer and the VAE at one tile's size, the tiles blended

Printed per size: outcome, seconds and peak RSS (VmHWM) each way, and the ratios tiles / whole.

    python -m bench.tiled_upscale [--budget 6] [--sizes 1024 2048] [--tile 512] [--steps 4]
"""

import argparse
import os
import tempfile
from pathlib import Path

from PIL import Image

from bench.large_sizes import OURS, PROMPT, run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=6.0, help="--memory-budget in GB, both ways")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from bench.timing import load_line, machine_line, table
    from mflux_core.native_sizes import link_any_size_copies
    from mflux_core.weights.resolve import DEMO_MODELS_ENV, demo_models_dir

    print(machine_line())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        link_any_size_copies(demo_models_dir(), Path(tmp) / "demo_models")
        os.environ[DEMO_MODELS_ENV] = str(Path(tmp) / "demo_models")  # `--model demo` in the runs below
        small = Path(tmp) / "small.png"
        Image.radial_gradient("L").convert("RGB").resize((256, 256)).save(small)
        for size in args.sizes:
            flags = ["upscale", "--model", "demo", "--prompt", PROMPT, "--seed", "1", "--steps", str(args.steps),
                     "--image-path", str(small), "--width", str(size), "--height", str(size), "--upscaler", "Lanczos",
                     "--memory-budget", str(args.budget)]
            runs = {"whole": run(OURS, *flags, "--output", f"{tmp}/whole.png"),
                    "tiles": run(OURS, *flags, "--tile-size", str(args.tile), "--output", f"{tmp}/tiles.png")}
            for way, (code, seconds, peak, last) in runs.items():
                rows.append([f"{way} {size}", "done" if code == 0 else last[:90], seconds, peak / 1e9])
                print(rows[-1], flush=True)
            (whole_code, whole_seconds, whole_peak, _), (tiles_code, tiles_seconds, tiles_peak, _) = runs.values()
            if whole_code == 0 and tiles_code == 0:
                rows.append([f"tiles / whole {size}", "", tiles_seconds / whole_seconds, tiles_peak / whole_peak])
    print(f"\ndemo model, {args.steps} steps, tiles of {args.tile} px, budget {args.budget:g} GB; {load_line()}")
    print(table(["run", "outcome", "seconds", "peak RSS GB"], rows))


if __name__ == "__main__":
    main()
