"""Where a model's files are: a local folder, a single BFL file, or a repo in the Hugging Face cache."""

import math
import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from mflux_core.downloads import DownloadCallback, fetch_repo, hf_cache_dir, is_offline  # noqa: F401 (re-exported)
from mflux_core.errors import ModelLoadError, WordedTwice
from mflux_core.weights import bnb_layers
from mflux_core.weights.gguf_file import gguf_resident_bytes, gguf_tensor_names, is_gguf
from mflux_core.weights.split_base import bundled_base, bundles_its_base, has_split_files, split_base
from mflux_core.weights.split_files import part_names

# The published repos behind the names users type (mflux's aliases plus the tool models).
ALIASES = {
    "schnell": "black-forest-labs/FLUX.1-schnell",
    "dev": "black-forest-labs/FLUX.1-dev",
    "krea-dev": "black-forest-labs/FLUX.1-Krea-dev",
    "fill": "black-forest-labs/FLUX.1-Fill-dev",
    "depth": "black-forest-labs/FLUX.1-Depth-dev",
    "canny-dev": "black-forest-labs/FLUX.1-Canny-dev",
    "kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "canny": "InstantX/FLUX.1-dev-Controlnet-Canny",
    "upscaler": "jasperai/Flux.1-dev-Controlnet-Upscaler",
    "redux": "black-forest-labs/FLUX.1-Redux-dev",
    "depth-estimator": "depth-anything/Depth-Anything-V2-Small-hf",
}
# mflux's model names (its --model / --base-model choices) -> ours: a tool's side model (Redux's encoder, a ControlNet)
# is a flag of its own here, so the names of mflux's tool configs are their base model
MFLUX_MODEL_NAMES = {
    "dev-fill": "fill", "dev-kontext": "kontext", "dev-depth": "depth", "dev-redux": "dev", "dev-krea": "krea-dev",
    "dev-controlnet-canny": "dev", "schnell-controlnet-canny": "schnell", "dev-controlnet-upscaler": "dev",
    "dev-fill-catvton": "fill",
}

# The demo family: tiny FLUX.1 models trained by mflux_core.demo and shipped in the repository's
# demo_models/ folder (alias = folder name). They resolve to those folders and never download.
DEMO_MODELS = ("demo", "demo-fill", "demo-depth", "demo-kontext", "demo-canny", "demo-depth-estimator",
               "demo-upscaler", "demo-redux")
DEMO_MODELS_ENV = "MFLUX_STUDIO_DEMO_MODELS"  # another folder holding the demo folders (tests, wheel installs)


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a diffusers-layout folder, or a single transformer file plus a base folder or base files."""

    folder: Path | None
    transformer_file: Path | None = None
    base_folder: Path | None = None  # supplies VAE, text encoders and scheduler for a single file
    base_files: tuple[tuple[str, Path], ...] = ()  # or (component, file or folder): weights/split_base.py

    def component(self, name: str) -> Path:
        """Folder (or file) of a component, falling back to the base model for what a derivative lacks."""
        for component, path in self.base_files:
            if component == name:
                return path
        for root in (self.folder, self.base_folder):
            if root is not None and (root / name).is_dir():
                return root / name
        raise ModelLoadError(f"The model has no {name}/ folder (looked in {self.folder or self.base_folder}).")


def demo_models_dir() -> Path:
    """The folder holding the demo models: $MFLUX_STUDIO_DEMO_MODELS, else demo_models/ at the repository
    root, beside the package (launch.py installs the checkout editable, so the package is read in place).
    A wheel does not carry the demo folders: point the variable at a copy of demo_models/."""
    override = os.environ.get(DEMO_MODELS_ENV)
    return Path(override).expanduser() if override else Path(__file__).resolve().parents[2] / "demo_models"


def demo_folder(name: str) -> Path:
    folder = demo_models_dir() / name
    if not folder.is_dir():
        raise ModelLoadError(
            f"The demo model {name} is missing: its folder {folder} does not exist (demo models are never "
            f"downloaded; restore the folder with `git checkout demo_models`, or set {DEMO_MODELS_ENV} to a "
            "folder that holds it)."
        )
    return folder


def is_demo_folder(folder: Path | None) -> bool:
    """Whether a model folder is one of the demo models (found through their folder, links followed)."""
    return folder is not None and Path(folder).resolve().parent == demo_models_dir().resolve()


def side_model_for(base_folder: Path | None, name: str) -> str:
    """A side model's default (a ControlNet or Redux alias) for a base: its demo twin, demo-<name>, on a demo base,
    since side weights drive only the transformer family they were made for."""
    return f"demo-{name}" if is_demo_folder(base_folder) else name


def repo_folder(repo_id: str, on_download: DownloadCallback | None = None) -> Path:
    """The snapshot folder of a repo: from the HF cache, downloading it when online (mflux_core.downloads)."""
    return fetch_repo(repo_id, on_download)


def looks_like_path(name: str) -> bool:
    """A name no alias or repo id can have ("owner/name" has one slash and starts with neither)."""
    return name.startswith((".", "~", "/")) or name.count("/") > 1 or "\\" in name


def unknown_model(name: str, models_dir: Path | None) -> WordedTwice:
    """The page has no --path: there the way in is the models folder or the Models tab's download."""
    aliases = ", ".join([*ALIASES, *DEMO_MODELS])
    where = f" or a folder in {models_dir}" if models_dir is not None else ""
    folder = f" ({models_dir})" if models_dir is not None else ""
    return WordedTwice(
        f"Unknown model {name!r}: not an alias ({aliases}), a repo id (owner/name){where}: put its folder into "
        f"the models folder{folder} and pick it by its folder name, or download it from the Models tab.",
        f"Unknown model {name!r}: not an alias ({aliases}), a repo id (owner/name){where}, "
        "or an existing folder or file.")


