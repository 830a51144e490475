"""Write a model folder in the diffusers layout, optionally quantized and with LoRAs baked in.

The transformer is written from the loaded (LoRA-fused, quantized) module, and so are the text encoders a LoRA
changes and T5 when it is quantized or cast to another dtype; everything else (VAE, CLIP, T5 as it is,
tokenizers, scheduler, model_index.json) is copied, the text encoders never read then. A quantized component
records its settings in config.json and in the safetensors header, so `--path OUT` loads it back as saved.
Unquantized output is plain diffusers: diffusers itself can load it.
"""

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mflux_core import loader
from mflux_core.errors import ModelLoadError
from mflux_core.lora.apply import LoraReport, attach, check_lora, fuse_loras, lora_layers
from mflux_core.lora.formats import TRANSFORMER, component_of, load_lora_file
from mflux_core.lora.layers import input_channels, linear_shapes
from mflux_core.lora.library import resolve_lora_path
from mflux_core.models.clip import load_clip_text_model
from mflux_core.models.t5 import load_t5_encoder
from mflux_core.weights.quantize import (
    CONFIG_KEY, quantization_config, quantize_lazily, quantized_bits, quantized_group_size,
)
from mflux_core.weights.component_folder import component_config, component_weights
from mflux_core.weights.gguf_file import check_not_gguf
from mflux_core.weights.mflux_saved import is_mflux_folder
from mflux_core.weights.resolve import ModelSource, resident_bytes_of, stored_float_dtypes
from mflux_core.weights.safetensors_io import read_json, weight_files

# copied as they are unless the save changes them (a LoRA's text encoders; T5 quantized or cast to another dtype)
COPIED_COMPONENTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
DIFFUSERS_FILE = "diffusion_pytorch_model.safetensors"  # diffusers models: the transformer, the VAE
ENCODER_FILE = "model.safetensors"
ENCODER_LABELS = {"text_encoder": "CLIP", "text_encoder_2": "T5"}
CLIP_PREFIX = "text_model."  # before every name in the published CLIP files (models/clip.py reads both)
FLUX_PIPELINE_INDEX = {
    "_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
}
SAFETENSORS_NAMES = {mx.float32: "F32", mx.bfloat16: "BF16", mx.float16: "F16"}


@dataclass(frozen=True)
class SavedModel:
    folder: Path
    bits: int | None
    transformer_bytes: int  # parameter bytes as written
    t5_bytes: int
    loras: tuple[LoraReport, ...]


def write_component(module: nn.Module, config: dict, folder: Path, filename: str, prefix: str = "") -> int:
    """config.json plus the module's parameters under their checkpoint names (`prefix` before each), with the
    quantization (if any) recorded in both; returns the parameter bytes written."""
    bits = quantized_bits(module)
    folder.mkdir(parents=True)
    config = {k: v for k, v in config.items() if k != CONFIG_KEY}
    metadata = {"format": "pt"}
    if bits is not None:
        group_size = quantized_group_size(module)
        config[CONFIG_KEY] = quantization_config(bits, group_size)
        metadata = {"format": "mlx", "quantization_bits": str(bits), "quantization_group_size": str(group_size)}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    arrays = {prefix + name: array for name, array in tree_flatten(module.parameters())}
    mx.save_safetensors(str(folder / filename), arrays, metadata=metadata)
    return sum(a.nbytes for a in arrays.values())


def bake_loras(transformer: nn.Module, source: ModelSource, dtype: mx.Dtype,
               loras: Sequence[tuple[str, float, float]],
               models_dir: Path | None, bits: int | None = None) -> tuple[list[LoraReport], dict[str, nn.Module]]:
    """Fuse the LoRAs ((name, scale, text-encoder scale) each) into the transformer and the text encoders: one report
    per LoRA, and the text encoders a LoRA changed (by folder name; those read lazily, the others never read). `bits`:
    what a bitsandbytes 4-bit T5's layers become."""
    encoders = {"text_encoder": load_clip_text_model(source.component("text_encoder"), dtype, evaluated=False),
                "text_encoder_2": load_t5_encoder(source.component("text_encoder_2"), dtype, evaluated=False,
                                                  bits=bits)}
    checked = []
    for index, (name, scale, encoder_scale) in enumerate(loras):
        shapes = {component: linear_shapes(root) for component, root in encoders.items()}
        fitting, report = check_lora(transformer, load_lora_file(resolve_lora_path(name, models_dir)), scale, shapes)
        for component, root in (("transformer", transformer), *encoders.items()):
            attach(root, {path.partition(".")[2] if component != TRANSFORMER else path: weights
                          for path, weights in fitting.items() if component_of(path) == component}, f"lora-{index}",
                   scale if component == TRANSFORMER else encoder_scale)
        if input_channels(transformer) != transformer.config.in_channels:
            raise ModelLoadError(f"{name} is a control LoRA (it widens the image input to "
                                 f"{input_channels(transformer)} channels), which saving does not bake in: apply it "
                                 "with --lora-paths on the Depth tool instead.")
        checked.append(report)
    fuse_loras(transformer)
    changed = {component: root for component, root in encoders.items() if lora_layers(root)}
    for root in changed.values():
        fuse_loras(root)
    return checked, changed


def transformer_config(source: ModelSource, transformer) -> dict:
    if source.folder is not None and (source.folder / "transformer" / "config.json").is_file():
        return read_json(source.folder / "transformer" / "config.json")
    config = asdict(transformer.config)  # a BFL single file has no config.json: write diffusers' keys
    config["axes_dims_rope"] = list(config["axes_dims_rope"])
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1, **config}


