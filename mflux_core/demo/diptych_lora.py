"""Demo diptych LoRAs: demo-fill taught the shapes world's in-context tasks with the studio's own LoRA trainer, as
In-Context LoRA and IC-Edit read them.

Each training example is a diptych of two 64 px panels (128x64, a size demo-fill lists; 64x64 is demo-kontext's
size). Two kinds:
- `in-context`: a scene on the left, the same scene after one Kontext-style edit on the right (recoloured, moved,
  or on a new background), both panels described as In-Context LoRA's prompts are ("[IMAGE1] a red circle in the
  top left on a blue background; [IMAGE2] a red circle in the top left on a white background", the panel markers
  cycling through the published ones). demo-fill alone reads such a prompt as one bag of both captions.
- `ic-edit`: Kontext's edits again, with IC-Edit's template around the instruction ("... but make the background
  white").
Both ship in demo-fill's folder (in_context_lora.DEMO_LORA_FILE, ic_edit.DEMO_LORA_FILE): In-Context applies its own
on demo-fill when no style is picked, IC-Edit its own unless another is asked for (README, "Offline on the demo
models", has the runs and what they measure).

The config is an ordinary training config (examples.in_context), written beside the pictures, so this is the run
a user makes from the Train tab; the T5 length is the one the tool resolves on demo-fill.

    python -m mflux_core.demo.diptych_lora RUN_FOLDER --kind in-context|ic-edit [--steps N] [--examples N] ...
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.shapes import caption
from mflux_core.models.text_encoders import TextEncoders
from mflux_core.tools.common import default_sequence_length
from mflux_core.tools.in_context_lora import PROMPT_MARKERS
from mflux_core.tools.specs import IC_EDIT_TEMPLATE, tool_spec
from mflux_core.training.lora_config import TrainingConfig
from mflux_core.training.lora_training import train_lora
from mflux_core.weights.resolve import demo_folder

PANEL = 64  # demo-fill lists 128x64: the diptych of two 64 px panels
TRAINING_SEED = 11  # dataset seed of the training edits (held-out evaluation draws with evaluate.EVALUATION_SEED)
LAYERS = {  # every projection of the tiny transformer: the edit has to reach both text and image streams
    "transformer_blocks": {"block_range": {"start": 0, "end": 2}, "layer_types": [
        "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
        "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.2", "ff_context.net.2"]},
    "single_transformer_blocks": {"block_range": {"start": 0, "end": 2}, "layer_types": [
        "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out"]},
}


def in_context_prompt(example: dataset.KontextExample, index: int) -> str:
    left, right = PROMPT_MARKERS[index % len(PROMPT_MARKERS)]
    return f"{left} {caption(example.before_scene)}; {right} {caption(example.after_scene)}"


def ic_edit_prompt(example: dataset.KontextExample, index: int) -> str:
    return IC_EDIT_TEMPLATE.format(instruction=example.instruction)


EDIT_PROMPTS: dict[str, Callable[[dataset.KontextExample, int], str]] = {  # kind (its tool) -> an edit's prompt
    "in-context": in_context_prompt, "ic-edit": ic_edit_prompt}


def write_examples(folder: Path, kind: str, count: int) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        example = dataset.kontext_example(TRAINING_SEED, index, PANEL, height=PANEL)
        name = f"edit_{index:04d}.png"
        Image.fromarray(np.concatenate([example.before, example.after], axis=1)).save(folder / name)
        images.append({"image": name, "prompt": EDIT_PROMPTS[kind](example, index)})
    return images


def write_config(run: Path, kind: str, steps: int, count: int, batch_size: int, learning_rate: float,
                 rank: int) -> TrainingConfig:
    images = write_examples(run / "edits", kind, count)
    config = {
        "model": str(demo_folder("demo-fill")), "seed": 3, "width": 2 * PANEL, "height": PANEL,
        "guidance": tool_spec(kind).guidance, "max_sequence_length": sequence_length(kind),
        "training_loop": {"steps": steps, "batch_size": batch_size},
        "optimizer": {"name": "AdamW", "learning_rate": learning_rate, "weight_decay": 0.0},
        "save": {"output_path": "out", "checkpoint_frequency": 500},
        "instrumentation": {"validation_prompt": images[0]["prompt"], "validation_seed": 0},
        "lora_layers": {"rank": rank, "alpha": rank, **LAYERS},
        "examples": {"path": "edits", "in_context": True, "images": images},
    }
    path = run / f"{kind}_lora.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    return TrainingConfig.from_file(path)


def sequence_length(kind: str) -> int:
    """The T5 length the tool resolves on demo-fill when a request sets none (IC-Edit: its template's tokens
    included; In-Context: room for both panels' captions)."""
    folder = demo_folder("demo-fill")
    return default_sequence_length(TextEncoders.tokenizers_of(folder), kind)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="folder for the pictures, the config and the training output")
    parser.add_argument("--kind", choices=tuple(EDIT_PROMPTS), required=True, help="the tool whose prompts it learns")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--examples", type=int, default=3000, help="training edits (diptych pictures)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1.5e-3)
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args(argv)
    args.run.mkdir(parents=True, exist_ok=True)
    config = write_config(args.run, args.kind, args.steps, args.examples, args.batch_size, args.learning_rate,
                          args.rank)
    outcome = train_lora(config, progress_bar=True)
    print(f"adapter: {outcome.adapter} (mean loss of the last 50 steps {np.mean(outcome.losses[-50:]):.4f})")


if __name__ == "__main__":
    main()
