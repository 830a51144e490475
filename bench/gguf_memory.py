"""Memory of a GGUF FLUX.1 transformer once loaded: ours (MLX's own Q8_0 / Q4_0 layers) against diffusers' GGUF
loading (GGUFParameter keeps ggml's blocks) and against bfloat16, in one run.

    .venv/bin/python -m bench.gguf_memory [--blocks 1]

A FLUX.1 of full width (3072, 24 heads) and `--blocks` double + single blocks, random weights, written as city96's
files are (BFL's names; every matrix whose input width divides by 32 in the type, the rest F32) by llama.cpp's
`gguf` package. Ours: the memory plan's figure (from the header), the loaded parameters' bytes and MLX's peak while
loading. Diffusers: the bytes of the transformer's tensors after `from_single_file` with GGUFQuantizationConfig.
The last column is ours / diffusers.
"""

import argparse
import json
import tempfile
from pathlib import Path

import mflux_core  # noqa: F401  (loads OpenBLAS before mlx.core)
import mlx.core as mx
import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from mflux_core.weights.bfl import COMFY_PREFIX, load_bfl_transformer
from mflux_core.weights.quantize import parameter_bytes
from mflux_core.weights.resolve import resident_bytes_of

TYPES = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0)
GIB = 2**30


def bfl_state(blocks: int) -> dict[str, torch.Tensor]:
    """A full-width FLUX.1-dev transformer's tensors in BFL's names: random weights in the shapes below, which
    diffusers' own converter must turn into exactly its model's tensors."""
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    torch.manual_seed(0)
    with torch.device("meta"):
        model = FluxTransformer2DModel(num_layers=blocks, num_single_layers=blocks, guidance_embeds=True)
    shapes = bfl_shapes(model.config, blocks)
    state = {name: torch.randn(shape) * 0.02 for name, shape in shapes.items()}
    converted = convert_flux_transformer_checkpoint_to_diffusers({COMFY_PREFIX + k: v.clone()
                                                                  for k, v in state.items()})
    assert converted.keys() == model.state_dict().keys(), "the BFL shapes below must cover diffusers' model"
    return state


def bfl_shapes(config, blocks: int) -> dict[str, tuple]:
    hidden, mlp, head = 3072, 12288, config.attention_head_dim
    shapes = {"img_in.weight": (hidden, 64), "img_in.bias": (hidden,), "txt_in.weight": (hidden, 4096),
              "txt_in.bias": (hidden,), "final_layer.linear.weight": (64, hidden), "final_layer.linear.bias": (64,),
              "final_layer.adaLN_modulation.1.weight": (2 * hidden, hidden),
              "final_layer.adaLN_modulation.1.bias": (2 * hidden,)}
    for name, width in (("time_in", 256), ("guidance_in", 256), ("vector_in", 768)):
        shapes.update({f"{name}.in_layer.weight": (hidden, width), f"{name}.in_layer.bias": (hidden,),
                       f"{name}.out_layer.weight": (hidden, hidden), f"{name}.out_layer.bias": (hidden,)})
    for i in range(blocks):
        block = f"double_blocks.{i}."
        for stream in ("img", "txt"):
            shapes.update({f"{block}{stream}_mod.lin.weight": (6 * hidden, hidden),
                           f"{block}{stream}_mod.lin.bias": (6 * hidden,),
                           f"{block}{stream}_attn.qkv.weight": (3 * hidden, hidden),
                           f"{block}{stream}_attn.qkv.bias": (3 * hidden,),
                           f"{block}{stream}_attn.proj.weight": (hidden, hidden),
                           f"{block}{stream}_attn.proj.bias": (hidden,),
                           f"{block}{stream}_attn.norm.query_norm.scale": (head,),
                           f"{block}{stream}_attn.norm.key_norm.scale": (head,),
                           f"{block}{stream}_mlp.0.weight": (mlp, hidden), f"{block}{stream}_mlp.0.bias": (mlp,),
                           f"{block}{stream}_mlp.2.weight": (hidden, mlp), f"{block}{stream}_mlp.2.bias": (hidden,)})
        block = f"single_blocks.{i}."
        shapes.update({f"{block}modulation.lin.weight": (3 * hidden, hidden),
                       f"{block}modulation.lin.bias": (3 * hidden,),
                       f"{block}linear1.weight": (3 * hidden + mlp, hidden),
                       f"{block}linear1.bias": (3 * hidden + mlp,),
                       f"{block}linear2.weight": (hidden, hidden + mlp), f"{block}linear2.bias": (hidden,),
                       f"{block}norm.query_norm.scale": (head,), f"{block}norm.key_norm.scale": (head,)})
    return shapes


def write_gguf(path: Path, state: dict[str, torch.Tensor], kind: GGMLQuantizationType) -> None:
    writer = GGUFWriter(str(path), arch="flux")
    for name, value in state.items():
        data = value.numpy().astype(np.float32)
        if data.ndim == 2 and data.shape[1] % 32 == 0:
            packed = quantize(data, kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def diffusers_bytes(path: Path, config_folder: Path) -> int:
    from diffusers import FluxTransformer2DModel, GGUFQuantizationConfig

    model = FluxTransformer2DModel.from_single_file(
        str(path), config=str(config_folder), subfolder="transformer", torch_dtype=torch.bfloat16,
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16))
    return sum(tensor.untyped_storage().nbytes() for tensor in model.state_dict().values())


def state_from_command_line(description: str) -> tuple[argparse.Namespace, dict[str, torch.Tensor]]:
    """`--blocks` from the command line, that transformer's BFL state, and a line saying its size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--blocks", type=int, default=1, help="double and single blocks each (FLUX.1: 19 and 38)")
    args = parser.parse_args()
    state = bfl_state(args.blocks)
    values = sum(value.numel() for value in state.values())
    print(f"FLUX.1 width 3072, {args.blocks} + {args.blocks} blocks: {values / 1e6:.0f} M parameters, bfloat16 "
          f"{values * 2 / GIB:.3f} GiB")
    return args, state


def main() -> None:
    args, state = state_from_command_line(__doc__.splitlines()[0])
    print("| type | file GiB | ours planned | ours loaded | ours peak while loading | diffusers | ours / diffusers |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "transformer"
        config.mkdir()
        (config / "config.json").write_text(json.dumps({
            "_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "num_layers": args.blocks,
            "num_single_layers": args.blocks, "attention_head_dim": 128, "num_attention_heads": 24,
            "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
            "axes_dims_rope": [16, 56, 56]}))
        for kind in TYPES:
            path = Path(folder) / f"flux-{kind.name}.gguf"
            write_gguf(path, state, kind)
            planned = resident_bytes_of([path], 2)
            mx.reset_peak_memory()
            before = mx.get_active_memory()
            model = load_bfl_transformer(path, mx.bfloat16)
            loaded, peak = parameter_bytes(model), mx.get_peak_memory() - before
            del model
            theirs = diffusers_bytes(path, Path(folder))
            print(f"| {kind.name} | {path.stat().st_size / GIB:.3f} | {planned / GIB:.3f} | {loaded / GIB:.3f} | "
                  f"{peak / GIB:.3f} | {theirs / GIB:.3f} | {loaded / theirs:.2f} |")


if __name__ == "__main__":
    main()
