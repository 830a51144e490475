"""Seconds per FLUX.1 transformer block on the CPU: ours (MLX) vs diffusers (torch) vs mflux 0.24 (MLX).

Real FLUX.1 widths (hidden 3072, 24 heads x 128, MLP 12288) with random float32 weights, one
double-stream and one single-stream block, at 512x512 (1024 image + 512 text tokens) and
1024x1024 (4096 + 512). The three contenders alternate within each round, so machine load
hits them alike; each figure is the median over the rounds. The floor is the block's FLOPs over
the best float32 GEMM rate measured here (MLX+OpenBLAS or torch). A full step is extrapolated as
19 double + 38 single blocks. "peak GiB" is MLX's peak memory during the blocks above the weights
and inputs (torch has no such counter on the CPU); "cpu s/block" is the CPU time used (all
threads), which moves less than wall time when other processes load the machine.

mflux runs in its own virtual environment as a worker process (it pins another MLX version);
create it once as bench/README.md says, or pass --no-mflux.

    python -m bench.transformer_block [--sizes 512,1024] [--repeats 3] [--no-mflux]
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HIDDEN, HEADS, HEAD_DIM, T5_DIM, CLIP_DIM, MLP_RATIO = 3072, 24, 128, 4096, 768, 4
TEXT_TOKENS = 512
DOUBLE_BLOCKS, SINGLE_BLOCKS = 19, 38
MFLUX_PYTHON = Path(os.environ.get("MFLUX_PYTHON", Path.home() / ".cache/mflux-bench/venv/bin/python"))
OPENBLAS = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"


def block_flops(tokens: int) -> float:
    """Matmul FLOPs of one block (double and single blocks are equal): q, k, v, out, MLP, attention."""
    linear = 2 * tokens * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * MLP_RATIO * HIDDEN)
    return linear + 4 * tokens * tokens * HIDDEN


def position_ids(size: int):
    import numpy as np

    grid = size // 16
    image = np.zeros((grid, grid, 3), np.float32)
    image[..., 1] = np.arange(grid)[:, None]
    image[..., 2] = np.arange(grid)[None, :]
    return image.reshape(-1, 3), np.zeros((TEXT_TOKENS, 3), np.float32)


def random_activations(size: int) -> dict:
    """Inputs of the blocks: image and text hidden states and the conditioning vector (same for all)."""
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = (size // 16) ** 2
    return {
        "image": rng.standard_normal((1, tokens, HIDDEN), dtype=np.float32),
        "text": rng.standard_normal((1, TEXT_TOKENS, HIDDEN), dtype=np.float32),
        "temb": rng.standard_normal((1, HIDDEN), dtype=np.float32),
    }


# --- contenders: each returns {"double": fn, "single": fn} for one size -------------------------


def ours(size: int) -> dict:
    import mlx.core as mx

    from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig

    mx.random.seed(0)
    config = FluxTransformerConfig.from_dict(dict(
        num_layers=1, num_single_layers=1, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
        joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM, guidance_embeds=True))
    model = FluxTransformer(config)
    mx.eval(model.parameters())
    double, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
    a = {k: mx.array(v) for k, v in random_activations(size).items()}
    image_ids, text_ids = position_ids(size)
    rope = model.rope_tables(image_ids, text_ids)
    joint = mx.concatenate([a["text"], a["image"]], axis=1)
    mx.eval(rope, joint)
    resident = mx.get_active_memory()
    mx.reset_peak_memory()
    return {
        "double": lambda: mx.eval(double(a["image"], a["text"], a["temb"], rope)),
        "single": lambda: mx.eval(single(joint, a["temb"], rope)),
        "peak": lambda: mx.get_peak_memory() - resident,
    }


def diffusers(size: int) -> dict:
    import torch
    from diffusers.models.transformers.transformer_flux import (
        FluxPosEmbed, FluxSingleTransformerBlock, FluxTransformerBlock,
    )

    torch.manual_seed(0)
    double = FluxTransformerBlock(HIDDEN, HEADS, HEAD_DIM).eval()
    single = FluxSingleTransformerBlock(HIDDEN, HEADS, HEAD_DIM).eval()
    a = {k: torch.from_numpy(v) for k, v in random_activations(size).items()}
    image_ids, text_ids = position_ids(size)
    rope = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(torch.from_numpy(
        __import__("numpy").concatenate([text_ids, image_ids])))

    def run(block, *args):
        with torch.inference_mode():
            block(*args, image_rotary_emb=rope)

    return {
        "double": lambda: run(double, a["image"], a["text"], a["temb"]),
        "single": lambda: run(single, a["image"], a["text"], a["temb"]),
    }


class MfluxWorker:
    """mflux's blocks in a worker process on mflux's own MLX; times one call per request."""

    def __init__(self, python: Path):
        env = dict(os.environ, LD_PRELOAD=OPENBLAS, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        self.proc = subprocess.Popen(
            [str(python), "-m", "bench.transformer_block", "--mflux-worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd="/",
        )
        self.version = self.ask("version")

    def ask(self, request: str):
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError(f"mflux worker died on {request!r}")
        return json.loads(reply)

    def contender(self, size: int) -> dict:
        self.ask(f"setup {size}")
        calls = {kind: (lambda kind=kind: self.ask(f"run {kind}")) for kind in ("double", "single")}
        return dict(calls, peak=lambda: self.ask("peak"))

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def mflux_worker() -> None:
    """Serve `version`, `setup SIZE`, `run double|single` on stdin; one JSON reply per line."""
    import importlib.metadata

    import mlx.core as mx
    from mflux.models.flux.model.flux_transformer.embed_nd import EmbedND
    from mflux.models.flux.model.flux_transformer.joint_transformer_block import JointTransformerBlock
    from mflux.models.flux.model.flux_transformer.single_transformer_block import SingleTransformerBlock

    mx.random.seed(0)
    double, single = JointTransformerBlock(0), SingleTransformerBlock(0)
    mx.eval(double.parameters(), single.parameters())
    calls = {}
    for line in sys.stdin:
        request = line.split()
        reply = None
        if request[0] == "version":
            reply = f"mflux {importlib.metadata.version('mflux')}, mlx {mx.__version__}"
        elif request[0] == "setup":
            a = {k: mx.array(v) for k, v in random_activations(int(request[1])).items()}
            image_ids, text_ids = position_ids(int(request[1]))
            import numpy as np

            rope = EmbedND()(mx.array(np.concatenate([text_ids, image_ids])[None]))
            joint = mx.concatenate([a["text"], a["image"]], axis=1)
            mx.eval(rope, joint)
            resident = mx.get_active_memory()
            mx.reset_peak_memory()
            calls = {
                "double": lambda: mx.eval(double(a["image"], a["text"], a["temb"], rope)),
                "single": lambda: mx.eval(single(joint, a["temb"], rope)),
            }
        elif request[0] == "peak":
            reply = mx.get_peak_memory() - resident
        elif request[0] == "run":
            start, start_cpu = time.perf_counter(), time.process_time()
            calls[request[1]]()
            reply = {"wall": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}
        print(json.dumps(reply), flush=True)


# --- the floor ----------------------------------------------------------------------------------


def gemm_rates(tokens: int) -> dict:
    """float32 GFLOP/s of (tokens x 3072) @ (3072 x 12288) for MLX and torch, and MLX's error vs float64."""
    import mlx.core as mx
    import numpy as np
    import torch

    from bench.timing import median

    rng = np.random.default_rng(1)
    a = rng.standard_normal((tokens, HIDDEN), dtype=np.float32)
    w = rng.standard_normal((HIDDEN, MLP_RATIO * HIDDEN), dtype=np.float32)
    flops = 2 * tokens * HIDDEN * MLP_RATIO * HIDDEN
    ma, mw = mx.array(a), mx.array(w)
    ta, tw = torch.from_numpy(a), torch.from_numpy(w)
    rates = {}
    for name, fn in (("mlx", lambda: mx.eval(ma @ mw)), ("torch", lambda: ta @ tw)):
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rates[name] = flops / median(times) / 1e9
    rows = slice(0, 256)
    exact = a[rows].astype(np.float64) @ w.astype(np.float64)
    rates["mlx_error"] = float(np.abs(np.array(ma[rows] @ mw) - exact).max() / np.abs(exact).max())
    return rates


