"""ResidentModels: the weights held in memory for every tool, kept within the memory budget.

All FLUX.1 variants (dev, Fill, Depth, Kontext, ...) share the VAE and text encoders, so switching
tools swaps only the transformer. Sameness is decided from the files (weights/fingerprint.py).
Transformers are kept in an LRU bounded by a count and the budget; one is evicted before the next
loads, and a bad file is found from its header before anything is evicted. Side models (ControlNet,
Redux, depth estimator) share a small LRU. Every cache is bounded. Before a run, its memory plan is
checked against the budget, evicting idle transformers first when that makes it fit.
"""

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx

from mflux_core import loader
from mflux_core.errors import Cancelled, InvalidRequest, ModelLoadError
from mflux_core.events import Loading, Report
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.lru import LRU
from mflux_core.memory import MemoryBudget, MemoryPlan, gb_text
from mflux_core.models.text_encoders import TextEncoders
from mflux_core.native_sizes import read_native_sizes
from mflux_core.planning import plan_from_files, plan_sized, plan_tool_run
from mflux_core.process_memory import return_free_memory
from mflux_core.prompt_cache import CachedTextEncoders
from mflux_core.request import GenerationRequest
from mflux_core.weights.fingerprint import fingerprint
from mflux_core.weights.quantize import quantize_text_encoders, text_encoder_bytes
from mflux_core.weights.resolve import ModelSource, resident_bytes_of
from mflux_core.weights.safetensors_io import weight_files


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


def encoders_label(clip: Path, t5: Path) -> str:
    """Where the text encoders are: a FLUX.1 folder, one all-in-one checkpoint, or two places (ComfyUI's two files,
    a folder's CLIP and a chosen T5 file)."""
    if clip == t5:
        return f"in {clip}"
    return str(clip.parent) if not clip.is_file() and t5 == clip.parent / "text_encoder_2" else f"{clip} + {t5}"


def side_model_files(path: Path) -> list[Path]:
    """The safetensors files of a side model: a file, a component folder, or a folder of component folders
    (Redux: image_encoder/, image_embedder/)."""
    path = Path(path)
    if path.is_file() or any(path.glob("*.safetensors")):
        return weights_on_disk(path)
    return weights_on_disk(*(sub for sub in sorted(path.iterdir()) if sub.is_dir() and any(sub.glob("*.safetensors"))))


def model_weight_bytes(source: ModelSource, dtype: mx.Dtype, quantize: int | None) -> int:
    """Memory a model's transformer, VAE and text encoders take once loaded, read from the file headers."""
    transformer = source.transformer_file or source.folder / "transformer"
    quantized = quantize / 8 if quantize else dtype.size
    encoders = sum(resident_bytes_of(weights_on_disk(source.component(name)), quantized, name)
                   for name in ("text_encoder", "text_encoder_2"))
    return (resident_bytes_of(weights_on_disk(transformer), quantized, "transformer") + encoders
            + resident_bytes_of(weights_on_disk(source.component("vae")), dtype.size, "vae"))


def stop_if_cancelled(cancelled: Callable[[], bool] | None, when: str) -> None:
    if cancelled is not None and cancelled():
        raise Cancelled(f"Stopped {when}.")


def names_folder(label: str, folder: Path) -> bool:
    """Whether a resident component's label (e.g. "transformer /m/dev/transformer 8-bit") names a file in
    `folder` or the folder itself (and not merely a folder whose name starts the same, /m/dev-8bit)."""
    return re.search(re.escape(str(folder)) + r"(?=$|[\s)/])", label) is not None


SIDE_RUN_REMEDIES = "use a smaller image, unload the models, or close other tools"  # quantizing does not shrink it


