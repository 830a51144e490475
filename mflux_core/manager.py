"""ModelManager: the engine's front. It names a request's model (ModelLocator), keeps the weights resident
within the memory budget (ResidentModels), applies the request's LoRAs (ResidentLoras) and runs one tool at a
time; tools see it through the ToolEngine interface (side models, cached encodings, depth maps, LoRAs).
A cancel callable is checked between component loads, during downloads and after every step.
"""

import hashlib
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
from PIL import Image

from mflux_core.backend import backend_name, resolve_dtype
from mflux_core.flux_model import FluxModel
from mflux_core.errors import StudioError
from mflux_core.events import Downloading, Report, result_of
from mflux_core.generation import Preview, ToolInputs, decode_latents, run_tool
from mflux_core.face_fix import face_fix_request, face_fixed, wants_face_fix
from mflux_core.hires import generate_hires
from mflux_core.tiled_upscale import generate_tiled, is_tiled
from mflux_core.upscaler_only import generate_upscaler_only, is_upscaler_only
from mflux_core.lora.resident import ResidentLoras
from mflux_core.lru import LRU
from mflux_core.memory import DEPTH_PHASE, UPSCALER_PHASE, MemoryBudget, MemoryPlan, gb_text
from mflux_core.metadata import png_text_chunks, request_metadata
from mflux_core.model_locator import ModelLocator
from mflux_core.native_sizes import (
    MASKED_AREA_MADE, makes_any_size, native_panel_for, native_size_for, size_note, tokens_note, whole_tokens_size,
)
from mflux_core.registry import ModelEntry
from mflux_core.request import GenerationRequest
from mflux_core.resident import ResidentModels, stop_if_cancelled
from mflux_core.sampling.previews import LatentPreviewer
from mflux_core.settings_schema import HIRES_UPSCALERS
from mflux_core.tools.common import SizeDecided, encode_image, probing_size, tool_inputs
from mflux_core.upscaler_files import unknown_upscaler, upscaler_file
from mflux_core.upscaler_models import UpscalerModel, model_passes, read_upscaler, upscale_bytes
from mflux_core.weights.resolve import DownloadCallback, ModelSource

@dataclass
class GenerationResult:
    image: Image.Image
    request: GenerationRequest
    metadata: dict
    text_chunks: dict[str, str]
    seconds: float
    before: Image.Image | None = None  # what a two-pass job's last pass started from (the hires fix's upscaled image)
    notes: tuple[str, ...] = ()  # what the user should know: an input resized, a size changed to the model's own


