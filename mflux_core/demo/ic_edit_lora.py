"""A demo IC-Edit LoRA: demo-fill taught the shapes world's edits with the studio's own LoRA trainer.

Each training example is a diptych of two 64 px panels (128x64, a size demo-fill lists; 64x64 is demo-kontext's
size, whose edits these are): a scene on the left,
the same scene after one Kontext-style edit on the right ("make the circle red", "move the square to the
top left", "make the background white"), captioned with IC-Edit's template around the instruction. The
config is an ordinary training config (examples.in_context), written beside the pictures, so this is the
run a user makes from the Train tab; the sequence length is the one IC-Edit resolves on demo-fill.

    python -m mflux_core.demo.ic_edit_lora RUN_FOLDER [--steps N] [--examples N] [--batch-size N] ...
    BENCH_IC_EDIT_LORA=RUN_FOLDER/out/adapter.safetensors python -m bench.demo_quality --tools ic-edit --sizes 64x64

Not shipped yet: no run so far applies the held-out edits more often than chance (README, "Offline on the demo
models").
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.models.prompt_tokenizers import load_clip_tokenizer, load_t5_tokenizer
from mflux_core.models.text_encoders import TextEncoders
from mflux_core.tools.common import default_sequence_length
from mflux_core.tools.specs import IC_EDIT_TEMPLATE, tool_spec
from mflux_core.training.lora_config import TrainingConfig
from mflux_core.training.lora_training import train_lora
from mflux_core.weights.resolve import demo_folder

PANEL = 64  # demo-fill lists 128x64: the IC-Edit diptych of two 64 px panels
TRAINING_SEED = 11  # dataset seed of the training edits (held-out evaluation draws with evaluate.EVALUATION_SEED)
LAYERS = {  # every projection of the tiny transformer: the edit has to reach both text and image streams
    "transformer_blocks": {"block_range": {"start": 0, "end": 2}, "layer_types": [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.2", "ff_context.net.2"]},
    "single_transformer_blocks": {"block_range": {"start": 0, "end": 2}, "layer_types": [
        "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"]},
}


def write_examples(folder: Path, count: int) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        example = dataset.kontext_example(TRAINING_SEED, index, PANEL, height=PANEL)
        name = f"edit_{index:04d}.png"
        Image.fromarray(np.concatenate([example.before, example.after], axis=1)).save(folder / name)
        images.append({"image": name, "prompt": IC_EDIT_TEMPLATE.format(instruction=example.instruction)})
    return images


def write_config(run: Path, steps: int, count: int, sequence_length: int, batch_size: int, learning_rate: float,
                 rank: int) -> TrainingConfig:
    images = write_examples(run / "edits", count)
    config = {
        "model": str(demo_folder("demo-fill")), "seed": 3, "width": 2 * PANEL, "height": PANEL,
        "guidance": tool_spec("ic-edit").guidance, "max_sequence_length": sequence_length,
        "training_loop": {"steps": steps, "batch_size": batch_size},
        "optimizer": {"name": "AdamW", "learning_rate": learning_rate, "weight_decay": 0.0},
        "save": {"output_path": "out", "checkpoint_frequency": 500},
        "instrumentation": {"validation_prompt": images[0]["prompt"], "validation_seed": 0},
        "lora_layers": {"rank": rank, "alpha": rank, **LAYERS},
        "examples": {"path": "edits", "in_context": True, "images": images},
    }
    path = run / "ic_edit_lora.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return TrainingConfig.from_file(path)


def ic_edit_sequence_length() -> int:
    """The T5 length IC-Edit resolves on demo-fill when a request sets none (its template's tokens included)."""
    folder = demo_folder("demo-fill")
    tokenizers = TextEncoders(folder, load_clip_tokenizer(folder / "tokenizer"),
                              load_t5_tokenizer(folder / "tokenizer_2"))
    return default_sequence_length(tokenizers, "ic-edit")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder for the pictures, the config and the training output")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--examples", type=int, default=3000, help="training edits (diptych pictures)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1.5e-3)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args(argv)
    args.run.mkdir(parents=True, exist_ok=True)
    config = write_config(args.run, args.steps, args.examples, ic_edit_sequence_length(), args.batch_size,
                          args.learning_rate, args.rank)
    outcome = train_lora(config, progress_bar=True)
    print(f"adapter: {outcome.adapter} (mean loss of the last 50 steps {np.mean(outcome.losses[-50:]):.4f})")


if __name__ == "__main__":
    main()