class ResidentModels:
    def __init__(self, budget: MemoryBudget, max_transformers: int = 1, low_ram: bool = False,
                 prompt_cache_size: int = 16):
        self.budget = budget
        self.low_ram = low_ram
        self._labels: dict[object, str] = {}  # cache key (content fingerprints) -> what was loaded, for status()
        self._transformers: LRU = LRU(max_transformers, on_evict=self._evicted)
        self._vaes: LRU = LRU(2, on_evict=self._evicted)
        self._text_encoders: LRU = LRU(2, on_evict=self._evicted)
        self._prompts: LRU = LRU(prompt_cache_size)  # (encoders, prompt, length) -> embeddings, 8 MB at full size
        self.auxiliary = LRU(4, on_evict=self._evicted)  # ControlNet, Redux, depth estimator
        self.load_counts: dict[str, int] = {"transformer": 0, "vae": 0, "text_encoders": 0}
        self.events: list[LoadEvent] = []
        self.last_swap: dict | None = None  # the last transformer change: from, to, seconds
        self.last_memory: dict | None = None  # the last run's plan and measured peak
        self.report: Report | None = None  # the running job's, told what loads

    # ----- loading -------------------------------------------------------------------------

    def _timed_load(self, kind: str, what: str, load: Callable, key=None):
        if self.report is not None:
            self.report(Loading(what))
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

    def unload(self, folder: Path) -> int:
        """Drop every resident component loaded from `folder` (before the folder is deleted); returns how many."""
        dropped = [(cache, key) for _, cache in self._caches() for key in cache.keys()
                   if names_folder(self._labels.get(key, ""), folder)]
        for cache, key in dropped:
            cache.pop(key)
        return len(dropped)

    def unload_all(self) -> int:
        """Drop every resident component and the cached prompt embeddings, hand their memory back to the system;
        the bytes they held."""
        freed = self.resident_bytes()
        for _, cache in self._caches():
            cache.clear()
        self._prompts.clear()
        mx.clear_cache()
        return_free_memory()
        return freed

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
            needed = resident_bytes_of(weights_on_disk(transformer_files), quantize / 8 if quantize else dtype.size,
                                       "transformer")
            label = f"transformer {transformer_files}" + (f" {quantize}-bit" if quantize else "")
            self._swap_transformer(transformer_key, label, needed,
                                   lambda: loader.load_running_transformer(source, dtype, quantize))
        transformer = self._transformers.get(transformer_key)
        stop_if_cancelled(cancelled, "while loading the model (the transformer is loaded)")
        vae = self._vaes.get_or_create(vae_key, lambda: self._timed_load(
            "vae", f"VAE {vae_folder}", lambda: loader.load_source_vae(source, dtype), vae_key))
        stop_if_cancelled(cancelled, "while loading the model (transformer and VAE are loaded)")
        encoders = self._text_encoders.get_or_create(text_key, lambda: self._timed_load(
            "text_encoders", "text encoders " + encoders_label(*text_folders[:2]),
            lambda: quantize_text_encoders(loader.load_source_text_encoders(source, dtype, quantize), quantize),
            text_key))
        return FluxModel(
            transformer=transformer,
            vae=vae,
            text_encoders=CachedTextEncoders(encoders, str(text_key), self._prompts, self.low_ram, quantize),
            scheduler_config=loader.load_scheduler_config(source),
            name=name,
            folder=source.folder,
            memory_allowance=self.free_bytes(),
            native_sizes=read_native_sizes(source.folder),
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

    def side_model(self, folder: Path, label: str, load: Callable[[Path], object], variant: str = "",
                   beside: FluxModel | None = None, check: Callable[[object], None] | None = None):
        """A side model (depth estimator, ControlNet, Redux encoder) loaded from `folder` once, kept in a small LRU.

        `variant` tells apart loads of the same files that differ (e.g. the dtype), and is shown with it. With
        `beside` (the model it will run with), its weights, read from the file headers in that model's dtype, are
        checked against the budget before loading: other transformers are evicted if that makes them fit, else it
        is refused. `check` refuses it for this run (raising); one loaded for this run is then not kept.
        """
        key = (content_key(folder), variant)
        loaded_now = self.auxiliary.get(key) is None
        if beside is not None and loaded_now:
            self._room_for_side_model(label, resident_bytes_of(side_model_files(folder), beside.dtype.size), beside)
        what = f"{label} {variant} ({folder})" if variant else f"{label} ({folder})"
        value = self.auxiliary.get_or_create(key, lambda: self._timed_load("auxiliary", what, lambda: load(folder),
                                                                           key))
        if check is not None:
            try:
                check(value)
            except Exception:
                if loaded_now:
                    self.auxiliary.pop(key)
                raise
        return value

    def _room_for_side_model(self, label: str, needed_bytes: int, beside: FluxModel) -> None:
        for key, transformer in self._transformers.items():
            if needed_bytes <= self.free_bytes():
                return
            if transformer is not beside.transformer:
                self._transformers.pop(key)
        if needed_bytes > self.free_bytes():
            raise InvalidRequest(
                f"{label}'s weights need {gb_text(needed_bytes)} of memory but the memory budget of "
                f"{gb_text(self.budget.bytes)} leaves {gb_text(max(self.free_bytes(), 0))} beside the models in use: "
                "quantize (-q 8 or 4), use fewer ControlNets at once, or raise the memory budget.")

    # ----- memory ----------------------------------------------------------------------------

    def check_before_loading(self, source: ModelSource, request: GenerationRequest, dtype: mx.Dtype) -> None:
        """Refuse, before loading anything, a request whose model and size cannot fit the budget even
        with nothing else resident."""
        weights = model_weight_bytes(source, dtype, request.quantize)
        resident = self.resident_bytes()
        plan = plan_from_files(source, request, dtype.size, weights, self.budget.reserved_bytes(resident),
                               self.budget.allowance(weights, resident))
        if plan is not None:
            self.budget.check(plan)

    def plan_run(self, model: FluxModel, inputs: ToolInputs) -> MemoryPlan:
        """The run's plan against the budget, after evicting the transformers this run does not use if
        that makes it fit; refuses (InvalidRequest) when even that is not enough."""
        return self._fitted(model, lambda resident, reserved: plan_tool_run(model, inputs, resident, reserved))

    def check_size(self, model: FluxModel, request: GenerationRequest, canvas: tuple[int, int] | None) -> None:
        """As plan_run, once the tool has decided the size and before it reads its inputs at it (planning.plan_sized):
        an outpaint canvas past the budget is refused before it is encoded."""
        self._fitted(model, lambda resident, reserved: plan_sized(model, request, canvas, resident, reserved))

    def _fitted(self, model: FluxModel, plan_of: Callable[[int, int], MemoryPlan]) -> MemoryPlan:
        plan = self._planned(plan_of)
        if not plan.fits(self.budget.bytes):
            for key, transformer in self._transformers.items():
                if transformer is not model.transformer:
                    self._transformers.pop(key)
            model.memory_allowance = self.free_bytes()
            plan = self._planned(plan_of)
        return self.budget.check(plan)

    def _planned(self, plan_of: Callable[[int, int], MemoryPlan]) -> MemoryPlan:
        resident = self.resident_bytes()
        return plan_of(resident, self.budget.reserved_bytes(resident))

    def check_side_run(self, what: str, phase: str, peak_bytes: int) -> None:
        """Refuse (InvalidRequest) a side model's run (e.g. estimating a depth map) whose `peak_bytes` would not
        fit the budget beside what is resident."""
        resident = self.resident_bytes()
        self.budget.check(MemoryPlan(what, resident, ((phase, peak_bytes),), self.budget.reserved_bytes(resident),
                                     remedies=SIDE_RUN_REMEDIES))

    def record_memory(self, plan: MemoryPlan, others: int) -> None:
        """The plan next to what MLX measured: its peak of active memory (weights and activations, not the
        cache) less the `others` bytes of MLX arrays that were not the models'."""
        self.last_memory = plan.against_measured(mx.get_peak_memory() - others)

    # ----- status ----------------------------------------------------------------------------

    def status(self) -> dict:
        """What is resident (least recently used first) and its memory, loads, the last swap and memory plan."""
        resident = [{"kind": kind, "name": self._labels.get(key, ""), "bytes": component_bytes(value)}
                    for kind, cache in self._caches() for key, value in cache.items()]
        return {
            "resident": resident,
            "resident_bytes": sum(r["bytes"] for r in resident),
            "memory_budget_bytes": self.budget.bytes,
            "last_memory": self.last_memory,
            "max_resident_transformers": self._transformers.capacity,
            "loads": dict(self.load_counts),
            "last_load": None if not self.events else {"what": self.events[-1].what,
                                                       "seconds": round(self.events[-1].seconds, 3)},
            "last_swap": self.last_swap,
            "cached_prompts": len(self._prompts),
        }