class ModelManager:
    jobs_at_once = 1  # its lock runs one job at a time (a cluster engine runs one per replica)

    def __init__(
        self,
        models_dir: Path | None = None,
        max_resident_transformers: int = 1,
        low_ram: bool = False,
        dtype: str | None = None,
        prompt_cache_size: int = 16,
        full_preview_every: int = 0,
        memory_budget_bytes: int | None = None,
        step_previews: bool = True,
    ):
        self.locator = ModelLocator(models_dir)
        self.resident = ResidentModels(MemoryBudget(memory_budget_bytes), max_resident_transformers, low_ram,
                                       prompt_cache_size)
        # LoRA files read once; applied to, rescaled on, removed from resident transformers
        self.loras = ResidentLoras(self.locator.models_dir)
        self.dtype_name = dtype
        self.full_preview_every = full_preview_every
        self.step_previews = step_previews  # off: Step events carry no image (a progress bar needs none)
        self._lock = threading.Lock()
        self.last_used = time.monotonic()  # when the last job ended (mflux_core.idle_unload)
        self._previewer: LatentPreviewer | None = None
        self._encoded_images: LRU = LRU(4)  # VAE latents of input images (ControlNet control images)
        self.download: dict | None = None  # the download in progress: model, done_bytes, total_bytes
        self._on_download: DownloadCallback | None = None  # set while a job with a Report runs
        self._job: tuple[Report | None, Callable[[], bool] | None] = (None, None)  # the running job's report, Stop

    @property
    def models_dir(self) -> Path:
        return self.locator.models_dir

    @property
    def budget(self) -> MemoryBudget:
        return self.resident.budget

    def list_models(self) -> list[ModelEntry]:
        return self.locator.list_models()

    def resolve(self, request: GenerationRequest) -> ModelSource:
        try:
            return self.locator.source(request, self._on_download)
        finally:
            self.download = None  # downloaded (or failed): what follows is not a download

    # ----- what tools ask for (ToolEngine) ---------------------------------------------------

    def auxiliary_model(self, name: str, load: Callable[[Path], object], variant: str = "",
                        beside: FluxModel | None = None, check: Callable[[object], None] | None = None):
        try:
            folder = self.locator.folder(name, self._on_download)
        finally:
            self.download = None
        return self.resident.side_model(folder, name, load, variant, beside, check)

    def encoded_image(self, model: FluxModel, image: Image.Image, width: int, height: int,
                      forced_tile: int = 0) -> mx.array:
        key = (id(model.vae), hashlib.sha256(image.tobytes()).hexdigest(), image.mode, image.size, width, height,
               forced_tile)
        cached = self._encoded_images.get(key)
        if cached is not None and cached[0]() is model.vae:  # the id alone could be a freed VAE's
            return cached[1]
        latents = encode_image(model, image, width, height, forced_tile)
        mx.eval(latents)
        self._encoded_images.put(key, (weakref.ref(model.vae), latents))
        return latents

    def estimate_depth(self, photo: Image.Image, name: str | None = None) -> Image.Image:
        """The photo's depth map, from `name` (default: Depth-Anything-V2-Small, else the demo estimator);
        refused (InvalidRequest) when the estimator's peak would not fit the memory budget."""
        from mflux_core.models.depth import check_photo_size, depth_to_image
        from mflux_core.models.depth_memory import estimator_peak_bytes

        check_photo_size(photo)  # before the estimator is loaded and its memory planned
        estimator = self._depth_estimator(name)
        self.resident.check_side_run(f"the depth map of a {photo.width}x{photo.height} photo", DEPTH_PHASE,
                                     estimator_peak_bytes(estimator, photo.size))
        return depth_to_image(estimator.estimate(photo))

    def check_side_run(self, what: str, phase: str, peak_bytes: int) -> None:
        self.resident.check_side_run(what, phase, peak_bytes)

    def ready_upscaler(self, name: str, size: tuple[int, int], target: tuple[int, int]) -> UpscalerModel:
        """The upscaler model `name` of the models folder (A1111's labels too), loaded once, its upscale of an image
        of `size` towards `target` checked against the memory budget (refused, InvalidRequest, before it runs)."""
        path = upscaler_file(self.models_dir, name)
        if path is None:
            raise unknown_upscaler(name, HIRES_UPSCALERS, self.models_dir)
        model = self.resident.side_model(path, f"upscaler {name}", read_upscaler)
        self.check_side_run(f"upscaling {size[0]}x{size[1]} towards {target[0]}x{target[1]} with {name}",
                            UPSCALER_PHASE, upscale_bytes(model, size, target))
        return model

    def upscaled_by_model(self, name: str, image: Image.Image, target: tuple[int, int]) -> tuple[UpscalerModel,
                                                                                                  Image.Image]:
        """`image` through the upscaler model `name` towards `target` (ready_upscaler's checks first), its tiles
        reported as the running job's steps and Stop heard between them."""
        model = self.ready_upscaler(name, image.size, target)
        report, cancelled = self._job
        return model, model_passes(model, image, target, cancelled, report)

    def depth_estimate_bytes(self, photo: Image.Image, name: str | None = None) -> int:
        from mflux_core.models.depth_memory import estimator_peak_bytes

        return estimator_peak_bytes(self._depth_estimator(name), photo.size)

    def _depth_estimator(self, name: str | None):
        from mflux_core.models.depth import DepthEstimator
        from mflux_core.tools.specs import default_depth_estimator

        name = name or default_depth_estimator(self.models_dir)
        return self.auxiliary_model(name, lambda folder: DepthEstimator.from_folder(folder))

    def apply_loras(self, model: FluxModel, request: GenerationRequest) -> None:
        self.loras.sync(model.transformer, request.lora_paths, request.lora_scales, model.text_encoders,
                        request.lora_text_encoder_scales)

    def previewer(self, model: FluxModel) -> LatentPreviewer:
        """The previewer of the model's VAE (refitted only when the VAE changes)."""
        if self._previewer is None or self._previewer.vae is not model.vae:
            self._previewer = LatentPreviewer(model.vae)
        return self._previewer

    # ----- generating ----------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        report: Report | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Generate one image, reporting Downloading, Loading and Step events (with previews) to `report`;
        raises StudioError subclasses for anything the user can fix. events.stream() makes it an iterator."""
        request = self.locator.named(request.validated())
        if wants_face_fix(request):
            face_fix_request(request)  # its settings checked before the first pass
        with self._lock, self._reporting(request.model, report, cancelled):
            result = self._run(request, report, cancelled)
            return face_fixed(self, result, report, cancelled) if wants_face_fix(request) else result

    def _run(self, request: GenerationRequest, report: Report | None,
             cancelled: Callable[[], bool] | None) -> GenerationResult:
        if request.hires_scale is not None:
            return generate_hires(self, request, report, cancelled)
        if is_upscaler_only(request):
            return generate_upscaler_only(self, request)
        if is_tiled(request):
            return generate_tiled(self, request, report, cancelled)
        return self._generate(request, report, cancelled)

    def batch(self, requests: list[GenerationRequest],
              cancelled: Callable[[], bool] | None = None) -> Iterator[Callable[[Report], GenerationResult]]:
        """One job per request, each run when called, one after another (a cluster engine sends them all at once)."""
        for request in requests:
            yield lambda report, request=request: self.generate(request, report, cancelled)

    @contextmanager
    def session(self, request: GenerationRequest, cancelled: Callable[[], bool] | None = None,
                report: Report | None = None) -> Iterator[FluxModel]:
        """Exclusive use of the resident models, prepared for `request`: for jobs other than generate()
        (concept maps, training previews) that must not run beside a generation."""
        request = self.locator.named(request.validated())
        with self._lock, self._reporting(request.model, report, cancelled):
            yield self._prepared_model(request, cancelled)

    @contextmanager
    def _reporting(self, model: str, report: Report | None, cancelled: Callable[[], bool] | None):
        """While a job runs: its loads and downloads go to `report` (without one, huggingface_hub draws its
        own progress bars)."""
        self._job = report, cancelled
        if report is not None:
            self.resident.report, self._on_download = report, self._download_reporter(model, report, cancelled)
        try:
            yield
        finally:
            self._job = None, None
            self.resident.report = self._on_download = None
            self.download = None
            self.last_used = time.monotonic()

    def _download_reporter(self, model: str, report: Report,
                           cancelled: Callable[[], bool] | None) -> DownloadCallback:
        def on_download(done_bytes: int, total_bytes: int) -> None:
            stop_if_cancelled(cancelled, f"while downloading {model} (what arrived is kept; the next try resumes)")
            self.download = {"model": model, "done_bytes": done_bytes, "total_bytes": total_bytes}
            report(Downloading(model, done_bytes, total_bytes))

        return on_download

    def _prepared_model(self, request: GenerationRequest, cancelled: Callable[[], bool] | None) -> FluxModel:
        """The request's model resident, with the request's LoRAs applied. Call with the lock held."""
        stop_if_cancelled(cancelled, "before the model was loaded")
        source, dtype = self.resolve(request), resolve_dtype(request.dtype or self.dtype_name)
        self.resident.check_before_loading(source, request, dtype)
        model = self.resident.model_for(source, dtype, name=request.model, quantize=request.quantize,
                                        cancelled=cancelled)
        self.apply_loras(model, request)
        return model

    def _generate(self, request: GenerationRequest, report: Report | None,
                  cancelled: Callable[[], bool] | None) -> GenerationResult:
        started = self.run_started()
        model = self._prepared_model(request, cancelled)
        inputs, size_notes = self.sized_inputs(model, request)
        plan = self.resident.plan_run(model, inputs)
        with self.resident.budget.holding(plan):
            image = self.run_inputs(model, inputs, report, cancelled)
        return self.finished(image, inputs.request, model, inputs.conditioning.guidance, plan, started,
                             notes=(*inputs.notes, *size_notes), recorded=inputs.recorded)

    def run_started(self) -> tuple[float, int]:
        """At a run's start: the time, and the MLX memory that is not the models' (e.g. a caller's arrays)."""
        mx.reset_peak_memory()
        return time.perf_counter(), mx.get_active_memory() - self.resident.resident_bytes()

    def run_inputs(self, model: FluxModel, inputs: ToolInputs, report: Report | None,
                   cancelled: Callable[[], bool] | None) -> Image.Image:
        """A tool's inputs through the shared loop, with previews when someone follows the steps."""
        preview = self.step_preview(model) if report else None
        return result_of(run_tool(model, inputs, cancelled, preview), report)

    def finished(self, image: Image.Image, request: GenerationRequest, model: FluxModel | None,
                 guidance: float | None, plan: MemoryPlan | None, started: tuple[float, int],
                 before: Image.Image | None = None, notes: tuple[str, ...] = (),
                 recorded: dict | None = None) -> GenerationResult:
        """The run's result with its metadata (`recorded`: what the tool decided beyond the request); its memory
        plan recorded next to the measured peak. No model and no plan: a job that ran no FLUX.1 pass."""
        if plan is not None:
            self.resident.record_memory(plan, started[1])
        steps = request.steps or model.default_steps if model is not None else None
        extras = {"steps": steps, "guidance": guidance,
                  **({"notes": list(notes)} if notes else {}), **(recorded or {})}
        return GenerationResult(
            image=image,
            request=request,
            metadata=request_metadata(request, extras),
            text_chunks=png_text_chunks(request, extras),
            seconds=time.perf_counter() - started[0],
            before=before,
            notes=notes,
        )

    def sized_inputs(self, model: FluxModel, request: GenerationRequest) -> tuple[ToolInputs, tuple[str, ...]]:
        """The tool's inputs; built again at a size the model makes when the asked (or input image's) size is not
        one (a demo model's nearest native size; whole tokens of a VAE that scales by more than 8), with a note. The
        size is decided first and checked against the memory budget before any input is read at it."""
        try:
            with probing_size():  # the size first, not the inputs at a size the model cannot make or the budget holds
                inputs = tool_inputs(model, request, self)
            sized, canvas = inputs.request, inputs.canvas
        except SizeDecided as decided:
            inputs, sized, canvas = None, decided.request, decided.canvas
        asked = (sized.width, sized.height)
        if makes_any_size(model.native_sizes, model.token_side):
            made = None
        elif not model.native_sizes:  # a panel of whole tokens makes a canvas of whole tokens too
            made = whole_tokens_size(model.token_side, *asked)
        elif canvas is None:
            made = native_size_for(model.native_sizes, *asked)
        else:  # the model paints the canvas (an in-context diptych); the request names one panel
            made = native_panel_for(model.native_sizes, asked, canvas)
        if made is None:
            if inputs is None:
                self.resident.check_size(model, sized, canvas)
            return inputs or tool_inputs(model, request, self), ()
        # inpaint area "Only masked" keeps the image's size: the size decided is the area's, as it is processed
        area = {"made_what": MASKED_AREA_MADE} if request.only_masked_padding is not None else {}
        note = size_note(request.model, model.native_sizes, asked, made, **area) if model.native_sizes else \
            tokens_note(request.model, model.token_side, asked, made, **area)
        canvas = canvas and (canvas[0] * made[0] // asked[0], canvas[1] * made[1] // asked[1])
        self.resident.check_size(model, sized.with_(width=made[0], height=made[1]), canvas)
        return tool_inputs(model, request.with_(width=made[0], height=made[1]), self), (note,)

    def step_preview(self, model: FluxModel) -> Preview | None:
        """Previews for the UI: the cheap linear one of what the step aims at, or a full VAE decode of the latents
        themselves every `full_preview_every` steps (the CLI's stepwise images, as mflux saves them); None when step
        previews are off (the linear map's first fit alone costs seconds on a full-size VAE)."""
        if not self.step_previews:
            return None
        previewer = self.previewer(model)

        def preview(step: int, latents: mx.array, aim: mx.array, grid: tuple[int, int]) -> Image.Image:
            if self.full_preview_every and step % self.full_preview_every == 0:
                return decode_latents(model, latents, grid)
            return previewer(aim, grid)

        return preview

    # ----- status ----------------------------------------------------------------------------

    def status(self) -> dict:
        """For the UI: what is resident (least recently used first) and its memory, loads, the last
        swap, a download in progress, and whether a generation is running."""
        return {
            "backend": backend_name(),
            **self.resident.status(),
            "download": self.download,
            "busy": self._lock.locked(),
            "loras": [report.summary() for report in self.loras.reports],
        }

    def unload_all(self) -> str:
        """Unload every model, LoRA file and cached prompt (A1111's "Unload SD checkpoint"), so the memory goes back to
        the system; the next job loads what it needs. Refused while a job runs; a sentence saying what was freed."""
        if not self._lock.acquire(blocking=False):
            raise StudioError("A job is running and uses the models: unload them when it has finished.")
        try:
            self.loras.clear()
            self._encoded_images.clear()
            self._previewer = None  # it holds the last VAE
            freed = self.resident.unload_all()
        finally:
            self._lock.release()
        return f"Unloaded every model ({gb_text(freed)}): the next job loads what it needs."

    def unload(self, folder: Path, name: str) -> int:
        """Drop what is resident from `folder` before it is deleted; refused while a job runs (it may be using it)."""
        if not self._lock.acquire(blocking=False):
            raise StudioError(f"A job is running and may be using {name}: delete it when the job has finished.")
        try:
            return self.resident.unload(folder)
        finally:
            self._lock.release()
