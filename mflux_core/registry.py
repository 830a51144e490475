"""The models a user can pick: aliases, the shipped demo models, folders in the models directory, repos in
the HF cache.

Listing only looks at folder names, small JSON files and safetensors headers; it never loads weights.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from mflux_core.downloads import cached_repo_folder  # complete downloads only: a partial one is not a model
from mflux_core.errors import ModelLoadError
from mflux_core.models.vae import FLUX_SIDE, native_side
from mflux_core.weights.component_folder import component_config
from mflux_core.weights.controlnet_files import is_controlnet_file
from mflux_core.weights.gguf_file import is_gguf
from mflux_core.weights.mflux_saved import is_mflux_folder, model_kind as mflux_model_kind
from mflux_core.weights.resolve import ALIASES, DEMO_MODELS, demo_models_dir, hf_cache_dir
from mflux_core.weights.split_files import split_file_kind

FLUX_PIPELINE_KINDS = {
    "FluxPipeline": "base", "FluxFillPipeline": "fill", "FluxControlPipeline": "depth",
    "FluxKontextPipeline": "kontext", "FluxPriorReduxPipeline": "redux",
}
ALIAS_KINDS = {"schnell": "base", "dev": "base", "krea-dev": "base", "fill": "fill", "depth": "depth",
               "canny-dev": "depth", "kontext": "kontext", "canny": "controlnet", "upscaler": "controlnet",
               "redux": "redux", "depth-estimator": "depth-estimator"}


BUILT_IN = "built-in"  # where a demo model is (ModelEntry.where)


@dataclass(frozen=True)
class ModelEntry:
    name: str  # what to put in GenerationRequest.model
    kind: str  # base, fill, depth, kontext, controlnet, redux, depth-estimator, single-file
    where: str  # "alias", "built-in" (a demo model), "models folder" or "HF cache"
    available: bool  # files are on disk (no download needed)
    native_side: int = FLUX_SIDE  # the side a text-to-image request gets by default (64 for the demo models)

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


def file_kind(path: Path) -> str:
    """What a .safetensors file in the models folder holds, from its header's tensor names: a ControlNet
    (weights/controlnet_files.py), a VAE or text encoder (ComfyUI's ae, clip_l, t5xxl: weights/split_files.py),
    else a single-file transformer (as a .gguf file always is)."""
    split = split_file_kind(path)
    if split is not None:
        return "vae" if split == "vae" else "text-encoder"
    if is_gguf(path):
        return "single-file"
    try:
        with safe_open(path, framework="numpy") as weights:
            keys = weights.keys()
    except (OSError, SafetensorError):
        return "single-file"  # loading it says what is wrong
    return "controlnet" if is_controlnet_file(keys) else "single-file"


def folder_native_side(folder: Path) -> int:
    """The native image side of a model folder, from its VAE's config (FLUX.1's 1024 if none)."""
    try:
        return native_side(component_config(folder / "vae"))
    except (ModelLoadError, AttributeError):
        return FLUX_SIDE


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
    repo = ALIASES.get(name, name)
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
        side = folder_native_side(cached[repo]) if available else FLUX_SIDE
        entries.append(ModelEntry(alias, ALIAS_KINDS[alias], "alias", available, side))
    for name in DEMO_MODELS:  # a missing demo folder is left out: there is nothing to download
        if kind := folder_kind(demo_models_dir() / name):
            entries.append(ModelEntry(name, kind, BUILT_IN, True, folder_native_side(demo_models_dir() / name)))
    if models_dir is not None and Path(models_dir).is_dir():
        for path in sorted(Path(models_dir).iterdir()):
            if is_single_file_checkpoint(path):
                entries.append(ModelEntry(path.name, file_kind(path), "models folder", True))
            elif path.is_dir() and (kind := folder_kind(path)):
                entries.append(ModelEntry(path.name, kind, "models folder", True, folder_native_side(path)))
    known = set(ALIASES.values())
    for repo, snapshot in sorted(cached.items()):
        if repo not in known and (kind := folder_kind(snapshot)):
            entries.append(ModelEntry(repo, kind, "HF cache", True, folder_native_side(snapshot)))
    return entries