def resolve_name(name: str, models_dir: Path | None = None, on_download: DownloadCallback | None = None) -> Path:
    """A local path, a name in the models folder, an alias or a repo id -> a folder or file on disk."""
    candidate = Path(name).expanduser()
    if candidate.exists():
        return candidate
    if models_dir is not None and "/" not in name and (Path(models_dir) / name).exists():
        return Path(models_dir) / name
    if name in DEMO_MODELS:
        return demo_folder(name)
    name = MFLUX_MODEL_NAMES.get(name, name)
    if looks_like_path(name):
        raise ModelLoadError(f"The model folder or file {name} does not exist (was it moved or deleted?).")
    repo_id = ALIASES.get(name, name)
    if repo_id.count("/") != 1:
        raise unknown_model(name, models_dir)
    return repo_folder(repo_id, on_download)


def check_flux_folder(folder: Path) -> None:
    if not (folder / "transformer").is_dir():
        raise ModelLoadError(
            f"{folder} is not a FLUX.1 model folder in the diffusers layout (no transformer/ folder; "
            "expected transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)."
        )


def resolve_model(
    model: str | None = None, path: str | None = None, base_model: str | None = None, models_dir: Path | None = None,
    on_download: DownloadCallback | None = None,
) -> ModelSource:
    """Resolve mflux's `--model` / `--path` / `--base-model` triple into files on disk."""
    target = Path(path).expanduser() if path else None
    if target is None:
        if not model:
            raise ModelLoadError("No model given: pass --model (an alias or repo id) or --path (a local folder).")
        target = resolve_name(model, models_dir, on_download)
    if not target.exists():
        raise ModelLoadError(f"The model path {target} does not exist.")
    if target.is_dir() and holds_every_part(target):
        base_model = None  # as mflux reads --base-model then: a label of what the folder already holds, no download
    base = resolve_name(base_model, models_dir, on_download) if base_model else None
    if target.is_file():
        if target.suffix != ".safetensors" and not is_gguf(target):
            raise ModelLoadError(f"{target} is not a model folder, a .safetensors checkpoint or a .gguf file.")
        check_weights_file(target)
        if base is None and bundles_its_base(target):  # an all-in-one checkpoint
            return ModelSource(folder=None, transformer_file=target, base_files=bundled_base(target, models_dir))
        if base is None:
            raise ModelLoadError(
                f"{target.name} is a single transformer file: pass --base-model dev or schnell to supply "
                "the VAE, text encoders and scheduler (or a folder holding ComfyUI's ae, clip_l and t5xxl files)."
            )
        if not (base / "transformer").is_dir() and has_split_files(base):
            return ModelSource(folder=None, transformer_file=target, base_files=split_base(base, models_dir))
        check_flux_folder(base)
        return ModelSource(folder=None, transformer_file=target, base_folder=base)
    check_flux_folder(target)
    return ModelSource(folder=target, base_folder=base)


def holds_every_part(folder: Path) -> bool:
    """Whether a model folder has its own VAE, text encoders, tokenizers and scheduler (mflux saves none: its
    folder's kind tells), so that a base model supplies nothing."""
    from mflux_core.weights.mflux_saved import is_mflux_folder

    parts = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    return all((folder / part).is_dir() for part in parts) and (
        (folder / "scheduler").is_dir() or is_mflux_folder(folder))


SAFETENSORS_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "U32": 4, "I16": 2,
                           "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
FP8 = "F8_E4M3"
# matrices that are embeddings, not linear layers: an FP8 one is read into the compute dtype (weights/float8.py)
EMBEDDING_SUFFIXES = ("shared.weight", "embed_tokens.weight", "token_embedding.weight", "position_embedding.weight",
                      "relative_attention_bias.weight")