# --- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-mflux", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--mflux-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mflux_worker:
        mflux_worker()
        return

    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
    import torch

    from bench.timing import alternate, load_line, machine_line, median, spread, table

    print(machine_line())
    print(f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    worker = None
    if not args.no_mflux:
        if not MFLUX_PYTHON.exists():
            sys.exit(f"No mflux venv at {MFLUX_PYTHON}: create it (bench/README.md) or pass --no-mflux.")
        worker = MfluxWorker(MFLUX_PYTHON)
        print(f"peer: {worker.version} (OpenBLAS preloaded)")

    ratio_parts, rows = [], []
    for size in (int(s) for s in args.sizes.split(",")):
        tokens = (size // 16) ** 2 + TEXT_TOKENS
        contenders = {"ours": ours(size)}
        if not args.no_torch:
            contenders["diffusers"] = diffusers(size)
        if worker:
            contenders["mflux"] = worker.contender(size)
        calls = {f"{name} {kind}": blocks[kind] for name, blocks in contenders.items() for kind in ("double", "single")}
        cpu = {}
        seconds = alternate(calls, repeats=args.repeats, cpu=cpu)
        peaks = {name: blocks["peak"]() / 2**30 for name, blocks in contenders.items() if "peak" in blocks}
        rates = gemm_rates(tokens)
        best_rate = max(rates["mlx"], rates["torch"])
        floor = block_flops(tokens) / (best_rate * 1e9)
        print(f"\n{size}x{size}: {tokens} tokens, {block_flops(tokens) / 1e9:.0f} GFLOP per block; GEMM float32 "
              f"MLX {rates['mlx']:.0f} GFLOP/s (rel. error vs float64 {rates['mlx_error']:.1e}), torch "
              f"{rates['torch']:.0f}; floor {floor:.2f} s per block; {load_line()}")
        per_block = {}
        for name in contenders:
            double, single = median(seconds[f"{name} double"]), median(seconds[f"{name} single"])
            per_block[name] = (double + single) / 2
            step = DOUBLE_BLOCKS * double + SINGLE_BLOCKS * single
            peak = f"{peaks[name]:.2f}" if name in peaks else "n/a"
            cpu_block = (median(cpu[f"{name} double"]) + median(cpu[f"{name} single"])) / 2
            rows.append([f"{size}", name, double, single, per_block[name], f"{100 * floor / per_block[name]:.0f}%",
                         f"{step:.0f}", f"{cpu_block:.2f}", peak,
                         spread(seconds[f"{name} double"] + seconds[f"{name} single"])])
        for peer in ("diffusers", "mflux"):
            if peer in per_block:
                ratio_parts.append(f"{size} ours/{peer} {per_block['ours'] / per_block[peer]:.2f}")
        ratio_parts.append(f"{size} ours/floor {floor / per_block['ours'] * 100:.0f}%")
        del contenders, calls  # or the next size's resident memory counts this size's model, and its peak reads low
    print()
    print(table(["size", "contender", "double s", "single s", "per block s", "of floor", "step s (57)", "cpu s/block", "peak GiB",
                 "spread"], rows))
    print(load_line())
    if worker:
        worker.close()
    print("ratios: " + ", ".join(ratio_parts))


if __name__ == "__main__":
    main()
