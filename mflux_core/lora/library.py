"""Find a LoRA file from what a user typed: a path, a name in the LoRA library, or a Hugging Face repo id.

The library is LORA_LIBRARY_PATH's folders (separated by ':') and then the models folder's loras/; each is
searched recursively for .safetensors files, and a file can then be named by its file name with or without
the extension (or by its path inside the folder). Earlier folders win when two hold the same name. A repo id
("owner/name", optionally followed by "/file.safetensors") is looked up in the Hugging Face cache, and
downloaded when online.
"""

import os
from pathlib import Path

from mflux_core.errors import ModelLoadError, WordedTwice
from mflux_core.weights.resolve import is_offline

LIBRARY_VARIABLE = "LORA_LIBRARY_PATH"


def library_folders(value: str | None = None) -> list[Path]:
    value = os.environ.get(LIBRARY_VARIABLE, "") if value is None else value
    return [Path(part).expanduser() for part in value.split(":") if part.strip()]


def lora_folders(models_dir: Path | None) -> list[Path]:
    """The LoRA library of a studio whose models folder is `models_dir`: LORA_LIBRARY_PATH, then its loras/."""
    return library_folders() + ([Path(models_dir) / "loras"] if models_dir is not None else [])


def find_in_library(name: str, folders: list[Path]) -> Path | None:
    wanted = name if name.endswith(".safetensors") else f"{name}.safetensors"
    for folder in folders:
        if folder.is_dir():
            found = sorted(folder.rglob(wanted))
            if found:
                return found[0]
    return None


def library_names(folders: list[Path] | None = None) -> dict[str, Path]:
    """Every LoRA in the library by name (for a UI list); earlier folders win."""
    names: dict[str, Path] = {}
    for folder in folders if folders is not None else library_folders():
        if folder.is_dir():
            for path in sorted(folder.rglob("*.safetensors")):
                names.setdefault(path.stem, path)
    return names


def find_in_hf_cache(name: str) -> Path | None:
    parts = name.split("/")
    if len(parts) < 2 or name.startswith((".", "/", "~")):
        return None
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    folder = _repo_snapshot(repo_id, filename)
    if folder is None:
        return None
    if filename:
        return folder / filename if (folder / filename).is_file() else None
    return only_lora_file(folder, f"The repo {repo_id}", f"{repo_id}/FILE")


def only_lora_file(folder: Path, what: str, how: str) -> Path | None:
    """The one .safetensors file in a LoRA folder (a repo, or what diffusers' save_lora_weights and PEFT's
    save_pretrained write); several are refused, naming them and `how` to pick one."""
    files = sorted(folder.rglob("*.safetensors"))
    if len(files) > 1:
        listed = ", ".join(str(f.relative_to(folder)) for f in files[:5])
        raise ModelLoadError(f"{what} holds several LoRA files ({listed}); name one as {how}.")
    return files[0] if files else None


def _repo_snapshot(repo_id: str, filename: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    patterns = [filename] if filename else ["*.safetensors"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    if is_offline():
        return None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception:
        return None


def resolve_lora_path(name: str, models_dir: Path | None = None) -> Path:
    """A path, library name or repo id -> an existing .safetensors file, or a ModelLoadError saying where we looked
    (worded for the page, and for the command line's flags)."""
    path = Path(name).expanduser()
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        found = only_lora_file(path, f"The folder {path}", f"{path}/FILE")
        if found is None:
            raise ModelLoadError(f"The folder {path} holds no LoRA file (.safetensors).")
        return found.resolve()
    if name.startswith(("/", "~", ".")) or "\\" in name:  # a path, not a library name or a repo id
        raise ModelLoadError(f"The LoRA file {name} does not exist (was it moved, or is the path mistyped?).")
    folders = lora_folders(models_dir)
    found = find_in_library(name, folders) or find_in_hf_cache(name)
    if found is not None:
        return found.resolve()
    if "/" in name:  # a repo id (or a path inside a LoRA folder): put there, the library finds it by this name
        why = ("downloads are off: download it once online" if is_offline() else
               "could not be downloaded from Hugging Face: check the network and the name")
        lead = f"LoRA {name!r} is not on this machine and {why}, or put the file "
        file = name if name.endswith(".safetensors") else f"{name}.safetensors"
        at = f"at {Path(models_dir) / 'loras' / file}" if models_dir is not None else f"into a LoRA folder as {file}"
        raise WordedTwice(f"{lead}{at}.", f"{lead}into a {LIBRARY_VARIABLE} folder or <models-dir>/loras as {file}.")
    listed = ", ".join(map(str, folders)) or "none"
    raise WordedTwice(
        f"LoRA {name!r} not found in the LoRA folders ({listed}): put its .safetensors file into one of them.",
        f"LoRA {name!r} not found: it is not a file, nor a name in the LoRA library ({listed}; {LIBRARY_VARIABLE} "
        "and <models-dir>/loras).")
