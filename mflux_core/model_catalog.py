"""Every model the studio knows, with what is on disk: the aliases and any other repo in the Hugging Face cache, the
demo models, the models folder and the LoRA library, each with its kind, size on disk, whether its download is
complete, and whether it is resident now (and at which quantization). Deleting removes a repo from the HF cache
or an entry of the models folder, and never a file outside those two: links pointing elsewhere and the demo models
are refused.

Listing reads folder names, file sizes and small JSON files (registry.folder_kind); it never loads weights.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mflux_core.downloads import cached_repo_folder, hf_cache_dir
from mflux_core.errors import StudioError
from mflux_core.hub_blobs import partial_files_bytes, repo_folder as cached_repo_path  # noqa: F401 (re-exported)
from mflux_core.memory import gb_text
from mflux_core.registry import UNREADABLE, ALIAS_KINDS, file_kind, folder_kind, is_single_file_checkpoint
from mflux_core.resident import names_folder
from mflux_core.weights.resolve import ALIASES, DEMO_MODELS, demo_models_dir

KIND_LABELS = {"base": "base", "fill": "Fill", "depth": "Depth / Canny", "kontext": "Kontext",
               "controlnet": "ControlNet", "redux": "Redux", "depth-estimator": "estimator",
               "single-file": "base (single file)", "vae": "VAE", "text-encoder": "text encoder", "lora": "LoRA",
               UNREADABLE: "unreadable file"}


@dataclass(frozen=True)
class CatalogRow:
    name: str  # what a request's model field takes (an alias, a repo id, a folder or LoRA name)
    kind: str  # a KIND_LABELS value, or "other" for a cached repo that is not a model we run
    where: str  # "Hugging Face cache", "Hugging Face" (not downloaded), "built-in", "models folder", "LoRA library"
    size_bytes: int  # on disk now (0 when not downloaded)
    state: str  # "complete", "partial" (a download to continue), "not downloaded", or a file's "incomplete or damaged"
    resident: str = ""  # "" or the quantization it is loaded at ("8-bit", "full precision")
    repo_id: str | None = None  # the Hugging Face repo behind it, when there is one
    path: Path | None = None  # the folder or file on disk


def folder_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def cached_repo_sizes() -> dict[str, int]:
    """repo id -> bytes its blobs take in the HF cache (huggingface_hub's own scan), partial files included."""
    from huggingface_hub import scan_cache_dir

    try:
        scanned = scan_cache_dir(hf_cache_dir())
    except Exception:  # no cache folder yet, or one huggingface_hub cannot read: nothing cached
        return {}
    return {repo.repo_id: repo.size_on_disk + partial_files_bytes(repo.repo_id) for repo in scanned.repos
            if repo.repo_type == "model"}


def resident_quantization(path: Path | None, resident: list[dict]) -> str:
    """How a model on disk is loaded now, from ModelManager.status()['resident'] labels (which name its folder)."""
    if path is None:
        return ""
    for entry in resident:
        label = entry.get("name") or ""
        if names_folder(label, path):
            return next((word for word in label.split() if word.endswith("-bit")), "full precision")
    return ""


def repo_row(name: str, repo_id: str, kind: str, sizes: dict[str, int], resident: list[dict]) -> CatalogRow:
    folder = cached_repo_folder(repo_id) if repo_id in sizes else None
    state = "complete" if folder is not None else "partial" if repo_id in sizes else "not downloaded"
    where = "Hugging Face cache" if repo_id in sizes else "Hugging Face"
    return CatalogRow(name, kind, where, sizes.get(repo_id, 0), state, resident_quantization(folder, resident),
                      repo_id, folder)


def catalog(models_dir: Path | None, lora_folders: list[Path], resident: list[dict]) -> list[CatalogRow]:
    """The Models tab's rows, aliases first; `resident` is ModelManager.status()['resident']."""
    from mflux_core.lora.library import library_names

    sizes = cached_repo_sizes()
    rows = [repo_row(alias, repo, KIND_LABELS[ALIAS_KINDS[alias]], sizes, resident) for alias, repo in ALIASES.items()]
    for name in DEMO_MODELS:
        folder = demo_models_dir() / name
        if kind := folder_kind(folder):
            rows.append(CatalogRow(name, KIND_LABELS[kind], "built-in", folder_bytes(folder), "complete",
                                   resident_quantization(folder, resident), path=folder))
    if models_dir is not None and Path(models_dir).is_dir():
        for path in sorted(Path(models_dir).iterdir()):
            if path.name.startswith("."):  # hidden: e.g. a model being saved (weights.save's .NAME.partial)
                continue
            kind = file_kind(path) if is_single_file_checkpoint(path) else folder_kind(path)
            if kind:
                state = "incomplete or damaged" if kind == UNREADABLE else "complete"
                rows.append(CatalogRow(path.name, KIND_LABELS[kind], "models folder", folder_bytes(path), state,
                                       resident_quantization(path, resident), path=path))
    known = set(ALIASES.values())
    for repo in sorted(set(sizes) - known):
        snapshot = cached_repo_folder(repo)
        kind = folder_kind(snapshot) if snapshot is not None else None
        rows.append(repo_row(repo, repo, KIND_LABELS.get(kind, "other"), sizes, resident))
    for name, path in library_names(list(lora_folders)).items():
        rows.append(CatalogRow(name, KIND_LABELS["lora"], "LoRA library", path.stat().st_size, "complete", path=path))
    return rows


def deletion_plan(repo_id: str):
    """huggingface_hub's plan to delete every revision of a cached repo (`.expected_freed_size`, `.execute()`)."""
    from huggingface_hub import scan_cache_dir

    try:
        scanned = scan_cache_dir(hf_cache_dir())
    except Exception:  # no cache folder: nothing to delete
        scanned = None
    repo = next((r for r in scanned.repos if r.repo_id == repo_id and r.repo_type == "model"), None) if scanned else None
    if repo is None:
        raise StudioError(f"{repo_id} is not in the Hugging Face cache, so there is nothing to delete.")
    return scanned.delete_revisions(*(revision.commit_hash for revision in repo.revisions))


def cache_bytes_freed(repo_id: str) -> int:
    """What deleting a cached repo frees: its files, and the partial files of interrupted downloads (the repo's whole
    folder goes with its last revision)."""
    return deletion_plan(repo_id).expected_freed_size + partial_files_bytes(repo_id)


def delete_from_cache(repo_id: str) -> str:
    """Delete a repo from the HF cache (the cache only; never the models folder); says what was freed."""
    freed = cache_bytes_freed(repo_id)
    deletion_plan(repo_id).execute()
    return f"Deleted {repo_id} from the Hugging Face cache, freeing {gb_text(freed)}."


def models_folder_entry(name: str, models_dir: Path | None) -> Path | None:
    """`name` as a file or folder right inside the models folder (never a path elsewhere), or None."""
    name = (name or "").strip()
    if models_dir is None or name in ("", ".", "..") or "/" in name or "\\" in name:
        return None
    entry = Path(models_dir) / name
    return entry if entry.exists() or entry.is_symlink() else None


def links_in(entry: Path) -> list[Path]:
    """The entry itself when it is a link, else the links anywhere inside it (never followed)."""
    if entry.is_symlink() or not entry.is_dir():
        return [entry] if entry.is_symlink() else []
    return [Path(root) / name for root, dirs, files in os.walk(entry) for name in dirs + files
            if (Path(root) / name).is_symlink()]


def bytes_removed(entry: Path) -> int:
    """What deleting `entry` frees: its regular files (a link frees only itself, never its target)."""
    if entry.is_symlink() or entry.is_file():
        return entry.lstat().st_size
    return sum((Path(root) / name).lstat().st_size for root, _, files in os.walk(entry) for name in files)


def checked_models_folder_entry(name: str, models_dir: Path) -> Path:
    """The models-folder entry `name`, refused in one sentence when deleting it could touch anything outside the
    models folder and the HF cache, or a demo model."""
    entry = models_folder_entry(name, models_dir)
    if entry is None:
        raise StudioError(f"The models folder has no {name}: press Rescan to see what it holds now.")
    inside = [Path(models_dir).resolve(), hf_cache_dir().resolve()]
    outside = [link for link in links_in(entry)
               if not any(link.resolve().is_relative_to(folder) for folder in inside)]
    if outside:
        raise StudioError(f"{name} in the models folder links to {outside[0].resolve()}, outside the models folder "
                          "and the Hugging Face cache: the studio deletes nothing there; remove the link by hand.")
    if entry.resolve().is_relative_to(demo_models_dir().resolve()):
        raise StudioError(f"{name} is a demo model that ships with the studio: it cannot be deleted from here.")
    return entry


def delete_from_models_folder(name: str, models_dir: Path) -> str:
    """Delete a file or folder of the models folder (after checked_models_folder_entry); says what was freed."""
    entry = checked_models_folder_entry(name, models_dir)
    freed = bytes_removed(entry)
    if entry.is_symlink() or entry.is_file():
        entry.unlink()
    else:
        shutil.rmtree(entry)  # removes links inside, never what they point to
    return f"Deleted {name} from the models folder, freeing {gb_text(freed)}."
