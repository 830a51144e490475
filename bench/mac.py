"""One command for a Mac (or any machine): seconds per step, peak memory and the VAE decode time of
FLUX.1 schnell and dev at 1024x1024 with the weights already on disk, and mflux's numbers beside ours
when mflux is installed. Prints one block of text to paste into an issue.

    python -m bench.mac                       # schnell and dev, 1024x1024, 4 steps
    python -m bench.mac --quantize 8          # both sides quantized to 8 bits
    python -m bench.mac --model demo --size 64 --steps 1   # the shipped demo model: a smoke check

Nothing is downloaded: a model whose weights are not on disk is skipped with one line. Each model runs in a
process of its own (ours, then mflux's `mflux-generate` with the same settings), so each peak is its own.
Ours: the model load, the first step (it includes the prompt's encoding), the median of the later steps,
MLX's peak memory during the generation (weights included), and one VAE decode of random latents at the
same size, timed on its own with its own peak. mflux: its CLI run twice, with 1 and with N steps; seconds
per step are the difference over N - 1, so its load and decode drop out; the memory is its process's
largest resident set.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.timing import git_revision, load_line, run_worker
from mflux_core.settings_schema import QUANTIZE_BITS

MODELS = ("schnell", "dev")
PROMPT = "a lighthouse on a rocky coast at dusk, photograph"


def ours_worker(model: str, size: int, steps: int, quantize: int | None) -> dict:
    """Generate one image with `model` and time its parts (runs in its own process)."""
    from mflux_core.backend import backend_name  # before mlx.core: it loads OpenBLAS on Linux

    import mlx.core as mx

    from mflux_core.events import Step
    from mflux_core.generation import decode_latents
    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest
    from mflux_core.sampling.latents import latent_grid, pack_latents

    manager = ModelManager()
    request = GenerationRequest(model=model, prompt=PROMPT, width=size, height=size, steps=steps, seed=0,
                                quantize=quantize)
    start = time.perf_counter()
    with manager.session(request) as flux:
        mx.eval(flux.transformer.parameters())
    loaded = time.perf_counter()
    step_times = []
    manager.generate(request, report=lambda event: step_times.append(time.perf_counter())
                     if isinstance(event, Step) else None)
    peak = mx.get_peak_memory()  # the manager resets it when a run starts
    intervals = [b - a for a, b in zip(step_times, step_times[1:])]

    h, w = latent_grid(size, size, flux.vae_scale_factor)
    latents = pack_latents(mx.random.normal((1, flux.latent_channels, h, w), key=mx.random.key(0)))
    mx.eval(latents)
    decode_latents(flux, latents, (h, w))  # warm-up (kernels built, buffers cached)
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    decode_start = time.perf_counter()
    decode_latents(flux, latents, (h, w))
    decode_seconds = time.perf_counter() - decode_start
    return {
        "backend": backend_name(), "load": loaded - start, "first_step": step_times[0] - loaded,
        "per_step": statistics.median(intervals) if intervals else None, "peak": peak,
        "decode": decode_seconds, "decode_peak": mx.get_peak_memory() - before,
    }


def mflux_run(model: str, size: int, steps: int, quantize: int | None) -> tuple[float, int]:
    """Wall seconds and largest resident set (bytes) of one `mflux-generate` run, offline."""
    with tempfile.TemporaryDirectory() as tmp:
        command = ["mflux-generate", "--model", model, "--prompt", PROMPT, "--steps", str(steps), "--seed", "0",
                   "--height", str(size), "--width", str(size), "--output", os.path.join(tmp, "out.png")]
        if quantize:
            command += ["--quantize", str(quantize)]
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError((proc.stderr or proc.stdout).strip().splitlines()[-1])
    max_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child's so far
    return seconds, max_rss if sys.platform == "darwin" else max_rss * 1024  # bytes on macOS, KiB on Linux


def mflux_worker(model: str, size: int, steps: int, quantize: int | None) -> dict:
    one, _ = mflux_run(model, size, 1, quantize)
    many, max_rss = mflux_run(model, size, steps, quantize)
    return {"per_step": (many - one) / (steps - 1), "process": many, "max_rss": max_rss}


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def machine() -> str:
    if sys.platform == "darwin":
        def sysctl(key: str) -> str:
            return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True).stdout.strip()

        memory = int(sysctl("hw.memsize") or 0)
        return f"{sysctl('machdep.cpu.brand_string')}, {gib(memory)} memory, macOS {platform.mac_ver()[0]}"
    return f"{platform.platform()}, {os.cpu_count()} cores"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def ours_line(model: str, size: int, steps: int, result: dict) -> str:
    if "error" in result:
        return f"{model}: failed: {result['error'].splitlines()[-1]}"
    per_step = f"{result['per_step']:.2f} s/step" if result["per_step"] is not None else "one step only"
    return (f"{model} {size}x{size}, {steps} steps ({result['backend']}): {per_step}, first step "
            f"{result['first_step']:.2f} s, load {result['load']:.1f} s, peak {gib(result['peak'])}; "
            f"VAE decode {result['decode']:.2f} s, peak {gib(result['decode_peak'])}")


def mflux_line(model: str, steps: int, ours: dict, result: dict) -> str:
    if "error" in result:
        return f"mflux {model}: failed: {result['error'].splitlines()[-1]}"
    ratio = f", ours/mflux {ours['per_step'] / result['per_step']:.2f}" if ours.get("per_step") else ""
    return (f"mflux {model}: {result['per_step']:.2f} s/step{ratio}; whole process with {steps} steps "
            f"{result['process']:.1f} s, max RSS {gib(result['max_rss'])}")


def report(models: list[str], size: int, steps: int, quantize: int | None) -> list[str]:
    from mflux_core.registry import on_disk
    from mflux_core.weights.resolve import DEMO_MODELS

    lines = [
        "mflux-studio benchmark (python -m bench.mac): paste this block into an issue",
        f"machine: {machine()}; {load_line()}",
        f"mflux-studio {git_revision()}, mlx {version('mlx')}, mflux {version('mflux')}, python "
        f"{platform.python_version()}, quantize {quantize or 'none'}",
    ]
    has_mflux = shutil.which("mflux-generate") is not None
    settings = [str(size), str(steps), str(quantize or 0)]
    for model in models:
        if not on_disk(model):
            lines.append(f"{model}: skipped (its weights are not on disk; nothing is downloaded)")
            continue
        ours = run_worker("bench.mac", "--worker", "ours", model, *settings)
        lines.append(ours_line(model, size, steps, ours))
        if model in DEMO_MODELS:
            continue  # mflux cannot load the demo models
        if not has_mflux:
            lines.append(f"mflux {model}: skipped (mflux is not installed)")
        elif steps < 2:
            lines.append(f"mflux {model}: skipped (its s/step needs at least 2 steps)")
        else:
            lines.append(mflux_line(model, steps, ours, run_worker("bench.mac", "--worker", "mflux", model, *settings)))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=",".join(MODELS), help="comma-separated: schnell,dev (default) or demo")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--quantize", type=int, choices=QUANTIZE_BITS)
    parser.add_argument("--worker", nargs=5, metavar=("SIDE", "MODEL", "SIZE", "STEPS", "QUANTIZE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        side, model, size, steps, quantize = args.worker
        measure = ours_worker if side == "ours" else mflux_worker
        print("RESULT " + json.dumps(measure(model, int(size), int(steps), int(quantize) or None)), flush=True)
        return
    lines = report(args.model.split(","), args.size, args.steps, args.quantize)
    print("```\n" + "\n".join(lines) + "\n```")


if __name__ == "__main__":
    main()
