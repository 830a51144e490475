"""ToolEngine: what a tool may ask of the engine beside its model (mflux_core.manager.ModelManager provides it)."""

from pathlib import Path
from typing import Callable, Protocol

import mlx.core as mx
from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.models.esrgan import UpscalerModel
from mflux_core.request import GenerationRequest


class ToolEngine(Protocol):
    def auxiliary_model(self, name: str, load: Callable[[Path], object], variant: str = "",
                        beside: FluxModel | None = None, check: Callable[[object], None] | None = None) -> object:
        """A side model (ControlNet, Redux encoder, depth estimator) by alias, repo id or path, loaded once; with
        `beside` (the model it runs with), refused (InvalidRequest) before loading when its weights in that model's
        dtype would not fit the memory budget; `check` may refuse it for this run, and then it is not kept."""

    def encoded_image(self, model: FluxModel, image: Image.Image, width: int, height: int) -> mx.array:
        """Packed VAE latents of an input image at a size, reused while the same image comes back."""

    def estimate_depth(self, photo: Image.Image) -> Image.Image:
        """The depth map of a photo (near = bright), from the depth estimator."""

    def depth_estimate_bytes(self, photo: Image.Image) -> int:
        """Peak bytes of estimating the photo's depth map (above the estimator's weights), for the plan."""

    def check_side_run(self, what: str, phase: str, peak_bytes: int) -> None:
        """Refuse (InvalidRequest) a side model's run whose `peak_bytes` would not fit the memory budget."""

    def ready_upscaler(self, name: str, size: tuple[int, int], target: tuple[int, int]) -> UpscalerModel:
        """An upscaler model of the models folder by name, loaded, its upscale of `size` towards `target` checked
        against the memory budget (InvalidRequest when it would not fit, or no such model is there)."""

    def upscaled_by_model(self, name: str, image: Image.Image, target: tuple[int, int]) -> tuple[UpscalerModel,
                                                                                                  Image.Image]:
        """The model (readied as ready_upscaler does) and `image` through its passes towards `target`, each tile a
        step of the running job (Stop heard between tiles)."""

    def apply_loras(self, model: FluxModel, request: GenerationRequest) -> None:
        """Make the model's transformer carry exactly the request's LoRAs (a tool may add its own)."""
