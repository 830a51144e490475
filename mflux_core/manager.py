"""ModelManager: one resident set of models shared by every tool, swapped as little as possible.

All FLUX.1 variants (dev, Fill, Depth, Kontext, ...) share the VAE and text encoders, so switching
tools swaps only the transformer. Sameness is decided from the files (weights/fingerprint.py).
Transformers are kept in an LRU bounded by a count and a memory budget; one is evicted before the
next loads, and a bad file is found from its header before anything is evicted. One generation
runs at a time; a cancel callable is checked between component loads, during downloads and after
every step. Every cache is bounded.
"""

import hashlib
import threading
from contextlib import contextmanager
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
from PIL import Image

from mflux_core import loader
from mflux_core.backend import backend_name, resolve_dtype
from mflux_core.errors import Cancelled, InvalidRequest, ModelLoadError
from mflux_core.events import Downloading, Loading, Report, result_of
from mflux_core.flux_model import FluxModel
from mflux_core.generation import Preview, ToolInputs, decode_latents, run_tool
from mflux_core.lru import LRU
from mflux_core.memory import MemoryBudget, MemoryPlan, gb_text
from mflux_core.metadata import png_text_chunks, request_metadata
from mflux_core.models.text_encoders import PromptEmbeddings, TextEncoders
from mflux_core.planning import plan_from_files, plan_tool_run
from mflux_core.registry import ModelEntry, list_models
from mflux_core.request import GenerationRequest
from mflux_core.sampling.previews import LatentPreviewer
from mflux_core.tools import TOOL_MODULES, default_model_for
from mflux_core.tools.common import encode_image, with_sequence_length
from mflux_core.lora.apply import LoraReport
from mflux_core.lora.resident import ResidentLoras
from mflux_core.weights.fingerprint import fingerprint
from mflux_core.weights.quantize import quantize_model, quantize_text_encoders, text_encoder_bytes
from mflux_core.weights.resolve import DownloadCallback, ModelSource, resident_bytes_of, resolve_model, resolve_name
from mflux_core.weights.safetensors_io import weight_files

@dataclass
class GenerationResult:
    image: Image.Image
    request: GenerationRequest
    metadata: dict
    text_chunks: dict[str, str]
    seconds: float


@dataclass
class LoadEvent:
    what: str
    seconds: float
    when: float = field(default_factory=time.time)


def parameter_bytes(module) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(module.parameters()))


def component_bytes(component) -> int:
    if isinstance(component, TextEncoders):
        return text_encoder_bytes(component)
    return parameter_bytes(component) if hasattr(component, "parameters") else 0


def content_key(*paths: Path) -> str:
    """fingerprint() of model files; files that vanished or cannot be read are a ModelLoadError."""
    try:
        return fingerprint(*paths)
    except OSError as error:
        raise ModelLoadError(
            f"Cannot read the model files at {error.filename or paths[0]} ({error.strerror}); "
            "were they moved or deleted?"
        ) from None


def weights_on_disk(*paths: Path) -> list[Path]:
    """The safetensors files of component folders (or single files)."""
    return [file for path in paths for file in ([path] if Path(path).is_file() else weight_files(path))]


def model_weight_bytes(source: ModelSource, dtype: mx.Dtype, quantize: int | None) -> int:
    """Memory a model's transformer, VAE and text encoders take once loaded, read from the file headers."""
    transformer = source.transformer_file or source.folder / "transformer"
    quantized = quantize / 8 if quantize else dtype.size
    components = [source.component(name) for name in ("text_encoder", "text_encoder_2")]
    return (resident_bytes_of(weights_on_disk(transformer, *components), quantized)
            + resident_bytes_of(weights_on_disk(source.component("vae")), dtype.size))


def stop_if_cancelled(cancelled: Callable[[], bool] | None, when: str) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled(f"Stopped {when}.")


