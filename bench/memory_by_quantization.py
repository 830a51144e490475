"""Model memory (bytes of parameters) of the FLUX.1 transformer and T5 per quantization setting.

    .venv/bin/python bench/memory_by_quantization.py            # FLUX.1 at full size, from its shapes
    .venv/bin/python bench/memory_by_quantization.py --path M   # a model folder (loads it per setting)

Without --path the full-size FLUX.1 transformer (19 double + 38 single blocks, width 3072) and
T5-XXL encoder (24 blocks, width 4096) are measured block by block: a model with no blocks, one
with one block of each kind, and the total is the first plus the block bytes times the block
count (blocks of a kind have identical shapes). Every quantized row goes through the engine's
own quantize_model, starting from bfloat16 weights as on Metal and CUDA; the fp8 row is what an FP8 file (its
linear weights in E4M3) holds once loaded: the bfloat16 weights rounded to E4M3, held by the engine's hold_float8.
The last line gives each setting's total as a ratio to bfloat16, the peer measured in the same run.
"""

import argparse
from pathlib import Path

import mflux_core  # noqa: F401  (loads OpenBLAS before mlx.core)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core.models.t5 import T5Config, T5Encoder, load_t5_encoder
from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig, load_transformer
from mflux_core.weights.float8 import hold_float8
from mflux_core.weights.quantize import BITS, parameter_bytes, quantize_model

SETTINGS = ("float32", "bfloat16", "fp8", *(f"{bits}-bit" for bits in sorted(BITS, reverse=True)))
FLUX1 = {"in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
         "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
         "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "feed_forward_proj": "gated-gelu"}


def bytes_per_setting(build) -> dict[str, int]:
    """Parameter bytes of the module `build()` makes, in each setting (each quantized from bfloat16)."""
    model = build()
    sizes = {"float32": parameter_bytes(model)}
    bf16 = {name: value.astype(mx.bfloat16) for name, value in tree_flatten(model.parameters())}
    mx.eval(bf16)
    del model
    for setting in SETTINGS[1:]:
        model = build()
        model.load_weights(list(bf16.items()))
        sizes[setting] = parameter_bytes(in_setting(model, setting))
        del model
    return sizes


def in_setting(model: nn.Module, setting: str) -> nn.Module:
    """The model (loaded in bfloat16) as the setting holds it: as is, held in FP8 as an FP8 file's, or quantized."""
    if setting == "fp8":
        for _, layer in model.named_modules():
            if type(layer) is nn.Linear:
                layer.weight = mx.from_fp8(mx.to_fp8(layer.weight), dtype=layer.weight.dtype)
        return hold_float8(model)
    return quantize_model(model, None if setting in ("float32", "bfloat16") else int(setting.split("-")[0]))


def combine(base: dict[str, int], *blocks: tuple[dict[str, int], int]) -> dict[str, int]:
    """base + count * (one block's bytes), per setting; each block is (bytes with it, bytes without it)."""
    return {s: base[s] + sum(count * (with_block[s] - without[s]) for (with_block, without), count in blocks)
            for s in SETTINGS}


def flux1_transformer() -> dict[str, int]:
    def build(double: int, single: int):
        return lambda: FluxTransformer(FluxTransformerConfig.from_dict(
            {**FLUX1, "num_layers": double, "num_single_layers": single}))

    none = bytes_per_setting(build(0, 0))
    one_double = bytes_per_setting(build(1, 0))
    one_single = bytes_per_setting(build(0, 1))
    return combine(none, ((one_double, none), FLUX1["num_layers"]), ((one_single, none), FLUX1["num_single_layers"]))


def t5_xxl() -> dict[str, int]:
    def build(layers: int):
        return lambda: T5Encoder(T5Config.from_dict({**T5_XXL, "num_layers": layers}))

    one, two = bytes_per_setting(build(1)), bytes_per_setting(build(2))  # block 0 also holds the position bias
    return combine(one, ((two, one), T5_XXL["num_layers"] - 1))


def from_folder(folder: Path) -> tuple[dict[str, int], dict[str, int]]:
    def measured(load) -> dict[str, int]:
        sizes = {}
        for setting in SETTINGS:
            sizes[setting] = parameter_bytes(in_setting(load(mx.float32 if setting == "float32" else mx.bfloat16),
                                                        setting))
        return sizes

    return (measured(lambda dtype: load_transformer(folder / "transformer", dtype)),
            measured(lambda dtype: load_t5_encoder(folder / "text_encoder_2", dtype)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", type=Path, help="a model folder (diffusers layout) to measure instead")
    args = parser.parse_args()
    if args.path:
        what = str(args.path)
        transformer, t5 = from_folder(args.path)
    else:
        what = "FLUX.1 (19 double + 38 single blocks) + T5-XXL (24 blocks), from their shapes"
        transformer, t5 = flux1_transformer(), t5_xxl()
    print(f"Model memory by setting: {what}")
    print(f"{'setting':<10} {'transformer MB':>15} {'T5 MB':>10} {'total MB':>10} {'vs bf16':>8}")
    totals = {s: transformer[s] + t5[s] for s in SETTINGS}
    for s in SETTINGS:
        print(f"{s:<10} {transformer[s] / 1e6:>15.2f} {t5[s] / 1e6:>10.2f} {totals[s] / 1e6:>10.2f} "
              f"{totals[s] / totals['bfloat16']:>8.3f}")
    print("ratios vs bfloat16 (total): " + ", ".join(
        f"{s} {totals[s] / totals['bfloat16']:.3f}" for s in SETTINGS if s != "bfloat16"))


if __name__ == "__main__":
    main()
