"""LoRA extraction on FLUX.1's layer shapes: the studio's low-rank cut (mflux_core/lora/extract.py: a randomized
SVD at ranks below a quarter of the layer's) against the full SVD that sd-scripts' flux_extract_lora.py runs
(torch.linalg.svd), in one process, alternating.

Each change is a finetune-like weight difference: a low-rank part (rank 64, what a LoRA-style finetune leaves)
plus small full-rank noise. Printed per layer shape: seconds each way, their ratio, and the share of the change
the rank keeps each way (the full SVD's is the best possible).

    python -m bench.lora_extract [--rank 32] [--repeats 2]
"""

import argparse
import time

import mflux_core  # noqa: F401 (before numpy/torch: the BLAS choice)
import numpy as np
import torch

from mflux_core.lora.extract import low_rank

SHAPES = {"attention q/k/v/out (3072 x 3072)": (3072, 3072), "MLP in (12288 x 3072)": (12288, 3072),
          "single block out (3072 x 15360)": (3072, 15360)}


def finetune_change(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    out, inputs = shape
    low = (rng.standard_normal((out, 64)) @ rng.standard_normal((64, inputs))) / np.sqrt(64 * inputs)
    return (low + 0.002 * rng.standard_normal(shape)).astype(np.float32)


def full_svd(change: np.ndarray, rank: int) -> tuple[float, float]:
    """(seconds, kept share) of sd-scripts' way: torch.linalg.svd, the first `rank` components."""
    started = time.perf_counter()
    _, s, _ = torch.linalg.svd(torch.from_numpy(change), full_matrices=False)
    seconds = time.perf_counter() - started
    squares = s.double() ** 2
    return seconds, float(squares[:rank].sum() / squares.sum())


def ours(change: np.ndarray, rank: int) -> tuple[float, float]:
    started = time.perf_counter()
    _, _, kept = low_rank(change, rank, np.random.default_rng(0))
    seconds = time.perf_counter() - started
    return seconds, kept / float(np.sum(change.astype(np.float64) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    print(f"rank {args.rank}, {torch.get_num_threads()} torch threads, best of {args.repeats}")
    print("| layer | ours s | full SVD s | ours / full | kept, ours | kept, full SVD |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios, losses = [], []
    for label, shape in SHAPES.items():
        change = finetune_change(shape, rng)
        timings = {"ours": [], "full": []}
        for _ in range(args.repeats):
            ours_seconds, ours_kept = ours(change, args.rank)
            full_seconds, full_kept = full_svd(change, args.rank)
            timings["ours"].append(ours_seconds)
            timings["full"].append(full_seconds)
        best = {way: min(values) for way, values in timings.items()}
        print(f"| {label} | {best['ours']:.2f} | {best['full']:.2f} | {best['ours'] / best['full']:.3f} | "
              f"{100 * ours_kept:.3f}% | {100 * full_kept:.3f}% |")
        ratios.append(best["ours"] / best["full"])
        losses.append(100 * (full_kept - ours_kept))
    print(f"ours / full SVD time: median {float(np.median(ratios)):.3f}; the share kept: at most "
          f"{max(losses):.3f} points below the full SVD's")


if __name__ == "__main__":
    main()
