"""The demo family's quality at each size, through the real engine on held-out examples (evaluate.py with
the tests' classifier): `python -m bench.demo_quality [--sizes 64x64,80x48,...] [--tools generate,fill,...]
[--models-dir DIR] [--count N]`. Prints one row per size and tool. `--tools ic-edit` measures demo-fill's own
IC-Edit LoRA, or the one in $BENCH_IC_EDIT_LORA (mflux_core.demo.diptych_lora trains one)."""

import argparse
import os
import tempfile
import time
from pathlib import Path

import mflux_core  # noqa: F401  (OpenBLAS before mlx.core)
from mflux_core.demo import evaluate
from mflux_core.demo.diptych_lora import sequence_length
from mflux_core.manager import ModelManager
from mflux_core.weights.resolve import DEMO_MODELS_ENV
from tests.fixtures.shape_classifier import classify

UPSCALED_FROM = 8  # the upscale measure's input: the picture shrunk to this shorter side (8x at 64x64, as the test)
MEASURES = {  # tool -> (what the number is, measure(manager, count, size))
    "generate": ("colour / region / background", lambda m, n, size: "{:.2f} / {:.2f} / {:.2f}".format(
        *vars(evaluate.prompt_following(m, "demo", classify, n, size=size)).values())),
    "fill": ("recoloured / kept", lambda m, n, size: "{:.2f} / {:.3f}".format(
        *evaluate.fill_scores(m, "demo-fill", classify, n, size=size))),
    "kontext": ("applied", lambda m, n, size: "{:.2f}".format(
        evaluate.kontext_applied(m, "demo-kontext", classify, n, size=size))),
    "depth": ("layout IoU", lambda m, n, size: "{:.2f}".format(
        evaluate.depth_layout(m, "demo-depth", classify, n, size=size))),
    "canny": ("layout IoU", lambda m, n, size: "{:.2f}".format(
        evaluate.controlnet_layout(m, "demo", "demo-canny", classify, n, size=size))),
    "upscale": (f"PSNR dB, ours / Lanczos, from a {UPSCALED_FROM} px shorter side",
                lambda m, n, size: "{:.1f} / {:.1f}".format(
                    *evaluate.upscale_psnr(m, "demo", "demo-upscaler", UPSCALED_FROM, n, size=size))),
    "in-context": ("applied, both panels described (size: a panel)", lambda m, n, size: "{:.2f}".format(
        evaluate.in_context_applied(m, "demo-fill", classify, n, size=size))),
    "catvton": ("garment worn (size: a panel)", lambda m, n, size: "{:.2f}".format(
        evaluate.try_on_worn(m, "demo-fill", classify, n, size=size))),
    "redux": ("reference's shape colour / region / background / shape IoU, empty prompt (64x64 only)",
              lambda m, n, size: "{:.2f} / {:.2f} / {:.2f} / {:.3f}".format(
                  *vars(evaluate.reference_carried(m, "demo", classify, n, redux="demo-redux")).values())),
    "ic-edit": ("applied with IC-Edit's LoRA / by In-Context with its prompt and no style (size: a panel)",
                lambda m, n, size: "{:.2f} / {:.2f}".format(
                    evaluate.ic_edit_applied(m, "demo-fill", classify, n, size=size,
                                             lora=os.environ.get(IC_EDIT_LORA_ENV)),
                    evaluate.in_context_edit_applied(m, "demo-fill", classify, n, size=size,
                                                     max_sequence_length=sequence_length("ic-edit")))),
}
IC_EDIT_LORA_ENV = "BENCH_IC_EDIT_LORA"  # another IC-Edit LoRA to measure than demo-fill's own


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(side) for side in item.split("x")) for item in text.split(",")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=parse_sizes, default=parse_sizes("64x64,80x48,96x96,128x80,48x112,128x128"))
    parser.add_argument("--tools", default=",".join(MEASURES))
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="where the demo folders are (default: demo_models/, the shipped family)")
    parser.add_argument("--count", type=int, default=20, help="held-out examples per size and tool")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as empty:
        if args.models_dir is not None:
            os.environ[DEMO_MODELS_ENV] = str(args.models_dir)
        manager = ModelManager(models_dir=Path(empty))
        for tool in args.tools.split(","):
            what, measure = MEASURES[tool]
            for width, height in args.sizes:
                started = time.perf_counter()
                value = measure(manager, args.count, (width, height))
                print(f"{tool:9} {width:4}x{height:<4} {what}: {value}  ({time.perf_counter() - started:.0f} s)",
                      flush=True)


if __name__ == "__main__":
    main()
