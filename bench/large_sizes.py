"""Large sizes under a memory budget, on the shipped demo weights (a copy that lists no native sizes, so they run
at the asked size instead of their 64x64), each run a fresh process.

  ours       `mflux-studio generate --memory-budget GB` at growing square sizes: the largest that
             completes (a refusal says how much it would need), its seconds and peak RSS
  diffusers  FluxPipeline on the same demo folder at the comparison size (VAE tiling on, as the
             only way its decoder fits there), seconds and peak RSS

Peak RSS is the process's high-water mark (VmHWM, Linux). The last line prints the ratios at the
comparison size.

    python -m bench.large_sizes [--budget 6] [--sizes 1024 2048 3072 4096] [--compare 2048] [--steps 4]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a red circle on a blue background"
PEAK_REPORTER = """
import atexit, sys
from pathlib import Path
def report_peak():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
    print("PEAK_KB", line.split()[1], file=sys.stderr)
atexit.register(report_peak)
"""
OURS = PEAK_REPORTER + "from mflux_core.cli import main\nsys.exit(main(sys.argv[1:]))\n"
DIFFUSERS = PEAK_REPORTER + """
import torch
from diffusers import FluxPipeline
folder, size, steps, output, prompt = sys.argv[1:6]
pipe = FluxPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
pipe.vae.enable_tiling()
pipe(prompt, height=int(size), width=int(size), num_inference_steps=int(steps), guidance_scale=3.5,
     generator=torch.Generator().manual_seed(1)).images[0].save(output)
"""


def run(script: str, *args: str) -> tuple[int, float, int, str]:
    """(exit code, seconds, peak RSS bytes, last stderr line) of a fresh interpreter running `script`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = re.search(r"PEAK_KB (\d+)", done.stderr)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("PEAK_KB")]
    return done.returncode, seconds, int(peak.group(1)) * 1024 if peak else 0, (lines or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=6.0, help="our --memory-budget in GB")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 3072, 4096])
    parser.add_argument("--compare", type=int, default=2048, help="the size both sides run at")
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from bench.timing import load_line, machine_line, table
    from mflux_core.native_sizes import link_any_size_copies
    from mflux_core.weights.resolve import DEMO_MODELS_ENV, demo_models_dir

    print(machine_line())
    rows, ours_at = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        link_any_size_copies(demo_models_dir(), Path(tmp) / "demo_models")
        os.environ[DEMO_MODELS_ENV] = str(Path(tmp) / "demo_models")  # `--model demo` in the runs below
        for size in sorted(set(args.sizes) | {args.compare}):
            code, seconds, peak, last = run(OURS, "generate", "--model", "demo", "--prompt", PROMPT, "--seed", "1",
                                            "--steps", str(args.steps), "--width", str(size), "--height", str(size),
                                            "--memory-budget", str(args.budget), "--output", f"{tmp}/ours.png")
            ours_at[size] = (code, seconds, peak)
            rows.append([f"ours {size}", "done" if code == 0 else last[:90], seconds, peak / 1e9])
            print(rows[-1], flush=True)
        code, seconds, peak, last = run(DIFFUSERS, str(Path(tmp) / "demo_models" / "demo"), str(args.compare), str(args.steps), f"{tmp}/d.png",
                                        PROMPT)
        rows.append([f"diffusers {args.compare}", "done" if code == 0 else last[:90], seconds, peak / 1e9])
    print(f"\ndemo model, {args.steps} steps, our budget {args.budget:g} GB; {load_line()}")
    print(table(["run", "outcome", "seconds", "peak RSS GB"], rows))
    completed = [size for size, (code, _, _) in ours_at.items() if code == 0]
    print(f"largest size that completes within {args.budget:g} GB: {max(completed) if completed else 'none'}")
    ours_code, ours_seconds, ours_peak = ours_at[args.compare]
    if ours_code == 0 and code == 0:
        print(f"ratios at {args.compare}x{args.compare}: time ours/diffusers {ours_seconds / seconds:.2f}, "
              f"peak RSS ours/diffusers {ours_peak / peak:.2f}")


if __name__ == "__main__":
    main()
