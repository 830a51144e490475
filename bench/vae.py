"""FLUX.1 VAE decode and encode on the CPU: ours (MLX) vs diffusers' AutoencoderKL (torch), float32.

The full FLUX.1 VAE configuration (channels 128/256/512/512, 2 resnets per block, 16 latent
channels) with random weights: diffusers builds the model, its weights are saved in the real
on-disk layout and loaded through our loader, so both sides compute the same function (the
largest difference is printed). Decode and encode at 512x512 and 1024x1024 alternate ours and
diffusers within each round; each figure is the median over the rounds.

Peak memory: each side runs each op once more in a process of its own. Ours: MLX's peak memory above
the weights and inputs (what `vae_peak_bytes` estimates, printed beside it), and the process's RSS
growth (MLX keeps freed buffers in its cache); diffusers: the RSS growth (torch frees eagerly).

    python -m bench.vae [--sizes 512,1024] [--repeats 3] [--skip-timing] [--skip-memory]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

FLUX_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
    norm_num_groups=32, down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    act_fn="silu", scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=True, sample_size=1024,
)


def build_pair(folder: Path):
    """diffusers' AutoencoderKL with random weights, saved to `folder` and loaded back as ours."""
    import torch
    from diffusers import AutoencoderKL

    from mflux_core.models.vae import load_vae

    torch.manual_seed(0)
    reference = AutoencoderKL(**FLUX_VAE).eval()
    with torch.no_grad():  # GroupNorm weights init to 1 and 0: perturb them so a mapping slip would show
        for name, p in reference.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    reference.save_pretrained(folder)
    return reference, load_vae(folder)


def bench_inputs(size: int):
    """Latents (NCHW) and pixels (NHWC) for one size, the same in every process."""
    import numpy as np

    rng = np.random.default_rng(size)
    latents = rng.standard_normal((1, 16, size // 8, size // 8), dtype=np.float32)
    pixels = rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)
    return latents, pixels


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class RSSPeak:
    """The largest RSS seen, sampled every millisecond while in the `with` block."""

    def __enter__(self):
        self.peak, self._done = resident_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


def ours_peak(folder: Path, op: str, size: int) -> dict:
    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
    import mlx.core as mx

    from mflux_core.models.vae import load_vae

    vae = load_vae(folder)
    latents, pixels = bench_inputs(size)
    x = mx.array(latents if op == "decode" else pixels)
    mx.eval(vae.parameters(), x)
    mx.reset_peak_memory()
    start, before = mx.get_active_memory(), resident_bytes()
    with RSSPeak() as rss:
        mx.eval(getattr(vae, op)(x))
    return {"peak": mx.get_peak_memory() - start, "rss": rss.peak - before}


def diffusers_peak(folder: Path, op: str, size: int) -> dict:
    import torch
    from diffusers import AutoencoderKL

    reference = AutoencoderKL.from_pretrained(folder).eval()
    latents, pixels = bench_inputs(size)
    x = torch.from_numpy(latents) if op == "decode" else torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    before = resident_bytes()
    with RSSPeak() as rss, torch.inference_mode():
        reference.decode(x) if op == "decode" else reference.encode(x)
    return {"rss": rss.peak - before}


def peak_in_subprocess(contender: str, folder: Path, op: str, size: int) -> dict:
    command = [sys.executable, "-m", "bench.vae", "--peak-of", contender, "--folder", str(folder),
               "--op", op, "--sizes", str(size)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise RuntimeError(f"{contender} {op} {size} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_rows(folder: Path, sizes: list[int]) -> list[list]:
    from mflux_core.models.vae import VAEConfig
    from mflux_core.models.vae_memory import vae_peak_bytes

    config = VAEConfig.from_dict(FLUX_VAE)
    rows = []
    for size in sizes:
        for op in ("decode", "encode"):
            ours = peak_in_subprocess("ours", folder, op, size)
            peer = peak_in_subprocess("diffusers", folder, op, size)
            estimate = vae_peak_bytes(config, size, size, 4, op, None)
            rows.append([size, op, ours["peak"] / 2**30, estimate / 2**30, ours["rss"] / 2**30, peer["rss"] / 2**30,
                         f"{ours['peak'] / peer['rss']:.2f}"])
            print(f"{size} {op}: ours peak {ours['peak'] / 2**30:.2f} GiB (estimate {estimate / 2**30:.2f}), "
                  f"diffusers RSS +{peer['rss'] / 2**30:.2f} GiB", flush=True)
    return rows


def time_rows(reference, ours, sizes: list[int], repeats: int) -> None:
    import mlx.core as mx
    import numpy as np
    import torch

    from bench.timing import alternate, load_line, median, spread, table

    rows, ratios = [], []
    for size in sizes:
        latents, pixels = bench_inputs(size)
        mx_latents, mx_pixels = mx.array(latents), mx.array(pixels)
        t_latents = torch.from_numpy(latents) / FLUX_VAE["scaling_factor"] + FLUX_VAE["shift_factor"]
        t_pixels = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

        def torch_decode():
            with torch.inference_mode():
                return reference.decode(t_latents).sample

        def torch_encode():
            with torch.inference_mode():
                return reference.encode(t_pixels).latent_dist.mean

        calls = {
            "ours decode": lambda: mx.eval(ours.decode(mx_latents)),
            "diffusers decode": torch_decode,
            "ours encode": lambda: mx.eval(ours.encode(mx_pixels)),
            "diffusers encode": torch_encode,
        }
        seconds = alternate(calls, repeats=repeats)
        decoded = np.array(ours.decode(mx_latents)).transpose(0, 3, 1, 2)
        decode_error = np.abs(decoded - torch_decode().numpy()).max() / np.abs(decoded).max()
        print(f"\n{size}x{size}: decode max |ours - diffusers| / max |diffusers| {decode_error:.1e}; {load_line()}")
        for op in ("decode", "encode"):
            ours_s, peer_s = median(seconds[f"ours {op}"]), median(seconds[f"diffusers {op}"])
            rows.append([size, op, ours_s, peer_s, f"{ours_s / peer_s:.2f}",
                         spread(seconds[f"ours {op}"]), spread(seconds[f"diffusers {op}"])])
            ratios.append(f"{size} {op} ours/diffusers {ours_s / peer_s:.2f}")
    print()
    print(table(["size", "op", "ours s", "diffusers s", "ours/diffusers", "spread ours", "spread diffusers"], rows))
    print(load_line())
    print("ratios: " + ", ".join(ratios))



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--peak-of", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--op", choices=["decode", "encode"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.peak_of:
        measure = ours_peak if args.peak_of == "ours" else diffusers_peak
        print(json.dumps(measure(args.folder, args.op, sizes[0])))
        return

    import torch

    from bench.timing import load_line, machine_line, table

    print(machine_line())
    print(f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        reference, ours = build_pair(Path(tmp))
        if not args.skip_timing:
            time_rows(reference, ours, sizes, args.repeats)
        if not args.skip_memory:
            del reference, ours
            rows = memory_rows(Path(tmp), sizes)
            print()
            print(table(["size", "op", "ours peak GiB", "estimate GiB", "ours RSS+ GiB", "diffusers RSS+ GiB",
                         "ours peak/diffusers"], rows))
            print(load_line())




if __name__ == "__main__":
    main()
