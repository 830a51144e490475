"""Where a model's files are: a local folder, a single BFL file, or a repo in the Hugging Face cache."""

import os
from dataclasses import dataclass
from pathlib import Path

from mflux_core.errors import ModelLoadError

# The published repos behind the names users type (mflux's aliases plus the tool models).
ALIASES = {
    "schnell": "black-forest-labs/FLUX.1-schnell",
    "dev": "black-forest-labs/FLUX.1-dev",
    "krea-dev": "black-forest-labs/FLUX.1-Krea-dev",
    "fill": "black-forest-labs/FLUX.1-Fill-dev",
    "depth": "black-forest-labs/FLUX.1-Depth-dev",
    "kontext": "black-forest-labs/FLUX.1-Kontext-dev",
    "canny": "InstantX/FLUX.1-dev-Controlnet-Canny",
    "upscaler": "jasperai/Flux.1-dev-Controlnet-Upscaler",
    "redux": "black-forest-labs/FLUX.1-Redux-dev",
    "depth-estimator": "depth-anything/Depth-Anything-V2-Small-hf",
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a diffusers-layout folder, or a single transformer file plus a base folder."""

    folder: Path | None
    transformer_file: Path | None = None
    base_folder: Path | None = None  # supplies VAE, text encoders and scheduler for a single file

    def component(self, name: str) -> Path:
        """Folder of a component, falling back to the base model for what a derivative lacks."""
        for root in (self.folder, self.base_folder):
            if root is not None and (root / name).is_dir():
                return root / name
        raise ModelLoadError(f"The model has no {name}/ folder (looked in {self.folder or self.base_folder}).")


def is_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def repo_folder(repo_id: str, on_progress=None) -> Path:
    """The snapshot folder of a repo: from the HF cache, downloading it when online."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    if is_offline():
        raise ModelLoadError(
            f"{repo_id} is not in the Hugging Face cache ({hf_cache_dir()}) and downloads are off. "
            f"Download it on a connected machine (huggingface-cli download {repo_id}) or pass its folder with --path."
        )
    try:
        return Path(snapshot_download(repo_id, tqdm_class=on_progress))
    except Exception as error:
        raise ModelLoadError(
            f"Could not download {repo_id} into {hf_cache_dir()} ({type(error).__name__}: {error}). "
            f"If you have the files, pass their folder with --path."
        ) from None


def resolve_name(name: str, models_dir: Path | None = None) -> Path:
    """A local path, a name in the models folder, an alias or a repo id -> a folder or file on disk."""
    candidate = Path(name).expanduser()
    if candidate.exists():
        return candidate
    if models_dir is not None and "/" not in name and (Path(models_dir) / name).exists():
        return Path(models_dir) / name
    repo_id = ALIASES.get(name, name)
    if repo_id.count("/") != 1 or candidate.is_absolute() or name.startswith("."):
        raise ModelLoadError(
            f"Unknown model {name!r}: not a local folder or file, an alias ({', '.join(ALIASES)}) or a repo id."
        )
    return repo_folder(repo_id)


def check_flux_folder(folder: Path) -> None:
    if not (folder / "transformer").is_dir():
        raise ModelLoadError(
            f"{folder} is not a FLUX.1 model folder in the diffusers layout (no transformer/ folder; "
            "expected transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/)."
        )


def resolve_model(
    model: str | None = None, path: str | None = None, base_model: str | None = None, models_dir: Path | None = None
) -> ModelSource:
    """Resolve mflux's `--model` / `--path` / `--base-model` triple into files on disk."""
    target = Path(path).expanduser() if path else None
    if target is None:
        if not model:
            raise ModelLoadError("No model given: pass --model (an alias or repo id) or --path (a local folder).")
        target = resolve_name(model, models_dir)
    if not target.exists():
        raise ModelLoadError(f"The model path {target} does not exist.")
    base = resolve_name(base_model, models_dir) if base_model else None
    if target.is_file():
        if target.suffix != ".safetensors":
            raise ModelLoadError(f"{target} is not a model folder or a .safetensors checkpoint.")
        if base is None:
            raise ModelLoadError(
                f"{target.name} is a single transformer file: pass --base-model dev or schnell to supply "
                "the VAE, text encoders and scheduler."
            )
        check_flux_folder(base)
        return ModelSource(folder=None, transformer_file=target, base_folder=base)
    check_flux_folder(target)
    return ModelSource(folder=target, base_folder=base)
