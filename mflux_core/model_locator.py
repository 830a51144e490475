"""Which files a request runs on: the model it names, or its tool's default (the FLUX.1 model when on disk, else
the tool's demo model), found as an alias, repo id, models-folder name or demo model, downloaded when missing."""

from pathlib import Path

from mflux_core.errors import ModelLoadError, WordedTwice
from mflux_core.registry import BUILT_IN, ModelEntry, list_models, on_disk
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import default_model_for
from mflux_core.weights.component_folder import component_config
from mflux_core.weights.resolve import (
    DownloadCallback, ModelSource, check_weights_file, resolve_model, resolve_name, single_file_has_guidance,
)
from mflux_core.weights.module_files import with_modules
from mflux_core.weights.split_base import bundles_its_base, split_files_in
from mflux_core.weights.split_files import LABELS, SPLIT_KINDS
from mflux_core.weights.transformer_shape import TransformerShape, folder_shape, single_file_shape


class ModelLocator:
    def __init__(self, models_dir: Path | None = None):
        self.models_dir = Path(models_dir) if models_dir else Path("models")

    def named(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its model named, so the metadata records which model made the image."""
        return request if request.model else request.with_(model=default_model_for(request.tool, self.models_dir))

    def source(self, request: GenerationRequest, on_download: DownloadCallback | None = None) -> ModelSource:
        model = self.named(request).model
        source = resolve_model(model=model, base_model=request.base_model or self.base_for(model),
                               models_dir=self.models_dir, on_download=on_download)
        return with_modules(source, request.modules, self.models_dir)

    def base_for(self, model: str) -> str | None:
        """The base of a single transformer file named without one (as the page and the APIs name it): FLUX.1-dev
        for a file with a guidance embedding (dev and its finetunes), else FLUX.1-schnell, when it is on disk, or else
        another FLUX.1 folder on disk of the same kind (krea-dev, a copy in the models folder, a base model before a
        Fill, Depth or Kontext one), or else ComfyUI's or Forge's VAE and text encoder files in the models folder
        (weights/split_base.py); its VAE, text encoders and scheduler are the file's. Of those folders, one whose
        transformer has the file's shape (weights/transformer_shape.py) is taken first. None for a model that is not
        a single file."""
        path = next((p for p in (Path(model).expanduser(), self.models_dir / model) if p.is_file()), None)
        if path is None:
            return None
        check_weights_file(path)
        if bundles_its_base(path):  # an all-in-one checkpoint runs on its own VAE and text encoders
            return None
        guided = single_file_has_guidance(path)
        alias = "dev" if guided else "schnell"
        shape = single_file_shape(path)
        if on_disk(alias, self.models_dir) and fits(shape, resolve_name(alias, self.models_dir)):
            return alias
        entries = sorted((entry for entry in self.list_models() if entry.kind in FOLDER_KINDS and entry.available
                          and entry.where != BUILT_IN), key=lambda entry: entry.kind != "base")
        folders = [(entry.name, folder) for entry in entries if (folder := resolve_name(entry.name, self.models_dir))
                   .is_dir() and has_guidance_embedding(folder) == guided]
        fitting = [name for name, folder in folders if fits(shape, folder)]
        if fitting:
            return fitting[0]
        if on_disk(alias, self.models_dir) or folders:  # loading then says what does not fit
            return alias if on_disk(alias, self.models_dir) else folders[0][0]
        found = split_files_in(self.models_dir) if self.models_dir.is_dir() else {}
        if len(found) == len(SPLIT_KINDS):
            return str(self.models_dir)
        partly = "" if not found else (
            f" (it holds {', '.join(path.name for path in found.values())} but no "
            f"{' or '.join(LABELS[kind] for kind in SPLIT_KINDS if kind not in found)})")
        raise WordedTwice(
            f"{path.name} holds only a transformer: its VAE, text encoders and scheduler come from FLUX.1-{alias}, "
            f"which is not on disk: download it from the Models tab, or put a FLUX.1-{alias} folder (diffusers layout) "
            f"or ComfyUI's ae, clip_l and t5xxl files into the models folder{partly}.",
            f"{path.name} is a single transformer file: pass --base-model (FLUX.1-{alias}, which it needs, is not on "
            "disk to take the VAE, text encoders and scheduler from; a folder holding ComfyUI's ae, clip_l and t5xxl "
            "files does too).")

    def folder(self, name: str, on_download: DownloadCallback | None = None) -> Path:
        """The folder of a side model (depth estimator, ControlNet, Redux) by alias, repo id or path."""
        return resolve_name(name, self.models_dir, on_download)

    def list_models(self) -> list[ModelEntry]:
        return list_models(self.models_dir)


FOLDER_KINDS = ("base", "fill", "depth", "kontext")  # registry kinds of models that can have a VAE and text encoders


def fits(shape: TransformerShape | None, folder: Path) -> bool:
    """Whether `folder` supplies what a single file of `shape` needs (where either does not say, it is assumed)."""
    other = folder_shape(folder)
    return shape is None or other is None or shape.runs_with(other)


def has_guidance_embedding(folder: Path) -> bool:
    """Whether a FLUX.1 folder's transformer has a guidance embedding (dev's kind)."""
    try:
        return bool(component_config(folder / "transformer").get("guidance_embeds"))
    except (ModelLoadError, AttributeError):
        return False
