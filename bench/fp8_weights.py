"""What holding an FP8 file's weights in FP8 costs per FLUX.1 transformer block, and what it saves: ours (MLX, linear
layers as Float8Linear, decoding into float32 per call) against our same block dense, and diffusers' layerwise casting
(`apply_layerwise_casting`: float8_e4m3fn storage, float32 compute, its way of keeping FP8 weights) against its
dense block, in one run on the CPU.

    python -m bench.fp8_weights [--sizes 512] [--repeats 3]

Real FLUX.1 widths (bench/transformer_block.py's), random weights rounded to E4M3 (as an FP8 file holds them), one
double-stream and one single-stream block. Seconds are medians over alternating rounds; bytes are the blocks'
parameters. The last line gives each FP8 contender's time and bytes as a ratio to its own dense block, and ours
against diffusers'.
"""

import argparse

from bench.transformer_block import (
    HEAD_DIM, HEADS, HIDDEN, TEXT_TOKENS, position_ids, random_activations,
)


def ours(size: int, fp8: bool) -> dict:
    import mlx.core as mx
    import mlx.nn as nn

    from mflux_core.weights.float8 import hold_float8
    from mflux_core.weights.quantize import parameter_bytes
    from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig

    mx.random.seed(0)
    model = FluxTransformer(FluxTransformerConfig.from_dict(dict(
        num_layers=1, num_single_layers=1, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
        joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True)))
    for _, layer in model.named_modules():
        if type(layer) is nn.Linear:
            layer.weight = mx.from_fp8(mx.to_fp8(layer.weight), dtype=mx.float32)
    hold_float8(model) if fp8 else mx.eval(model.parameters())
    double, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
    a = {k: mx.array(v) for k, v in random_activations(size).items()}
    rope = model.rope_tables(*position_ids(size))
    joint = mx.concatenate([a["text"], a["image"]], axis=1)
    mx.eval(rope, joint)
    return {"double": lambda: mx.eval(double(a["image"], a["text"], a["temb"], rope)),
            "single": lambda: mx.eval(single(joint, a["temb"], rope)),
            "bytes": parameter_bytes(double) + parameter_bytes(single)}


def diffusers(size: int, fp8: bool) -> dict:
    import numpy as np
    import torch
    from diffusers.hooks import apply_layerwise_casting
    from diffusers.models.transformers.transformer_flux import (
        FluxPosEmbed, FluxSingleTransformerBlock, FluxTransformerBlock,
    )

    torch.manual_seed(0)
    blocks = [FluxTransformerBlock(HIDDEN, HEADS, HEAD_DIM).eval(), FluxSingleTransformerBlock(HIDDEN, HEADS, HEAD_DIM)]
    for block in blocks:
        with torch.no_grad():
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(module.weight.to(torch.float8_e4m3fn).float())
        if fp8:
            apply_layerwise_casting(block, storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    a = {k: torch.from_numpy(v) for k, v in random_activations(size).items()}
    image_ids, text_ids = position_ids(size)
    rope = FluxPosEmbed(theta=10000, axes_dim=[16, 56, 56])(torch.from_numpy(np.concatenate([text_ids, image_ids])))

    def run(block, *args):
        with torch.inference_mode():
            block(*args, image_rotary_emb=rope)

    return {"double": lambda: run(blocks[0], a["image"], a["text"], a["temb"]),
            "single": lambda: run(blocks[1], a["image"], a["text"], a["temb"]),
            "bytes": sum(p.numel() * p.element_size() for block in blocks for p in block.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)

    from bench.timing import alternate, load_line, machine_line, median

    print(machine_line())
    for size in (int(s) for s in args.sizes.split(",")):
        contenders = {"ours dense": ours(size, False), "ours fp8": ours(size, True),
                      "diffusers dense": diffusers(size, False), "diffusers fp8": diffusers(size, True)}
        calls = {f"{name} {kind}": blocks[kind] for name, blocks in contenders.items() for kind in ("double", "single")}
        seconds = alternate(calls, repeats=args.repeats)
        per_block = {name: (median(seconds[f"{name} double"]) + median(seconds[f"{name} single"])) / 2
                     for name in contenders}
        print(f"\n{size}x{size}: {(size // 16) ** 2 + TEXT_TOKENS} tokens; {load_line()}")
        print(f"{'contender':<16} {'s/block':>8} {'MB':>8}")
        for name, blocks in contenders.items():
            print(f"{name:<16} {per_block[name]:>8.3f} {blocks['bytes'] / 1e6:>8.1f}")
        time = {peer: per_block[f"{peer} fp8"] / per_block[f"{peer} dense"] for peer in ("ours", "diffusers")}
        size_ratio = {peer: contenders[f"{peer} fp8"]["bytes"] / contenders[f"{peer} dense"]["bytes"]
                      for peer in ("ours", "diffusers")}
        print(f"ratios at {size}: fp8 / dense time ours {time['ours']:.2f}x, diffusers {time['diffusers']:.2f}x; "
              f"bytes ours {size_ratio['ours']:.2f}x, diffusers {size_ratio['diffusers']:.2f}x; ours fp8 / diffusers "
              f"fp8 time {per_block['ours fp8'] / per_block['diffusers fp8']:.2f}x")


if __name__ == "__main__":
    main()
