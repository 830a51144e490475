"""The whole pipeline on a tiny FLUX.1 (the test fixture), where fixed overheads dominate.

Each round runs, as fresh processes, in turn:
  ours        `mflux-studio generate` (import, load, tokenize, 4 steps, decode, save PNG + metadata)
  diffusers   a script doing the same with FluxPipeline (load, 4 steps, save PNG)
  ... import  the same interpreters doing only their imports
Both get the same initial noise, so the images must agree (largest pixel difference printed).
The diffusers script also reports its load / generate / save split; ours reports its generate
seconds (`--verbose`). Median over the rounds.

    python -m bench.end_to_end [--repeats 3] [--size 64] [--steps 4]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a small red house beside a lake at dawn"
DIFFUSERS_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import numpy as np, torch
from diffusers import FluxPipeline
imported = time.perf_counter()
folder, noise_path, output, size, steps, prompt = sys.argv[1:7]
pipe = FluxPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
loaded = time.perf_counter()
noise = torch.from_numpy(np.load(noise_path))
b, c, h, w = noise.shape
latents = noise.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)
image = pipe(prompt, height=int(size), width=int(size), num_inference_steps=int(steps), guidance_scale=3.5,
             latents=latents).images[0]
generated = time.perf_counter()
image.save(output)
saved = time.perf_counter()
print("PHASES " + json.dumps({"import": imported - start, "load": loaded - imported,
                              "generate": generated - loaded, "save": saved - generated}))
"""
OURS_IMPORTS = "import mflux_core.cli, mflux_core.manager, mflux_core.images.io"
DIFFUSERS_IMPORTS = "import numpy, torch; from diffusers import FluxPipeline"


def wall(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command[:4]} failed:\n{proc.stderr[-2000:]}")
    return seconds, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from bench.timing import load_line, machine_line, median, spread, table
    from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux

    print(machine_line())
    python = sys.executable
    cli = str(Path(python).with_name("mflux-studio"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = build_tiny_flux(tmp / "tiny-dev", TinyFluxSpec())
        latent = args.size // 8
        noise = np.random.default_rng(0).standard_normal((1, 4, latent, latent)).astype(np.float32)
        np.save(tmp / "noise.npy", noise)
        ours_png, theirs_png = tmp / "ours.png", tmp / "diffusers.png"
        ours_cmd = [cli, "generate", "--path", str(folder), "--prompt", PROMPT, "--steps", str(args.steps),
                    "--height", str(args.size), "--width", str(args.size), "--guidance", "3.5",
                    "--init-noise", str(tmp / "noise.npy"), "--output", str(ours_png), "--verbose"]
        theirs_cmd = [python, "-c", DIFFUSERS_SCRIPT, str(folder), str(tmp / "noise.npy"), str(theirs_png),
                      str(args.size), str(args.steps), PROMPT]
        seconds = {name: [] for name in ("ours", "diffusers", "ours import", "diffusers import")}
        ours_generate, phases = [], []
        for _ in range(args.repeats):
            s, out = wall(ours_cmd)
            seconds["ours"].append(s)
            ours_generate += [float(line.split()[2]) for line in out.splitlines() if line.startswith("seed ")]
            s, out = wall(theirs_cmd)
            seconds["diffusers"].append(s)
            phases += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("PHASES ")]
            seconds["ours import"].append(wall([python, "-c", OURS_IMPORTS])[0])
            seconds["diffusers import"].append(wall([python, "-c", DIFFUSERS_IMPORTS])[0])
        with Image.open(ours_png) as a, Image.open(theirs_png) as b:
            pixel_diff = int(np.abs(np.asarray(a.convert("RGB"), np.int16) - np.asarray(b.convert("RGB"), np.int16)).max())

    split = {k: median([p[k] for p in phases]) for k in phases[0]}
    rows = [[name, median(v), spread(v)] for name, v in seconds.items()]
    print(f"\n{args.size}x{args.size}, {args.steps} steps, tiny FLUX.1-dev fixture; images differ by at most "
          f"{pixel_diff}/255; {load_line()}")
    print(table(["process", "wall s", "spread"], rows))
    print(f"ours: generate (encode + denoise + decode) {median(ours_generate):.2f} s of the run")
    print("diffusers: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
    total = median(seconds["ours"]) / median(seconds["diffusers"])
    imports = median(seconds["ours import"]) / median(seconds["diffusers import"])
    print(f"ratios: whole run ours/diffusers {total:.2f}, imports ours/diffusers {imports:.2f}")


if __name__ == "__main__":
    main()
