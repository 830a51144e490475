"""LoRA files kept in memory (bounded) and the step that makes a resident transformer carry exactly
the LoRAs a request asks for: new ones are added, changed scales rescaled, the rest removed (their text encoder
adapters go with the request's text encoders, lora/text_encoders.py). The base weights are never reloaded."""

import logging
from pathlib import Path
from typing import Sequence

import mlx.nn as nn

from mflux_core.errors import InvalidRequest
from mflux_core.lora.apply import LoraReport, applied_loras, attach, check_lora, remove_lora, set_lora_scale
from mflux_core.lora.formats import TRANSFORMER, LoraFile, component_of, load_lora_file
from mflux_core.lora.library import resolve_lora_path
from mflux_core.lora.text_encoders import TextEncoderAdapters
from mflux_core.lru import LRU
from mflux_core.prompt_cache import CachedTextEncoders
from mflux_core.request import check_finite

log = logging.getLogger(__name__)


def requested_loras(paths: Sequence[str], scales: Sequence[float],
                    text_encoder_scales: Sequence[float] = ()) -> list[tuple[str, float, float]]:
    """(name as typed, scale, scale of its text-encoder part) for each LoRA; scales default to 1.0, text-encoder
    scales to the scales."""
    for given, what in ((scales, "scales: give one scale per LoRA."),
                        (text_encoder_scales, "text encoder scales: give one per LoRA (or none: the LoRA scales).")):
        if given and len(given) != len(paths):
            raise InvalidRequest(f"{len(paths)} LoRA paths but {len(given)} {what}")
    scales = [check_finite(scale, "A LoRA scale") for scale in scales] or [1.0] * len(paths)
    encoder_scales = [check_finite(scale, "A LoRA text encoder scale") for scale in text_encoder_scales] or scales
    return list(zip(paths, scales, encoder_scales))


class ResidentLoras:
    def __init__(self, models_dir: Path | None = None, capacity: int = 8):
        self.models_dir = models_dir  # its loras/ is part of the LoRA library names are looked up in
        self._files: LRU = LRU(capacity)
        self.reports: list[LoraReport] = []  # the last sync's LoRAs: matched / total keys each

    def clear(self) -> None:
        """Forget the LoRA files read (their weights); the next request reads them again."""
        self._files.clear()
        self.reports = []

    def read(self, path: Path) -> tuple[str, LoraFile]:
        """(adapter name, file) for a resolved path; the name changes when the file does."""
        stat = path.stat()
        name = f"{path}@{stat.st_mtime_ns}:{stat.st_size}"
        return name, self._files.get_or_create(name, lambda: load_lora_file(path))

    def sync(self, transformer: nn.Module, paths: Sequence[str], scales: Sequence[float],
             text_encoders: CachedTextEncoders | None = None,
             text_encoder_scales: Sequence[float] = ()) -> list[LoraReport]:
        """Make `transformer` carry exactly these LoRAs at these scales, and `text_encoders` their adapters for the
        text encoders (put on when a prompt is encoded) at their text-encoder scales (default: the scales); one
        report per LoRA, in order."""
        wanted: dict[str, tuple[LoraFile, float, float]] = {}
        for typed, scale, encoder_scale in requested_loras(paths, scales, text_encoder_scales):
            name, lora = self.read(resolve_lora_path(typed, self.models_dir))
            _, previous, previous_encoder = wanted.get(name, (lora, 0.0, 0.0))
            wanted[name] = (lora, previous + scale, previous_encoder + encoder_scale)  # the same file twice adds up
        shapes = text_encoders.encoders.linear_shapes if text_encoders is not None else None
        checked = [(name, scale, encoder_scale, *check_lora(transformer, lora, scale, shapes))
                   for name, (lora, scale, encoder_scale) in wanted.items()]
        for name in applied_loras(transformer).keys() - wanted.keys():
            remove_lora(transformer, name)
        current = applied_loras(transformer)
        for name, scale, _, fitting, report in checked:
            if name not in current:
                attach(transformer, {path: weights for path, weights in fitting.items()
                                     if component_of(path) == TRANSFORMER}, name, scale)
                if not report.complete:
                    log.warning(report.summary())
            elif current[name] != scale:
                set_lora_scale(transformer, name, scale)
        if text_encoders is not None:
            text_encoders.adapters = TextEncoderAdapters.of([(name, encoder_scale, fitting)
                                                             for name, _, encoder_scale, fitting, _ in checked])
        self.reports = [report for *_, report in checked]
        return self.reports
