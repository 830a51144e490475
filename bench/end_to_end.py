"""The whole pipeline: on a tiny FLUX.1 (the test fixture), where fixed overheads dominate, or with `--full-width`
on a FLUX.1 of full width and shallow depth (the real VAE, a 3072-wide transformer of 1 double + 1 single block,
4096-wide T5 output), where the VAE and the transformer's GEMMs dominate as they do on FLUX.1 (issue 28).

Each round runs, as fresh processes, in turn:
  ours        `mflux-studio generate` (import, load, tokenize, 4 steps, decode, save PNG + metadata)
  diffusers   a script doing the same with FluxPipeline (load, 4 steps, save PNG)
  ... import  the same interpreters doing only their imports
Both get the same initial noise, so the images must agree (largest pixel difference printed).
The diffusers script also reports its load / generate / save split; ours reports its generate
seconds (`--verbose`). Median over the rounds.

    python -m bench.end_to_end [--repeats 3] [--size 64] [--steps 4]
    python -m bench.end_to_end --full-width --size 512 --steps 2 [--repeats 2]
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


def build_full_width_shallow(folder: Path) -> Path:
    """A FLUX.1-dev folder at full width and shallow depth: tiny text encoders whose outputs have FLUX.1's widths
    (T5 4096, CLIP 768), a 1 + 1 block transformer at 3072 wide, and the full FLUX.1 VAE; random float32 weights."""
    import shutil

    import torch
    from diffusers import AutoencoderKL

    from bench.vae import FLUX_VAE
    from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux

    spec = TinyFluxSpec(latent_channels=16, text_dim=4096, pooled_dim=768, heads=24, head_dim=128,
                        axes_dims_rope=(16, 56, 56), num_layers=1, num_single_layers=1)
    build_tiny_flux(folder, spec)
    shutil.rmtree(folder / "vae")
    torch.manual_seed(0)
    AutoencoderKL(**FLUX_VAE).eval().save_pretrained(folder / "vae")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--full-width", action="store_true",
                        help="FLUX.1's widths at 1 + 1 blocks with the real VAE, instead of the tiny fixture")
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
        if args.full_width:
            folder, model_name = build_full_width_shallow(tmp / "full-width-dev"), "full-width shallow FLUX.1-dev"
        else:
            folder, model_name = build_tiny_flux(tmp / "tiny-dev", TinyFluxSpec()), "tiny FLUX.1-dev fixture"
        channels = json.loads((folder / "vae" / "config.json").read_text())["latent_channels"]
        latent = args.size // 8
        noise = np.random.default_rng(0).standard_normal((1, channels, latent, latent)).astype(np.float32)
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
    print(f"\n{args.size}x{args.size}, {args.steps} steps, {model_name}; images differ by at most "
          f"{pixel_diff}/255; {load_line()}")
    print(table(["process", "wall s", "spread"], rows))
    print(f"ours: generate (encode + denoise + decode) {median(ours_generate):.2f} s of the run")
    print("diffusers: " + ", ".join(f"{k} {v:.2f} s" for k, v in split.items()))
    total = median(seconds["ours"]) / median(seconds["diffusers"])
    imports = median(seconds["ours import"]) / median(seconds["diffusers import"])
    print(f"ratios: whole run ours/diffusers {total:.2f}, imports ours/diffusers {imports:.2f}")


if __name__ == "__main__":
    main()
