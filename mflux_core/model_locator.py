"""Which files a request runs on: the model it names, or its tool's default (the FLUX.1 model when on disk, else
the tool's demo model), found as an alias, repo id, models-folder name or demo model, downloaded when missing."""

from pathlib import Path

from mflux_core.registry import ModelEntry, list_models
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import default_model_for
from mflux_core.weights.resolve import DownloadCallback, ModelSource, resolve_model, resolve_name


class ModelLocator:
    def __init__(self, models_dir: Path | None = None):
        self.models_dir = Path(models_dir) if models_dir else Path("models")

    def named(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its model named, so the metadata records which model made the image."""
        return request if request.model else request.with_(model=default_model_for(request.tool, self.models_dir))

    def source(self, request: GenerationRequest, on_download: DownloadCallback | None = None) -> ModelSource:
        return resolve_model(model=self.named(request).model, base_model=request.base_model,
                             models_dir=self.models_dir, on_download=on_download)

    def folder(self, name: str, on_download: DownloadCallback | None = None) -> Path:
        """The folder of a side model (depth estimator, ControlNet, Redux) by alias, repo id or path."""
        return resolve_name(name, self.models_dir, on_download)

    def list_models(self) -> list[ModelEntry]:
        return list_models(self.models_dir)