def _float_bytes(name: str, dtype: str, shape: list[int], float_bytes: float) -> float:
    """Bytes per value of a floating tensor once loaded: a linear layer's FP8 matrix stays FP8 (weights/float8.py)."""
    held_fp8 = dtype == FP8 and len(shape) == 2 and name.endswith(".weight") and not name.endswith(EMBEDDING_SUFFIXES)
    return min(float_bytes, 1) if held_fp8 else float_bytes


def resident_bytes_of(files: list[Path], float_bytes: float, part: str | None = None) -> int:
    """Memory the tensors of safetensors files take once loaded with floats cast to `float_bytes` each (under 2: a
    quantization's width, which a bitsandbytes layer is requantized to as well; a linear layer's FP8 matrix stays at
    one: weights/float8.py), read from the headers alone;
    of an all-in-one checkpoint, its `part`'s ("transformer", "vae", ...). A file shorter than its header says (an
    interrupted download or copy) or without a readable header is a ModelLoadError naming it, found before anything
    loads."""
    total = 0
    for path in files:
        if is_gguf(path):
            total += gguf_resident_bytes(path, float_bytes)
            continue
        specs = _tensor_specs(Path(path))
        specs = {name: specs[name] for name in part_names(specs, part)}
        quantized = _bnb_layer_shapes(Path(path), specs)
        if quantized:
            bits = round(float_bytes * 8) if float_bytes < 2 else None
            total += bnb_layers.resident_bytes(quantized, bits, float_bytes)
        for name, (dtype, shape) in specs.items():
            if name in quantized or bnb_layers.is_bnb_name(name):
                continue
            own = SAFETENSORS_DTYPE_BYTES.get(dtype, 4)
            total += math.prod(shape) * (_float_bytes(name, dtype, shape, float_bytes) if dtype.startswith(("F", "BF"))
                                         else own)
    return int(total)


def _bnb_layer_shapes(path: Path, specs: dict) -> dict:
    """bnb_layers.layer_shapes of a file's header, its quantization states read with the file opened once."""
    shapes = {name: shape for name, (_, shape) in specs.items()}
    if not bnb_layers.has_bnb_layers(shapes):
        return {}
    with safe_open(path, framework="numpy") as weights:
        return bnb_layers.layer_shapes(shapes, lambda state: weights.get_tensor(state).tobytes())


def single_file_names(path: Path) -> set[str]:
    """The tensor names of a single-file checkpoint (.safetensors or .gguf), from its header."""
    if is_gguf(path):
        return gguf_tensor_names(path)
    try:
        with safe_open(path, framework="numpy") as weights:
            return set(weights.keys())
    except (OSError, SafetensorError):
        return set()  # loading it says what is wrong


GUIDANCE_KEY = "guidance_in.in_layer.weight"  # a BFL transformer with a guidance embedding: FLUX.1-dev's kind


def single_file_has_guidance(path: Path) -> bool:
    """Whether a single transformer file has a guidance embedding (FLUX.1-dev's kind), from its header."""
    return any(name.endswith(GUIDANCE_KEY) for name in single_file_names(path))


def stores_fp8(files: list[Path], part: str | None = None) -> bool:
    """Whether `files` (of an all-in-one checkpoint, its `part`) hold FP8 (E4M3) tensors, from their headers."""
    return any(specs[name][0] == FP8 for path in files if not is_gguf(path)
               for specs in [_tensor_specs(Path(path))] for name in part_names(specs, part))


def stored_float_dtypes(files: list[Path]) -> set[str]:
    """The safetensors dtype names ("BF16", "F32", ...) of the floating tensors in `files`, from their headers."""
    return {dtype for path in files for dtype, _ in _tensor_specs(Path(path)).values() if dtype.startswith(("F", "BF"))}


def check_weights_file(path: Path) -> None:
    """A ModelLoadError naming the problem when a .safetensors file cannot be read or is incomplete (its header
    alone is read), before a sentence about what else it needs."""
    if Path(path).suffix == ".safetensors":
        _tensor_specs(Path(path))


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """name -> shape of each tensor in a safetensors file, from its header."""
    return {name: shape for name, (_, shape) in _tensor_specs(path).items()}


def _tensor_specs(path: Path) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) of each tensor in a safetensors file, from its header; the data is not read."""
    try:
        with safe_open(path, framework="numpy") as weights:
            slices = {name: weights.get_slice(name) for name in weights.keys()}
            return {name: (tensor.get_dtype(), tensor.get_shape()) for name, tensor in slices.items()}
    except OSError as error:
        raise ModelLoadError(f"Cannot read the weights file {path} ({error}).") from None
    except SafetensorError as error:
        if "incomplete" not in str(error).lower():  # safetensors says so when the data ends before the header's
            raise ModelLoadError(f"{path} is not a safetensors file (no readable header).") from None
        raise ModelLoadError(
            f"The weights file {path} is incomplete: {path.stat().st_size:,} bytes on disk, fewer than its header "
            "lists (an interrupted download or copy?)."
        ) from None