def t5_copied_as_is(source: ModelSource, dtype: mx.Dtype, bits: int | None) -> bool:
    """Whether a save copies T5's files (no LoRA changing it assumed): not quantized, and stored in `dtype`."""
    stored = stored_float_dtypes(weight_files(source.component("text_encoder_2")))
    return not bits and stored == {SAFETENSORS_NAMES.get(dtype)}


def check_new_folder(out: Path) -> Path:
    """`out` (user's home expanded) when a model can be written there: it does not exist or is an empty folder, and
    its folder takes a new one (tried before the weights are read)."""
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelLoadError(f"{out} already exists and is not an empty folder; choose a new --path.")
    probe = out.with_name(f".{out.name}.probe")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as error:
        raise ModelLoadError(f"Cannot write a model folder at {out} ({error.strerror or error}).") from None
    return out


def model_index(source: ModelSource) -> str:
    """The source's model_index.json; diffusers' FluxPipeline one for a folder mflux saved (it writes none)."""
    for root in (source.folder, source.base_folder):
        if root is not None and (root / "model_index.json").is_file():
            return (root / "model_index.json").read_text()
        if root is not None and is_mflux_folder(root):
            return json.dumps(FLUX_PIPELINE_INDEX, indent=2)
    if source.base_files:  # ComfyUI's separate files
        return json.dumps(FLUX_PIPELINE_INDEX, indent=2)
    raise ModelLoadError("The model has no model_index.json to copy.")


def copy_component(path: Path, name: str, target: Path) -> None:
    """A component's folder as it is (the HF cache's links followed); one file (ComfyUI's ae, clip_l, t5xxl, or that
    part of an all-in-one checkpoint) as the diffusers folder it stands for: config.json and the tensors under the
    published names."""
    if path.is_dir():
        shutil.copytree(path, target)
        return
    target.mkdir()
    (target / "config.json").write_text(json.dumps(component_config(path, name), indent=2))
    filename = DIFFUSERS_FILE if name == "vae" else ENCODER_FILE
    mx.save_safetensors(str(target / filename), component_weights(path, name), {"format": "pt"})


# on_progress(done, total, what) after each tensor computed and each component written; what it raises (Cancelled
# when the user stops) ends the save, and the unfinished folder is removed.
SaveProgress = Callable[[int, int, str], None]


def save_model(
    out: Path,
    source: ModelSource,
    dtype: mx.Dtype = mx.float32,
    bits: int | None = None,
    loras: Sequence[tuple[str, float, float]] = (),
    models_dir: Path | None = None,
    on_progress: SaveProgress | None = None,
    transformer: nn.Module | None = None,
) -> SavedModel:
    """Load `source` (its transformer: `transformer` when given, e.g. a merge's), bake in `loras` ((path or library
    name, scale, text-encoder scale) each; the library includes `models_dir`/loras), quantize to `bits`, write `out`.

    Everything is written into a hidden folder beside `out` that is renamed to `out` at the end, so a stopped or
    failed save leaves no model folder behind (and removes its hidden one)."""
    check_not_gguf(source.transformer_file, "saving a model folder")
    out = check_new_folder(out)
    index = model_index(source)
    on_progress = on_progress or (lambda done, total, what: None)
    if transformer is None:
        on_progress(0, 0, "loading the transformer")
        transformer = loader.load_source_transformer(source, dtype, bits=bits)
    reports, encoders = bake_loras(transformer, source, dtype, loras, models_dir, bits)
    if "text_encoder_2" not in encoders and not t5_copied_as_is(source, dtype, bits):
        encoders["text_encoder_2"] = load_t5_encoder(source.component("text_encoder_2"), dtype, evaluated=False,
                                                     bits=bits)
    for module in (transformer, encoders.get("text_encoder_2")):
        quantize_lazily(module, bits)
    modules = {"transformer": transformer, **encoders}
    tensors = [array for module in modules.values() for _, array in tree_flatten(module.parameters())]
    copied = [name for name in COPIED_COMPONENTS if name not in encoders]
    total = len(tensors) + len(modules) + len(copied) + 1  # + the written components, the copied ones, model_index
    for done, array in enumerate(tensors, start=1):  # one at a time: progress and a Stop between tensors
        mx.eval(array)
        on_progress(done, total, "tensors quantized" if bits else "tensors loaded")
    written = iter(range(len(tensors) + 1, total + 1))

    def wrote(what: str) -> None:
        on_progress(next(written), total, what)

    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)  # the models folder may not exist yet
    try:
        transformer_bytes = write_component(
            transformer, transformer_config(source, transformer), partial / "transformer", DIFFUSERS_FILE)
        wrote("transformer written")
        encoder_bytes = {}
        for name, module in encoders.items():
            encoder_bytes[name] = write_component(module, component_config(source.component(name), name),
                                                  partial / name, ENCODER_FILE,
                                                  prefix=CLIP_PREFIX if name == "text_encoder" else "")
            wrote(f"{ENCODER_LABELS[name]} written")
        for name in copied:
            if name == "scheduler":  # written: a folder mflux saved has none
                (partial / name).mkdir()
                (partial / name / "scheduler_config.json").write_text(
                    json.dumps(loader.load_scheduler_config(source), indent=2))
            else:
                copy_component(source.component(name), name, partial / name)
            wrote(f"{name} copied")
        (partial / "model_index.json").write_text(index)
        wrote("model_index.json copied")
        if out.exists():
            out.rmdir()
        partial.rename(out)
    except BaseException:  # a Stop or a failure: no half-written model stays
        shutil.rmtree(partial, ignore_errors=True)
        raise
    t5_bytes = encoder_bytes.get("text_encoder_2") or resident_bytes_of(weight_files(out / "text_encoder_2"),
                                                                        dtype.size)
    return SavedModel(out, quantized_bits(transformer), transformer_bytes, t5_bytes, tuple(reports))
