"""The models a user can pick: aliases, the shipped demo models, folders in the models directory, repos in
the HF cache.

Listing only looks at folder names, small JSON files and safetensors headers; it never loads weights.
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from safetensors import SafetensorError, safe_open

from mflux_core.downloads import cached_repo_folder  # complete downloads only: a partial one is not a model
from mflux_core.errors import ModelLoadError
from mflux_core.models.vae import FLUX_SIDE, native_side, scale_factor
from mflux_core.weights.component_folder import component_config
from mflux_core.weights.controlnet_files import is_controlnet_file
from mflux_core.weights.gguf_file import is_gguf
from mflux_core.weights.mflux_saved import is_mflux_folder, model_kind as mflux_model_kind
from mflux_core.weights.resolve import ALIASES, DEMO_MODELS, MFLUX_MODEL_NAMES, demo_models_dir, hf_cache_dir
from mflux_core.weights.split_files import split_file_kind
from mflux_core.weights.transformer_shape import single_file_shape

FLUX_PIPELINE_KINDS = {
    "FluxPipeline": "base", "FluxFillPipeline": "fill", "FluxControlPipeline": "depth",
    "FluxKontextPipeline": "kontext", "FluxPriorReduxPipeline": "redux",
}
ALIAS_KINDS = {"schnell": "base", "dev": "base", "krea-dev": "base", "fill": "fill", "depth": "depth",
               "canny-dev": "depth", "kontext": "kontext", "canny": "controlnet", "upscaler": "controlnet",
               "redux": "redux", "depth-estimator": "depth-estimator"}


BUILT_IN = "built-in"  # where a demo model is (ModelEntry.where)
FLUX_VAE_BLOCKS = (128, 256, 512, 512)  # FLUX.1's VAE: 8x, a token 16 px a side
FLUX_TOKEN_SIDE = 16


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what to put in GenerationRequest.model
    kind: str  # base, fill, depth, kontext, controlnet, redux, depth-estimator, single-file, unreadable
    where: str  # "alias", "built-in" (a demo model), "models folder" or "HF cache"
    available: bool  # files are on disk (no download needed)
    native_side: int = FLUX_SIDE  # the side a text-to-image request gets by default (64 for the demo models)
    token_side: int = FLUX_TOKEN_SIDE  # px along a side of one latent token: sizes it makes are whole tokens

    @property
    def label(self) -> str:
        return f"{self.name}" + ("" if self.available else " (not downloaded)")


def folder_kind(folder: Path) -> str | None:
    """What a folder holds, from its model_index.json or config.json; None if not a model we know."""
    index = folder / "model_index.json"
    if index.is_file():
        try:
            class_name = json.loads(index.read_text()).get("_class_name", "")
        except (OSError, ValueError, AttributeError):
            return None
        return FLUX_PIPELINE_KINDS.get(class_name, "base" if (folder / "transformer").is_dir() else None)
    if is_mflux_folder(folder):  # no model_index.json
        try:
            return mflux_model_kind(folder)
        except ModelLoadError:
            return "base"  # loading it says what is wrong
    config = folder / "config.json"
    if config.is_file():
        try:
            text = config.read_text()
        except OSError:
            return None
        if "FluxControlNetModel" in text:
            return "controlnet"
        if "DepthAnything" in text:
            return "depth-estimator"
    if (folder / "transformer").is_dir():
        return "base"
    return None


def is_single_file_checkpoint(path: Path) -> bool:
    """A file in the models folder that holds a model by itself: a .safetensors or a .gguf file."""
    return path.is_file() and (path.suffix == ".safetensors" or is_gguf(path))


UNREADABLE = "unreadable"  # a file no tool is offered (it would be every tool's default): incomplete, not safetensors


def file_kind(path: Path) -> str:
    """_file_kind of the file as it is now: its header is read once, not at every listing of the models."""
    try:
        stat = Path(path).stat()
    except OSError:
        return UNREADABLE
    return _file_kind(Path(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=256)
def _file_kind(path: Path, mtime_ns: int, size: int) -> str:
    """What a .safetensors file in the models folder holds, from its header: a ControlNet
    (weights/controlnet_files.py), a VAE or text encoder (ComfyUI's ae, clip_l, t5xxl: weights/split_files.py),
    a Fill or a Depth / Canny transformer (BFL's flux1-fill-dev.safetensors, ...: its input channels), a Kontext one
    (its shape is a base model's, so its name says it: flux1-kontext-dev.safetensors), else a base single-file
    transformer; UNREADABLE when its header cannot be read (a download still under way, a truncated copy)."""
    split = split_file_kind(path)
    if split is not None:
        return "vae" if split == "vae" else "text-encoder"
    if not is_gguf(path):
        try:
            with safe_open(path, framework="numpy") as weights:
                if is_controlnet_file(weights.keys()):
                    return "controlnet"
        except (OSError, SafetensorError):
            return UNREADABLE
    shape = single_file_shape(path)
    if shape is None or shape.kind == "base":
        return "kontext" if "kontext" in path.name.lower() else "single-file"
    return shape.kind


def folder_sides(folder: Path) -> tuple[int, int]:
    """(the native image side, the token side) of a model folder, from its VAE's config (FLUX.1's if none)."""
    try:
        config = component_config(folder / "vae")
        return native_side(config), 2 * scale_factor(config.get("block_out_channels") or FLUX_VAE_BLOCKS)
    except (ModelLoadError, AttributeError):
        return FLUX_SIDE, FLUX_TOKEN_SIDE


def cached_repos() -> dict[str, Path]:
    """repo id -> snapshot folder (the one refs/main names, else the newest), for every model repo in
    the Hugging Face cache."""
    root = hf_cache_dir()
    repos = {}
    if not root.is_dir():
        return repos
    for repo_dir in sorted(root.glob("models--*")):
        snapshot = main_snapshot(repo_dir)
        if snapshot is not None:
            repos[repo_dir.name[len("models--"):].replace("--", "/")] = snapshot
    return repos


def cached_snapshot(repo_id: str) -> Path | None:
    """The snapshot folder of one repo in the Hugging Face cache, or None."""
    repo_dir = hf_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    return main_snapshot(repo_dir) if repo_dir.is_dir() else None


def on_disk(name: str, models_dir: Path | None = None) -> bool:
    """Whether the model `name` (an alias, demo model, repo id or models-folder name) needs no download."""
    if models_dir is not None and "/" not in name and (Path(models_dir) / name).exists():
        return True
    if name in DEMO_MODELS:
        return (demo_models_dir() / name).is_dir()
    repo = ALIASES.get(MFLUX_MODEL_NAMES.get(name, name), name)
    snapshot = cached_snapshot(repo)
    return snapshot is not None and folder_kind(snapshot) is not None and cached_repo_folder(repo) is not None


def main_snapshot(repo_dir: Path) -> Path | None:
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        commit = ""
    if commit and (repo_dir / "snapshots" / commit).is_dir():
        return repo_dir / "snapshots" / commit
    snapshots = sorted((p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return snapshots[-1] if snapshots else None


def list_models(models_dir: Path | None) -> list[ModelEntry]:
    entries = []
    cached = cached_repos()
    for alias, repo in ALIASES.items():
        available = repo in cached and folder_kind(cached[repo]) is not None and cached_repo_folder(repo) is not None
        sides = folder_sides(cached[repo]) if available else (FLUX_SIDE, FLUX_TOKEN_SIDE)
        entries.append(ModelEntry(alias, ALIAS_KINDS[alias], "alias", available, *sides))
    for name in DEMO_MODELS:  # a missing demo folder is left out: there is nothing to download
        if kind := folder_kind(demo_models_dir() / name):
            entries.append(ModelEntry(name, kind, BUILT_IN, True, *folder_sides(demo_models_dir() / name)))
    if models_dir is not None and Path(models_dir).is_dir():
        for path in sorted(Path(models_dir).iterdir()):
            if is_single_file_checkpoint(path):
                entries.append(ModelEntry(path.name, file_kind(path), "models folder", True))
            elif path.is_dir() and (kind := folder_kind(path)):
                entries.append(ModelEntry(path.name, kind, "models folder", True, *folder_sides(path)))
    known = set(ALIASES.values())
    for repo, snapshot in sorted(cached.items()):
        if repo not in known and (kind := folder_kind(snapshot)):
            entries.append(ModelEntry(repo, kind, "HF cache", True, *folder_sides(snapshot)))
    return entries
