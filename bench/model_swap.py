"""Cold load vs transformer swap in the ModelManager, for a tiny FLUX.1 and a full-width one.

Each size gets two model folders whose VAE and text encoders are identical file for file (tiny
ones, from tests/fixtures/tiny_flux.py) and whose transformers differ:
  tiny  the test fixtures' transformer (2 double + 2 single blocks, width 32)
  full  FLUX.1-dev's widths (3072 = 24 heads x 128, T5 width 4096, CLIP 768, 64 latent channels)
        with --double-blocks + --single-blocks blocks, random bfloat16 weights saved by diffusers
        (the real key names, sharded with an index JSON like the published files)

Timed in one process, page cache warm (every file was just written or read), median of --repeats:
  cold      a fresh ModelManager's model_for(A): transformer + VAE + text encoders
  hit       model_for(A) again while A is resident: only the content fingerprints are read
  swap      model_for(B) with A resident (one resident transformer): evict A, load B
  load      the part of the swap spent in loading B's transformer (read, cast, build, evaluate)
  raw read  reading B's transformer files through one reused 16 MiB buffer: the I/O floor of a swap
  mx.load   reading B's transformer files into MLX arrays (no cast, no model)

    .venv/bin/python -m bench.model_swap [--double-blocks 1] [--single-blocks 1] [--repeats 3] [--dtype float32]

The last line gives swap / cold and swap / raw read per size.
"""

import argparse
import gc
import shutil
import tempfile
from pathlib import Path

import mflux_core  # noqa: F401  (loads OpenBLAS before mlx.core)
import mlx.core as mx

from bench.timing import git_revision, load_line, machine_line, median, spread, table, timed
from mflux_core.backend import resolve_dtype
from mflux_core.manager import ModelManager, weights_on_disk
from mflux_core.request import GenerationRequest

FULL_WIDTH = dict(in_channels=64, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                  pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
SHARD_SIZE = "600MB"
NAMES = ("cold", "hit", "swap", "load", "raw read", "mx.load")


def write_full_width_transformer(folder: Path, double_blocks: int, single_blocks: int, seed: int) -> None:
    """Replace `folder` with a full-width FLUX.1 transformer of random bfloat16 weights (diffusers' layout)."""
    import torch
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):  # no slow default initialisation: the weights are drawn below
        model = FluxTransformer2DModel(num_layers=double_blocks, num_single_layers=single_blocks, **FULL_WIDTH)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    shutil.rmtree(folder)
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE)


def build_pair(root: Path, size: str, args) -> tuple[Path, Path]:
    """Two model folders sharing VAE and text encoder files, with different transformers."""
    from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux

    first = build_tiny_flux(root / f"{size}-a", TinyFluxSpec())
    second = build_tiny_flux(root / f"{size}-b", TinyFluxSpec(attention_gain=10.0))
    if size == "full":
        for seed, folder in enumerate((first, second)):
            write_full_width_transformer(folder / "transformer", args.double_blocks, args.single_blocks, seed)
    return first, second


def read_files(files: list[Path], chunk: int = 16 << 20) -> int:
    buffer = memoryview(bytearray(chunk))
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                total += count
    return total


def load_arrays(files: list[Path]) -> None:
    arrays = {}
    for path in files:
        arrays.update(mx.load(str(path)))
    mx.eval(list(arrays.values()))


def measure(first: Path, second: Path, dtype: mx.Dtype, repeats: int) -> dict:
    transformer_files = weights_on_disk(second / "transformer")
    seconds = {name: [] for name in NAMES}
    transformer_bytes = 0
    for round_index in range(repeats + 1):  # round 0 warms imports and the page cache
        gc.collect()
        mx.clear_cache()
        manager = ModelManager(max_resident_transformers=1)
        source_a = manager.resolve(GenerationRequest(model=str(first)))
        source_b = manager.resolve(GenerationRequest(model=str(second)))
        times = {
            "cold": timed(lambda: manager.resident.model_for(source_a, dtype)),
            "hit": timed(lambda: manager.resident.model_for(source_a, dtype)),
            "swap": timed(lambda: manager.resident.model_for(source_b, dtype)),
            "load": manager.resident.events[-1].seconds,
        }
        assert manager.resident.load_counts == {"transformer": 2, "vae": 1, "text_encoders": 1}, manager.resident.load_counts
        transformer_bytes = next(r["bytes"] for r in manager.status()["resident"] if r["kind"] == "transformer")
        del manager
        gc.collect()
        mx.clear_cache()
        times["raw read"] = timed(lambda: read_files(transformer_files))
        times["mx.load"] = timed(lambda: load_arrays(transformer_files))
        if round_index:
            for name, value in times.items():
                seconds[name].append(value)
    disk_bytes = sum(path.stat().st_size for path in transformer_files)
    return {"seconds": seconds, "disk_bytes": disk_bytes, "resident_bytes": transformer_bytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--double-blocks", type=int, default=1)
    parser.add_argument("--single-blocks", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="load dtype (default: the backend's)")
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype)

    results = {}
    with tempfile.TemporaryDirectory(prefix="model-swap-") as root:
        for size in ("tiny", "full"):
            first, second = build_pair(Path(root), size, args)
            results[size] = measure(first, second, dtype, args.repeats)

    print(f"model swap, {machine_line()}, {load_line()}, git {git_revision()}")
    print(f"load dtype {dtype}; full = width 3072, {args.double_blocks} double + {args.single_blocks} single blocks; "
          f"median of {args.repeats}, page cache warm")
    rows = []
    for size, result in results.items():
        seconds = result["seconds"]
        rows.append([size, f"{result['disk_bytes'] / 1e6:,.1f}", f"{result['resident_bytes'] / 1e6:,.1f}"]
                    + [f"{median(seconds[n]):.4f} ({spread(seconds[n])})" for n in NAMES])
    print(table(["model", "transformer MB on disk", "MB resident"] + [f"{n} s (spread)" for n in NAMES], rows))
    ratios = []
    for size, result in results.items():
        seconds = result["seconds"]
        swap = median(seconds["swap"])
        ratios.append(f"{size}: swap/cold {swap / median(seconds['cold']):.3f}, "
                      f"swap/raw read {swap / median(seconds['raw read']):.2f}")
    print("ratios: " + "; ".join(ratios))


if __name__ == "__main__":
    main()
