"""Memory and load time of a Forge NF4 FLUX.1 transformer (flux1-dev-bnb-nf4-v2's layout): ours (each layer decoded
and requantized into MLX's affine groups, at 4 bits or at `-q 8`) against what bitsandbytes keeps (the file's own
tensors: Forge, and diffusers on CUDA, run NF4 from them) and against bfloat16, in one run.

    .venv/bin/python -m bench.nf4_memory [--blocks 1]

A FLUX.1 of full width (3072, 24 heads) and `--blocks` double + single blocks, random weights (bench/gguf_memory.py's),
every matrix quantized by bitsandbytes' own `quantize_4bit` (NF4, blocks of 64, no double quantization, as Forge's
v2 files), the rest in bfloat16, under `model.diffusion_model.`. diffusers cannot load it here (its bitsandbytes
loading needs a GPU), so the peer is the file's tensor bytes, which bitsandbytes holds as they are.
"""

import tempfile
import time
from pathlib import Path

import mflux_core  # noqa: F401  (loads OpenBLAS before mlx.core)
import bitsandbytes.functional as bnb
import mlx.core as mx
import torch
from safetensors.torch import save_file

from bench.gguf_memory import GIB, state_from_command_line
from mflux_core.weights.bfl import COMFY_PREFIX, load_bfl_transformer
from mflux_core.weights.quantize import parameter_bytes, quantize_model
from mflux_core.weights.resolve import resident_bytes_of


def write_nf4(path: Path, state: dict[str, torch.Tensor]) -> int:
    """The state as a Forge NF4 file; returns its tensors' bytes."""
    stored = {}
    for name, value in state.items():
        if value.ndim == 2:
            codes, quant_state = bnb.quantize_4bit(value, blocksize=64, quant_type="nf4")
            stored[COMFY_PREFIX + name] = codes
            stored.update({f"{COMFY_PREFIX}{name}.{key}": tensor
                           for key, tensor in quant_state.as_dict(packed=True).items()})
        else:
            stored[COMFY_PREFIX + name] = value.to(torch.bfloat16)
    save_file(stored, str(path))
    return sum(tensor.numel() * tensor.element_size() for tensor in stored.values())


def main() -> None:
    _, state = state_from_command_line(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flux1-bnb-nf4.safetensors"
        theirs = write_nf4(path, state)
        print(f"NF4 file {path.stat().st_size / GIB:.3f} GiB, its tensors (what bitsandbytes keeps) {theirs / GIB:.3f}")
        print("| ours at | planned GiB | loaded GiB | peak while loading GiB | load s | ours / bitsandbytes |")
        print("| --- | --- | --- | --- | --- | --- |")
        for bits in (4, 8):
            quantize = None if bits == 4 else bits  # as the studio loads it: -q quantizes the other layers too
            planned = resident_bytes_of([path], quantize / 8 if quantize else 2)
            mx.reset_peak_memory()
            before = mx.get_active_memory()
            start = time.perf_counter()
            model = quantize_model(load_bfl_transformer(path, mx.bfloat16, bits=quantize), quantize)
            seconds = time.perf_counter() - start
            loaded, peak = parameter_bytes(model), mx.get_peak_memory() - before
            del model
            print(f"| {bits} bits{' (default)' if bits == 4 else ' (-q 8)'} | {planned / GIB:.3f} | "
                  f"{loaded / GIB:.3f} | {peak / GIB:.3f} | {seconds:.1f} | {loaded / theirs:.2f} |")


if __name__ == "__main__":
    main()
