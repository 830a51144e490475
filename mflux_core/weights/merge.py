"""Merge FLUX.1 transformers as A1111's Checkpoint Merger does, into a new model folder (weights/save.py writes it):

    weighted sum     A * (1 - M) + B * M          (e.g. FLUX.1-dev with schnell: fewer steps, dev's look)
    add difference   A + (B - C) * M              (e.g. FLUX.1-Fill + (a finetune - dev): the finetune inpaints)

A defines the result: its other components (VAE, text encoders, scheduler) are copied, a tensor only A has is
kept (dev's guidance embedder beside schnell), one only B or C has is left out. Where A's tensor takes more inputs
than the others' (Fill's image input: 384 channels against 64) the shared leading columns are merged and the rest
kept, as A1111 merges an inpainting model's extra channels. Each merged tensor is computed in float32.

The transformers are read lazily, one tensor of each at a time (MLX loads a safetensors file as its tensors are
used), so a merge holds about one transformer, the result, in the output's dtype (and T5 while the folder is
written, when T5 is quantized or cast rather than copied): refused in one sentence when that would not fit the
memory budget. Quantized inputs are refused (merge
full weights, then quantize the result).
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mflux_core import loader
from mflux_core.errors import InvalidRequest
from mflux_core.memory import gb_text
from mflux_core.settings_schema import ADD_DIFFERENCE, MERGE_METHODS, WEIGHTED_SUM
from mflux_core.weights.bnb_layers import has_bnb_layers
from mflux_core.weights.gguf_file import check_not_gguf
from mflux_core.weights.quantize import quantized_bits
from mflux_core.weights.resolve import ModelSource, resident_bytes_of, resolve_model, resolve_name, single_file_names
from mflux_core.weights.split_base import bundles_its_base
from mflux_core.weights.safetensors_io import weight_files
from mflux_core.weights.save import t5_copied_as_is

MAX_MULTIPLIER = 4  # A1111's slider stops at 1; add difference is often pushed past it


@dataclass(frozen=True)
class MergeReport:
    merged: int  # tensors computed from A and B (and C)
    kept: int  # tensors only A has, kept as they are
    widened: int  # of the merged, those where A takes more inputs: its extra columns kept
    left_out: int  # tensors A does not have

    def summary(self) -> str:
        """'110 tensors merged, 2 only in A, kept': the merged count, and the others that are not 0."""
        counts = ((self.widened, "of them on A's leading input columns only"), (self.kept, "only in A, kept"),
                  (self.left_out, "not in A, left out"))
        return ", ".join([f"{self.merged} tensors merged", *(f"{count} {what}" for count, what in counts if count)])


def model_sources(names: list[str], models_dir: Path | None, base_model: str | None = None,
                  whole_first: bool = True) -> list[tuple[str, ModelSource]]:
    """(name, source) of the models a merge or an extraction reads: names in the models folder, aliases, repo ids,
    folders, or single transformer files (ComfyUI's finetunes). With `whole_first` the first model's other
    components are written too (a merge's A), so a single file there takes them from `base_model` (an all-in-one
    checkpoint from itself)."""
    sources = []
    for index, name in enumerate(names):
        target = resolve_name(name, models_dir)
        check_not_gguf(target, "a merge or a LoRA extraction")
        if target.is_file() and has_bnb_layers(single_file_names(target)):  # refused before minutes of decoding
            raise InvalidRequest(f"{name} holds bitsandbytes (NF4 or int8) layers: a merge or a LoRA extraction "
                                 "needs float weights; use its safetensors original.")
        if target.is_file() and (index > 0 or not whole_first):  # only its transformer is read
            sources.append((name, ModelSource(folder=None, transformer_file=target)))
        elif target.is_file() and base_model is None and not bundles_its_base(target):
            raise InvalidRequest(f"{name} is a single transformer file: model A needs a model folder (its VAE, text "
                                 "encoders and scheduler are the result's) or a base model beside it; it can be B "
                                 "or C as it is.")
        else:
            sources.append((name, resolve_model(path=str(target), base_model=base_model, models_dir=models_dir)))
    return sources


def transformer_bytes(source: ModelSource, dtype: mx.Dtype) -> int:
    files = [source.transformer_file] if source.transformer_file else weight_files(source.folder / "transformer")
    return resident_bytes_of(files, dtype.size, "transformer")


def check_merge(method: str, multiplier: float, sources: list[tuple[str, ModelSource]], dtype: mx.Dtype,
                free_bytes: int, bits: int | None = None) -> None:
    """Refuse, before anything loads: an unknown method, a multiplier out of range, the wrong number of models, or
    a merged model that would not fit `free_bytes` while it is written."""
    if method not in MERGE_METHODS:
        raise InvalidRequest(f"The merge method must be one of {', '.join(MERGE_METHODS)}, not {method!r}.")
    if not -MAX_MULTIPLIER <= multiplier <= MAX_MULTIPLIER:  # NaN fails this too
        raise InvalidRequest(f"The multiplier M must be a number from {-MAX_MULTIPLIER} to {MAX_MULTIPLIER}.")
    if len(sources) != (3 if method == ADD_DIFFERENCE else 2):
        raise InvalidRequest("Add difference takes three models: A + (B - C) x M." if method == ADD_DIFFERENCE
                             else "A weighted sum takes two models, A and B (and no C): A x (1 - M) + B x M.")
    primary = sources[0][1]
    t5 = 0 if t5_copied_as_is(primary, dtype, bits) else resident_bytes_of(  # or written beside the transformer
        weight_files(primary.component("text_encoder_2")), dtype.size, "text_encoder_2")
    needed = transformer_bytes(primary, dtype) + t5
    if needed > free_bytes:
        smaller = ", or merge in bfloat16" if dtype.size > 2 else ""
        what = "its transformer and T5" if t5 else "its transformer"
        raise InvalidRequest(f"Writing the merged model needs about {gb_text(needed)} ({what}) but the memory budget "
                             f"leaves {gb_text(max(free_bytes, 0))}: close other tools or raise the memory "
                             f"budget{smaller}.")


def lazy_transformers(sources: list[tuple[str, ModelSource]], dtype: mx.Dtype,
                      on_progress: Callable[[int, int, str], None]) -> list[nn.Module]:
    """The sources' transformers (models A, B, C), their weights read from disk as they are used; refused when one
    is quantized."""
    loaded = []
    for index, (name, source) in enumerate(sources):
        on_progress(0, 0, f"reading model {'ABC'[index]} ({name})")
        transformer = loader.load_source_transformer(source, dtype, evaluated=False)
        if quantized_bits(transformer):
            raise InvalidRequest(f"{name} is quantized: use full (unquantized) models, then quantize the result.")
        loaded.append(transformer)
    return loaded


def merge_transformers(method: str, multiplier: float, sources: list[tuple[str, ModelSource]], dtype: mx.Dtype,
                       on_progress: Callable[[int, int, str], None] | None = None) -> tuple[nn.Module, MergeReport]:
    """A's transformer with its weights merged from B (and C) by `method` (check_merge first)."""
    on_progress = on_progress or (lambda done, total, what: None)
    loaded = lazy_transformers(sources, dtype, on_progress)
    primary = loaded[0]
    tensors = [dict(tree_flatten(other.parameters())) for other in loaded[1:]]
    del loaded  # B's (and C's) tensors now live in `tensors` only: each is read, merged, and let go
    own = dict(tree_flatten(primary.parameters()))
    merged = kept = widened = 0
    keys = list(own)
    for done, key in enumerate(keys, start=1):
        found = [tensor.pop(key, None) for tensor in tensors]
        if any(value is None for value in found):
            kept += 1
            continue
        value, wider = _merged(key, own.pop(key), found, method, multiplier, [name for name, _ in sources])
        mx.eval(value)
        primary.update(tree_unflatten([(key, value)]))
        merged, widened = merged + 1, widened + wider
        on_progress(done, len(keys), "tensors merged")
    left_out = len(set().union(*tensors))  # what is left: the tensors A does not have
    return primary, MergeReport(merged, kept, widened, left_out)


def _merged(key: str, a: mx.array, others: list[mx.array], method: str, multiplier: float,
            names: list[str]) -> tuple[mx.array, bool]:
    """One tensor of the result, and whether A's extra input columns were kept beside the merged ones."""
    width = others[0].shape[-1]
    for name, other in zip(names[1:], others):
        if other.shape != others[0].shape or other.shape[:-1] != a.shape[:-1] or width > a.shape[-1]:
            raise InvalidRequest(f"{names[0]} and {name} are different architectures: their {key} is "
                                 f"{'x'.join(map(str, a.shape))} against {'x'.join(map(str, other.shape))}.")
    shared = a[..., :width].astype(mx.float32)
    b = others[0].astype(mx.float32)
    if method == WEIGHTED_SUM:
        result = shared * (1 - multiplier) + b * multiplier
    else:
        result = shared + (b - others[1].astype(mx.float32)) * multiplier
    result = result.astype(a.dtype)
    if width == a.shape[-1]:
        return result, False
    return mx.concatenate([result, a[..., width:]], axis=-1), True