class CachedTextEncoders:
    """TextEncoders with an LRU of prompt embeddings, keyed by the encoders' fingerprint."""

    def __init__(self, encoders: TextEncoders, key: str, cache: LRU, low_ram: bool, quantize: int | None = None):
        self.encoders = encoders
        self.key = key
        self.cache = cache
        self.low_ram = low_ram
        self.quantize = quantize

    @property
    def default_sequence_length(self) -> int:
        return self.encoders.default_sequence_length

    def encode(self, prompt: str, max_sequence_length: int | None = None) -> PromptEmbeddings:
        max_sequence_length = self.encoders.sequence_length(max_sequence_length)  # None and 512 share an entry
        cache_key = (self.key, prompt, max_sequence_length)
        cached = self.cache.get(cache_key)
        if cached is None:
            if not self.encoders.loaded:  # released after the last prompt (low_ram): reload as configured
                self.encoders.load()
                quantize_text_encoders(self.encoders, self.quantize)
            cached = self.encoders.encode(prompt, max_sequence_length)
            mx.eval(cached.t5, cached.pooled)
            self.cache.put(cache_key, cached)
            if self.low_ram:
                self.encoders.release()
        return cached


class ModelManager:
    def __init__(
        self,
        models_dir: Path | None = None,
        max_resident_transformers: int = 1,
        low_ram: bool = False,
        dtype: str | None = None,
        prompt_cache_size: int = 16,
        full_preview_every: int = 0,
        memory_budget_bytes: int | None = None,
    ):
        self.models_dir = Path(models_dir) if models_dir else Path("models")
        self.low_ram = low_ram
        self.dtype_name = dtype
        self.full_preview_every = full_preview_every
        # Transformers are evicted (least recently used first) to stay within both limits.
        self.budget = MemoryBudget(memory_budget_bytes)
        self.last_memory: dict | None = None  # the last request's plan and measured peak
        self._lock = threading.Lock()
        self._labels: dict[object, str] = {}  # cache key (content fingerprints) -> what was loaded, for status()
        self._transformers: LRU = LRU(max_resident_transformers, on_evict=self._evicted)
        self._vaes: LRU = LRU(2, on_evict=self._evicted)
        self._text_encoders: LRU = LRU(2, on_evict=self._evicted)
        self._prompts: LRU = LRU(prompt_cache_size)  # (encoders, prompt, length) -> embeddings, 8 MB at full size
        self._previewer: LatentPreviewer | None = None
        self.auxiliary = LRU(4, on_evict=self._evicted)  # ControlNet, Redux, depth estimator
        self._encoded_images: LRU = LRU(4)  # VAE latents of input images (ControlNet control images)
        self.load_counts: dict[str, int] = {"transformer": 0, "vae": 0, "text_encoders": 0}
        self.events: list[LoadEvent] = []
        self.last_swap: dict | None = None  # the last transformer change: from, to, seconds
        self.download: dict | None = None  # the download in progress: model, done_bytes, total_bytes
        self._on_download: DownloadCallback | None = None  # set while a job with a Report runs
        self._report: Report | None = None  # the running job's, told what loads
        self.loras = ResidentLoras()  # LoRA files read once; applied to, rescaled on, removed from resident transformers
        self.lora_reports: list[LoraReport] = []  # the last request's LoRAs: matched / total keys each

    # ----- loading -------------------------------------------------------------------------

    def _timed_load(self, kind: str, what: str, load: Callable, key=None):
        if self._report is not None:
            self._report(Loading(what))
        started = time.perf_counter()
        value = load()
        self.load_counts[kind] = self.load_counts.get(kind, 0) + 1
        self.events = (self.events + [LoadEvent(what, time.perf_counter() - started)])[-20:]
        if key is not None:
            self._labels[key] = what
        return value

    def _evicted(self, key) -> None:
        self._labels.pop(key, None)
        mx.clear_cache()  # the LRU has dropped the value by now: hand its buffers back

    def _make_room(self, needed_bytes: int) -> None:
        """Evict least recently used transformers until one more fits the count and the memory budget."""
        transformers = self._transformers
        while len(transformers) and (len(transformers) >= transformers.capacity
                                     or needed_bytes > self.free_bytes()):
            transformers.pop_oldest()

    def free_bytes(self) -> int:
        """Bytes of the budget left for loading or computing beside what is resident."""
        resident = self.resident_bytes()
        return self.budget.allowance(resident, resident)

    def resident_bytes(self) -> int:
        return sum(component_bytes(value) for _, cache in self._caches() for value in cache.values())

    def _caches(self) -> tuple[tuple[str, LRU], ...]:
        return (("transformer", self._transformers), ("vae", self._vaes), ("text encoders", self._text_encoders),
                ("auxiliary", self.auxiliary))

    def with_model(self, request: GenerationRequest) -> GenerationRequest:
        """The request with its model named: the tool's default (on disk first, then demo) when it names
        none, so the metadata records which model made the image."""
        return request if request.model else request.with_(model=default_model_for(request.tool, self.models_dir))

    def resolve(self, request: GenerationRequest) -> ModelSource:
        name = self.with_model(request).model
        try:
            return resolve_model(model=name, base_model=request.base_model, models_dir=self.models_dir,
                                 on_download=self._on_download)
        finally:
            self.download = None  # downloaded (or failed): what follows is not a download

    def model_for(self, source: ModelSource, dtype: mx.Dtype, name: str = "", quantize: int | None = None,
                  cancelled: Callable[[], bool] | None = None) -> FluxModel:
        """The FluxModel for a source, reusing every resident component whose files and settings are the same.

        Every weights file still to load is checked against its header first, so an incomplete file
        fails before anything is evicted. A cancel is honoured between components; what finished
        loading stays resident.
        """
        dtype_key = str(dtype)
        transformer_files = source.transformer_file or source.folder / "transformer"
        transformer_key = (content_key(transformer_files), dtype_key, quantize)
        vae_folder = source.component("vae")
        vae_key = (content_key(vae_folder), dtype_key)
        text_folders = [source.component(n) for n in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")]
        text_key = (content_key(*text_folders), dtype_key, quantize)

        pending = ((vae_key, self._vaes, [vae_folder]), (text_key, self._text_encoders, text_folders[:2]))
        for key, cache, paths in pending:
            if key not in cache:
                resident_bytes_of(weights_on_disk(*paths), dtype.size)  # raises for an incomplete file
        if transformer_key not in self._transformers:
            needed = resident_bytes_of(weights_on_disk(transformer_files), quantize / 8 if quantize else dtype.size)
            self._swap_transformer(transformer_key, f"transformer {transformer_files}", needed,
                                   lambda: quantize_model(loader.load_source_transformer(source, dtype), quantize))
        transformer = self._transformers.get(transformer_key)
        stop_if_cancelled(cancelled, "while loading the model (the transformer is loaded)")
        vae = self._vaes.get_or_create(vae_key, lambda: self._timed_load(
            "vae", f"VAE {vae_folder}", lambda: loader.load_source_vae(source, dtype), vae_key))
        stop_if_cancelled(cancelled, "while loading the model (transformer and VAE are loaded)")
        encoders = self._text_encoders.get_or_create(text_key, lambda: self._timed_load(
            "text_encoders", f"text encoders {text_folders[0].parent}",
            lambda: quantize_text_encoders(loader.load_source_text_encoders(source, dtype), quantize), text_key))
        return FluxModel(
            transformer=transformer,
            vae=vae,
            text_encoders=CachedTextEncoders(encoders, str(text_key), self._prompts, self.low_ram, quantize),
            scheduler_config=loader.load_scheduler_config(source),
            name=name,
            folder=source.folder,
            memory_allowance=self.free_bytes(),
        )

    def _swap_transformer(self, key, what: str, needed_bytes: int, load: Callable) -> None:
        previous = self._transformers.keys()[-1] if len(self._transformers) else None
        previous_label = self._labels.get(previous)
        started = time.perf_counter()
        self._make_room(needed_bytes)
        free = self.free_bytes()
        if needed_bytes > free:
            raise InvalidRequest(
                f"The transformer's weights need {gb_text(needed_bytes)} of memory but the memory budget of "
                f"{gb_text(self.budget.bytes)} leaves {gb_text(max(free, 0))} for them: quantize the model to 8 or "
                "4 bits, or raise the memory budget.")
        self._transformers.put(key, self._timed_load("transformer", what, load, key))
        if previous_label is not None:
            self.last_swap = {"from": previous_label, "to": what, "seconds": round(time.perf_counter() - started, 3)}

    def auxiliary_model(self, name: str, load: Callable[[Path], object], variant: str = ""):
        """A side model (depth estimator, ControlNet, Redux encoder) by alias, repo or path, kept in a small LRU.

        `variant` tells apart loads of the same files that differ (e.g. the dtype).
        """
        try:
            folder = resolve_name(name, self.models_dir, self._on_download)
        finally:
            self.download = None
        key = (content_key(folder), variant)
        return self.auxiliary.get_or_create(key, lambda: self._timed_load("auxiliary", f"{name} ({folder})",
                                                                          lambda: load(folder), key))

    def encoded_image(self, model: FluxModel, image: Image.Image, width: int, height: int) -> mx.array:
        """Packed VAE latents of an input image at a size, reused while the same VAE and image come back."""
        key = (id(model.vae), hashlib.sha256(image.tobytes()).hexdigest(), image.mode, image.size, width, height)
        cached = self._encoded_images.get(key)
        if cached is not None and cached[0]() is model.vae:  # the id alone could be a freed VAE's
            return cached[1]
        latents = encode_image(model, image, width, height)
        mx.eval(latents)
        self._encoded_images.put(key, (weakref.ref(model.vae), latents))
        return latents

    def estimate_depth(self, photo: Image.Image, name: str = "depth-estimator") -> Image.Image:
        from mflux_core.models.depth import DepthEstimator, depth_to_image

        estimator = self.auxiliary_model(name, lambda folder: DepthEstimator.from_folder(folder))
        return depth_to_image(estimator.estimate(photo))

    def previewer(self, model: FluxModel) -> LatentPreviewer:
        """The previewer of the model's VAE (refitted only when the VAE changes)."""
        if self._previewer is None or self._previewer.vae is not model.vae:
            self._previewer = LatentPreviewer(model.vae)
        return self._previewer

    def list_models(self) -> list[ModelEntry]:
        return list_models(self.models_dir)

    # ----- generating ----------------------------------------------------------------------

    def generate(
        self,
        request: GenerationRequest,
        report: Report | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerationResult:
        """Generate one image, reporting Downloading, Loading and Step events (with previews) to `report`;
        raises StudioError subclasses for anything the user can fix. events.stream() makes it an iterator."""
        request = self.with_model(request.validated())
        with self._lock, self._reporting(request.model, report, cancelled):
            return self._generate(request, report, cancelled)

    @contextmanager
    def session(self, request: GenerationRequest, cancelled: Callable[[], bool] | None = None,
                report: Report | None = None) -> Iterator[FluxModel]:
        """Exclusive use of the resident models, prepared for `request`: for jobs other than generate()
        (concept maps, training previews) that must not run beside a generation."""
        request = self.with_model(request.validated())
        with self._lock, self._reporting(request.model, report, cancelled):
            yield self._prepared_model(request, cancelled)

    @contextmanager
    def _reporting(self, model: str, report: Report | None, cancelled: Callable[[], bool] | None):
        """While a job runs: its loads and downloads go to `report` (without one, huggingface_hub draws its
        own progress bars)."""
        if report is not None:
            self._report, self._on_download = report, self._download_reporter(model, report, cancelled)
        try:
            yield
        finally:
            self._report = self._on_download = None
            self.download = None

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
        self._check_before_loading(source, request, dtype)
        model = self.model_for(source, dtype, name=request.model, quantize=request.quantize, cancelled=cancelled)
        self.lora_reports = self.loras.sync(model.transformer, request.lora_paths, request.lora_scales)
        return model

    def _check_before_loading(self, source: ModelSource, request: GenerationRequest, dtype: mx.Dtype) -> None:
        """Refuse, before loading anything, a request whose model and size cannot fit the budget even
        with nothing else resident."""
        weights = model_weight_bytes(source, dtype, request.quantize)
        resident = self.resident_bytes()
        plan = plan_from_files(source, request, dtype.size, weights, self.budget.reserved_bytes(resident),
                               self.budget.allowance(weights, resident))
        if plan is not None:
            self.budget.check(plan)

    def _plan_run(self, model: FluxModel, inputs: ToolInputs) -> MemoryPlan:
        """The run's plan against the budget, after evicting the transformers this run does not use if
        that makes it fit; refuses (InvalidRequest) when even that is not enough."""
        plan = self._run_plan(model, inputs)
        if not plan.fits(self.budget.bytes):
            for key, transformer in self._transformers.items():
                if transformer is not model.transformer:
                    self._transformers.pop(key)
            model.memory_allowance = self.free_bytes()
            plan = self._run_plan(model, inputs)
        return self.budget.check(plan)

    def _run_plan(self, model: FluxModel, inputs: ToolInputs) -> MemoryPlan:
        resident = self.resident_bytes()
        return plan_tool_run(model, inputs, resident, self.budget.reserved_bytes(resident))

    def _generate(self, request: GenerationRequest, report: Report | None,
                  cancelled: Callable[[], bool] | None) -> GenerationResult:
        started = time.perf_counter()
        mx.reset_peak_memory()
        others = mx.get_active_memory() - self.resident_bytes()  # MLX arrays outside the models, e.g. a caller's
        model = self._prepared_model(request, cancelled)
        tool = TOOL_MODULES[request.tool]
        inputs = tool.build_inputs(model, with_sequence_length(model, request), self)
        plan = self._plan_run(model, inputs)
        preview = self.step_preview(model) if report else None
        image = result_of(run_tool(model, inputs, cancelled, preview), report)
        self._record_memory(plan, others)
        request = inputs.request
        extras = {"steps": request.steps or model.default_steps, "guidance": inputs.conditioning.guidance}
        return GenerationResult(
            image=image,
            request=request,
            metadata=request_metadata(request, extras),
            text_chunks=png_text_chunks(request, extras),
            seconds=time.perf_counter() - started,
        )

    def _record_memory(self, plan: MemoryPlan, others: int) -> None:
        """The plan next to what MLX measured: its peak of active memory (weights and activations, not the
        cache) less the `others` bytes of MLX arrays that were not the models'."""
        self.last_memory = plan.against_measured(mx.get_peak_memory() - others)

    def step_preview(self, model: FluxModel) -> Preview:
        """Previews for the UI: the cheap linear one, or a full VAE decode every `full_preview_every` steps."""
        previewer = self.previewer(model)

        def preview(step: int, latents: mx.array, grid: tuple[int, int]) -> Image.Image:
            if self.full_preview_every and step % self.full_preview_every == 0:
                return decode_latents(model, latents, grid)
            return previewer(latents, grid)

        return preview

    # ----- status ----------------------------------------------------------------------------

    def status(self) -> dict:
        """For the UI: what is resident (least recently used first) and its memory, loads, the last
        swap, a download in progress, and whether a generation is running."""
        resident = [{"kind": kind, "name": self._labels.get(key, ""), "bytes": component_bytes(value)}
                    for kind, cache in self._caches() for key, value in cache.items()]
        return {
            "backend": backend_name(),
            "resident": resident,
            "resident_bytes": sum(r["bytes"] for r in resident),
            "memory_budget_bytes": self.budget.bytes,
            "last_memory": self.last_memory,
            "max_resident_transformers": self._transformers.capacity,
            "loads": dict(self.load_counts),
            "last_load": None if not self.events else {"what": self.events[-1].what,
                                                       "seconds": round(self.events[-1].seconds, 3)},
            "last_swap": self.last_swap,
            "download": self.download,
            "cached_prompts": len(self._prompts),
            "busy": self._lock.locked(),
            "loras": [report.summary() for report in self.lora_reports],
        }
