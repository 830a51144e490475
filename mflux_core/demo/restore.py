"""Start a training run from the shipped demo family: `python -m mflux_core.demo.restore RUN [demo_models]`.

Writes into RUN the checkpoints that later stages read, taken from the shipped float16 folders: the VAE
as the sharpen stage (trained_vae takes the latest VAE stage), CLIP and T5 as the encoder stage left them,
the shipped (guidance-distilled) transformer as the guidance stage (and as guidance-sizes, which made it, for the
ControlNets' sizes stages to train beside; without its sizes.json that stage still counts as not finished), Fill,
Depth and Kontext as their stages, the ControlNets as their stages beside the shipped base; plus the tokenizers.
A stage that trains beside the shipped base (the upscaler ControlNet) or tunes the shipped members (the sizes
stages, size_stages.py; the token-reading round, token_reading.py) then runs without retraining the family. The
undistilled base is not shipped, so the encoder stage's checkpoint holds the text encoders only. The restored
checkpoints carry no training state: the 64 px stages that wrote them count as not run.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core.demo.export import CONTROLNET_FOLDERS, DEMO_FOLDERS
from mflux_core.demo.size_stages import BASE_STAGE
from mflux_core.demo.text_encoders import ENCODER_STAGE, shared_folder
from mflux_core.models.clip import load_clip_text_model
from mflux_core.models.controlnet import load_controlnet
from mflux_core.models.t5 import load_t5_encoder
from mflux_core.models.transformer import load_transformer
from mflux_core.models.vae import load_vae
from mflux_core.training.loop import MODEL_FILE

SHIPPED_BASE = "demo"


def _arrays(module: nn.Module, prefix: str = "") -> dict[str, mx.array]:
    return {prefix + name: value.astype(mx.float32) for name, value in tree_flatten(module.parameters())}


def _save(run: Path, stage: str, arrays: dict[str, mx.array]) -> None:
    (run / stage).mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(run / stage / MODEL_FILE), arrays)


def restore_run(run: Path, models: Path) -> None:
    run, folder = Path(run), Path(models) / SHIPPED_BASE
    shared = shared_folder(run)
    for name in ("tokenizer", "tokenizer_2"):
        if (shared / name).exists():
            shutil.rmtree(shared / name)
        shutil.copytree(folder / name, shared / name)
    vocab = {key: json.loads((folder / name / "config.json").read_text())["vocab_size"]
             for key, name in (("clip", "text_encoder"), ("t5", "text_encoder_2"))}
    (shared / "vocab_sizes.json").write_text(json.dumps(vocab))
    _save(run, "sharpen", _arrays(load_vae(folder / "vae")))
    _save(run, ENCODER_STAGE, {**_arrays(load_clip_text_model(folder / "text_encoder"), "clip."),
                               **_arrays(load_t5_encoder(folder / "text_encoder_2"), "t5.")})
    base = _arrays(load_transformer(folder / "transformer"))
    _save(run, "guidance", base)
    _save(run, BASE_STAGE, base)  # what the sizes stages made it: the ControlNets' sizes stages train beside it
    for stage, (_, member) in DEMO_FOLDERS.items():
        if stage != "guidance":
            _save(run, stage, _arrays(load_transformer(Path(models) / member / "transformer")))
    for stage, member in CONTROLNET_FOLDERS.items():  # as controlnet_stage.py saves them: beside the shipped base
        controlnet = _arrays(load_controlnet(Path(models) / member), "controlnet.")
        _save(run, stage, {**{f"transformer.{name}": value for name, value in base.items()}, **controlnet})


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("models", type=Path, nargs="?", default=Path("demo_models"))
    args = parser.parse_args(argv)
    restore_run(args.run, args.models)


if __name__ == "__main__":
    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core is used)

    main()
