"""Write MLX modules as FLUX.1 model folders in the real diffusers layout.

Each component is written under the checkpoint names diffusers / transformers use (the inverse of
each model's `sanitize`): VAE convolutions back to OIHW, CLIP under `text_model.`, T5 with its
config's tie_word_embeddings false. diffusers' pipelines and our loader both read the result.
"""

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core.demo.family import NATIVE_SIZE, PIPELINE_CLASSES, SCHEDULER_CONFIG, SHIPPED_DTYPE
from mflux_core.native_sizes import NATIVE_SIZES_KEY

SHARED_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def checkpoint_arrays(module: nn.Module, dtype: mx.Dtype) -> dict[str, mx.array]:
    return {name: value.astype(dtype) for name, value in tree_flatten(module.parameters())}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_arrays(path: Path, arrays: dict[str, mx.array]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(path), dict(sorted(arrays.items())), metadata={"format": "pt"})


def write_transformer(folder: Path, transformer: nn.Module, config: dict, dtype: mx.Dtype = SHIPPED_DTYPE) -> None:
    write_json(folder / "config.json", config)
    save_arrays(folder / "diffusion_pytorch_model.safetensors", checkpoint_arrays(transformer, dtype))


def write_controlnet(folder: Path, controlnet: nn.Module, config: dict, dtype: mx.Dtype = SHIPPED_DTYPE) -> Path:
    """A ControlNet folder as InstantX publishes one: config.json + one safetensors file."""
    write_transformer(folder, controlnet, config, dtype)
    return folder


def write_vae(folder: Path, vae: nn.Module, config: dict, dtype: mx.Dtype = SHIPPED_DTYPE) -> None:
    """Conv weights OHWI -> OIHW (diffusers' layout); everything else as is."""
    arrays = {name: value.transpose(0, 3, 1, 2) if value.ndim == 4 else value
              for name, value in checkpoint_arrays(vae, dtype).items()}
    write_json(folder / "config.json", config)
    save_arrays(folder / "diffusion_pytorch_model.safetensors", arrays)


def write_clip(folder: Path, clip: nn.Module, config: dict, dtype: mx.Dtype = SHIPPED_DTYPE) -> None:
    arrays = {f"text_model.{name}": value for name, value in checkpoint_arrays(clip, dtype).items()}
    write_json(folder / "config.json", config)
    save_arrays(folder / "model.safetensors", arrays)


def write_t5(folder: Path, t5: nn.Module, config: dict, dtype: mx.Dtype = SHIPPED_DTYPE) -> None:
    write_json(folder / "config.json", config)
    save_arrays(folder / "model.safetensors", checkpoint_arrays(t5, dtype))


def write_model_index(folder: Path, tool: str, sizes: tuple[tuple[int, int], ...] = (NATIVE_SIZE,)) -> None:
    write_json(folder / "model_index.json", {
        "_class_name": PIPELINE_CLASSES[tool], "_diffusers_version": SCHEDULER_CONFIG["_diffusers_version"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        NATIVE_SIZES_KEY: [list(size) for size in sizes],
    })


def write_scheduler(folder: Path) -> None:
    write_json(folder / "scheduler_config.json", SCHEDULER_CONFIG)


def write_model_folder(out: Path, tool: str, transformer: nn.Module, transformer_config: dict, shared: Path,
                       dtype: mx.Dtype = SHIPPED_DTYPE, sizes: tuple[tuple[int, int], ...] = (NATIVE_SIZE,)) -> Path:
    """A complete FLUX.1 folder: this tool's transformer plus copies of the shared components; `sizes`: the
    sizes it makes."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    write_transformer(out / "transformer", transformer, transformer_config, dtype)
    for name in SHARED_COMPONENTS:
        shutil.copytree(Path(shared) / name, out / name)
    write_model_index(out, tool, sizes)
    return out


DEMO_FOLDERS = {  # checkpoint (training stage) -> (tool, model folder)
    "guidance": ("base", "demo"), "fill": ("fill", "demo-fill"), "depth": ("depth", "demo-depth"),
    "kontext": ("kontext", "demo-kontext"),
}
CONTROLNET_FOLDERS = {"canny": "demo-canny", "upscale": "demo-upscaler"}  # checkpoint (training stage) -> folder


def _latest(run: Path, stage: str) -> tuple[Path | None, tuple[tuple[int, int], ...]]:
    """The checkpoint to ship for a 64 px stage and the sizes it makes: the latest of its later rounds that is done
    (the base's token-reading round, token_reading.py; then its sizes stage, size_stages.py), else its own (None
    when there is none)."""
    from mflux_core.demo.size_stages import SUFFIX, finished_sizes
    from mflux_core.demo.token_reading import STAGE as TOKEN_READING
    from mflux_core.training.loop import MODEL_FILE

    for later in ((TOKEN_READING,) if stage == "guidance" else ()) + (stage + SUFFIX,):
        sizes = finished_sizes(run, later)
        if sizes:
            return run / later / MODEL_FILE, sizes
    return (run / stage / MODEL_FILE if (run / stage / MODEL_FILE).is_file() else None), (NATIVE_SIZE,)


def export_run(run: Path, out: Path, dtype: mx.Dtype = SHIPPED_DTYPE) -> list[Path]:
    """Write every finished stage of a training run (python -m mflux_core.demo.train) as a model folder under `out`."""
    from mflux_core.demo import family
    from mflux_core.demo.recipe import STAGES
    from mflux_core.demo.text_encoders import shared_folder, text_encoders
    from mflux_core.demo.vae_stages import trained_vae, vae_sample

    run, out = Path(run), Path(out)
    shared = run / "export-shared"
    if shared.exists():
        shutil.rmtree(shared)
    vae, vae_config = trained_vae(run, vae_sample(run, STAGES["vae"], workers=1))
    write_vae(shared / "vae", vae, vae_config, dtype)
    clip, t5 = text_encoders(run)
    vocab = json.loads((shared_folder(run) / "vocab_sizes.json").read_text())
    write_clip(shared / "text_encoder", clip, family.clip_config(vocab["clip"]), dtype)
    write_t5(shared / "text_encoder_2", t5, family.t5_config(vocab["t5"]), dtype)
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(shared_folder(run) / name, shared / name)
    write_scheduler(shared / "scheduler")
    written = []
    for stage, (tool, folder) in DEMO_FOLDERS.items():
        checkpoint, sizes = _latest(run, stage)
        if checkpoint is None:
            continue
        config = family.transformer_config(tool)
        transformer = family.build_transformer(config)
        transformer.load_weights(str(checkpoint))
        written.append(write_model_folder(out / folder, tool, transformer, config, shared, dtype, sizes))
    for stage, folder in CONTROLNET_FOLDERS.items():
        checkpoint, _ = _latest(run, stage)
        if checkpoint is not None:  # a ControlledFlux checkpoint: the base it trained beside, and the ControlNet
            controlnet = family.build_controlnet(family.controlnet_config())
            controlnet.load_weights([(name.removeprefix("controlnet."), value)
                                     for name, value in mx.load(str(checkpoint)).items()
                                     if name.startswith("controlnet.")])
            written.append(write_controlnet(out / folder, controlnet, family.controlnet_config(), dtype))
    shutil.rmtree(shared)
    return written


def main(argv=None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Write a demo training run as diffusers-layout model folders.")
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    for folder in export_run(args.run, args.out):
        print(folder)


if __name__ == "__main__":
    import mflux_core  # noqa: F401  (OpenBLAS before mlx.core is used)

    main()
