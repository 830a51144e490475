"""A single transformer file's base from ComfyUI's or Forge's separate files (weights/split_files.py) in a folder
(their models folder: the files at the top or in ComfyUI's vae/, clip/, text_encoders/ or Forge's VAE/,
text_encoder/; a GGUF T5 too), or from an all-in-one checkpoint's own parts, plus FLUX.1's two tokenizers, which no
such file holds: taken from a FLUX.1 folder on disk, else fetched alone (a few MB, FLUX.1-schnell's) into the models
folder once."""

import shutil
from pathlib import Path

from mflux_core.downloads import hf_cache_dir, hub_error, is_offline
from mflux_core.errors import ModelLoadError, WordedTwice
from mflux_core.weights.split_files import LABELS, SPLIT_KINDS, file_parts, is_readable, split_file_kind

COMFY_FOLDERS = ("", "vae", "clip", "text_encoders", "VAE", "text_encoder")  # ComfyUI's, then Forge's
TOKENIZER_REPO = "black-forest-labs/FLUX.1-schnell"  # not gated; every FLUX.1 model has the same two tokenizers
TOKENIZER_PATTERNS = ["tokenizer/*", "tokenizer_2/*"]
TOKENIZERS_FOLDER = "flux1-tokenizers"  # in the models folder
TOKENIZERS = ("tokenizer", "tokenizer_2")


def split_files_by_place(folder: Path) -> dict[str, tuple[str, Path]]:
    """place (its path in `folder`) -> (kind, file) of every VAE and text encoder file at the folder's top and in
    ComfyUI's and Forge's subfolders (one seen twice, vae/ and VAE/ on a Mac's disk, once)."""
    folder, found, seen = Path(folder), {}, set()
    for sub in COMFY_FOLDERS:
        for path in sorted((folder / sub).glob("*.*")):
            kind = None if path.resolve() in seen else split_file_kind(path)
            if kind is not None:
                seen.add(path.resolve())
                found[path.relative_to(folder).as_posix()] = (kind, path)
    return found


def split_files_in(folder: Path) -> dict[str, Path]:
    """kind -> file of the VAE and text encoder files in `folder` and its ComfyUI subfolders; of several files of a
    kind, the largest (T5 in float16 before its FP8 copy)."""
    found: dict[str, Path] = {}
    for kind, path in split_files_by_place(folder).values():
        if kind not in found or path.stat().st_size > found[kind].stat().st_size:
            found[kind] = path
    return found


def has_split_files(folder: Path) -> bool:
    return Path(folder).is_dir() and bool(split_files_in(folder))


def split_base(folder: Path, models_dir: Path | None) -> tuple[tuple[str, Path], ...]:
    """(component, path) of the VAE, the text encoders and the tokenizers for a transformer file, from `folder`."""
    found = split_files_in(folder)
    missing = [LABELS[kind] for kind in SPLIT_KINDS if kind not in found]
    if missing:
        unreadable = [path.name for sub in COMFY_FOLDERS for path in sorted((Path(folder) / sub).glob("*.safetensors"))
                      if not is_readable(path)]
        raise ModelLoadError(f"{folder} holds part of a FLUX.1 base for a single transformer file; missing: "
                             f"{', '.join(missing)}" + (f" ({', '.join(unreadable)} there cannot be read)."
                                                        if unreadable else "."))
    tokenizers = flux_tokenizers(models_dir, Path(folder))
    return (*((kind, found[kind]) for kind in SPLIT_KINDS), *((name, tokenizers / name) for name in TOKENIZERS))


def bundles_its_base(path: Path) -> bool:
    """Whether a transformer file is an all-in-one checkpoint holding its VAE and both text encoders."""
    return file_parts(path) == set(SPLIT_KINDS)


def bundled_base(path: Path, models_dir: Path | None) -> tuple[tuple[str, Path], ...]:
    """(component, path) of an all-in-one checkpoint's own VAE and text encoders (each the file itself, read as that
    part of it), and the tokenizers."""
    tokenizers = flux_tokenizers(models_dir, Path(path).parent)
    return (*((kind, Path(path)) for kind in SPLIT_KINDS), *((name, tokenizers / name) for name in TOKENIZERS))


def _has_tokenizers(folder: Path) -> bool:
    return all((folder / name).is_dir() and any((folder / name).iterdir()) for name in TOKENIZERS)


def _tokenizer_folders(roots: list[Path]):
    """Where FLUX.1's tokenizers may already be: in each root (the models folder, the files' folder) a fetched copy
    and its FLUX.1 folders (diffusers' or mflux's), then the black-forest-labs downloads in the Hugging Face cache."""
    for root in roots:
        if root.is_dir():
            yield root / TOKENIZERS_FOLDER
            yield from sorted(path for path in root.iterdir() if (path / "transformer").is_dir())
    yield from sorted(hf_cache_dir().glob("models--black-forest-labs--FLUX.1-*/snapshots/*"))


def flux_tokenizers(models_dir: Path | None, files_folder: Path | None = None) -> Path:
    """A folder holding FLUX.1's tokenizer/ and tokenizer_2/."""
    roots = [Path(root) for root in (models_dir, files_folder) if root is not None]
    found = next((folder for folder in _tokenizer_folders(roots) if _has_tokenizers(folder)), None)
    if found is not None:
        return found
    if models_dir is None or is_offline():
        raise WordedTwice(
            "FLUX.1's tokenizers are not on disk (the VAE and text encoder files do not hold them): download any "
            "FLUX.1 model from the Models tab while online, or put a FLUX.1 folder into the models folder.",
            "FLUX.1's tokenizers are not on disk (the VAE and text encoder files do not hold them): run once while "
            "online (they are fetched, a few MB), or put a FLUX.1 folder into the models folder.")
    return fetch_tokenizers(Path(models_dir))


def fetch_tokenizers(models_dir: Path) -> Path:
    """FLUX.1-schnell's tokenizer/ and tokenizer_2/ alone, into the models folder (whole or not at all)."""
    from huggingface_hub import snapshot_download

    target = models_dir / TOKENIZERS_FOLDER
    partial = models_dir / f".{TOKENIZERS_FOLDER}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        snapshot_download(TOKENIZER_REPO, allow_patterns=TOKENIZER_PATTERNS, local_dir=partial)
    except Exception as error:  # every hub failure gets its sentence
        shutil.rmtree(partial, ignore_errors=True)
        raise hub_error(TOKENIZER_REPO, error) from None
    if not _has_tokenizers(partial):
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelLoadError(f"{TOKENIZER_REPO} sent no tokenizer/ and tokenizer_2/ folders.")
    shutil.rmtree(partial / ".cache", ignore_errors=True)  # huggingface_hub's bookkeeping of the local copy
    partial.rename(target)
    return target
