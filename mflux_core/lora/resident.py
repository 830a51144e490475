"""LoRA files kept in memory (bounded) and the step that makes a resident transformer carry exactly
the LoRAs a request asks for: new ones are added, changed scales rescaled, the rest removed.
The base weights are never reloaded."""

from pathlib import Path
from typing import Sequence

import mlx.nn as nn

from mflux_core.errors import InvalidRequest
from mflux_core.lora.apply import LoraReport, add_lora, applied_loras, check_lora, remove_lora, set_lora_scale
from mflux_core.lora.formats import LoraFile, load_lora_file
from mflux_core.lora.library import resolve_lora_path
from mflux_core.lru import LRU
from mflux_core.request import check_finite


def requested_loras(paths: Sequence[str], scales: Sequence[float]) -> list[tuple[str, float]]:
    """(name as typed, scale) pairs; scales default to 1.0."""
    if scales and len(scales) != len(paths):
        raise InvalidRequest(f"{len(paths)} LoRA paths but {len(scales)} scales: give one scale per LoRA.")
    return list(zip(paths, [check_finite(scale, "A LoRA scale") for scale in scales] or [1.0] * len(paths)))


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

    def sync(self, transformer: nn.Module, paths: Sequence[str], scales: Sequence[float]) -> list[LoraReport]:
        """Make `transformer` carry exactly these LoRAs at these scales; one report per LoRA, in order."""
        wanted: dict[str, tuple[LoraFile, float]] = {}
        for typed, scale in requested_loras(paths, scales):
            name, lora = self.read(resolve_lora_path(typed, self.models_dir))
            previous = wanted.get(name, (lora, 0.0))[1]
            wanted[name] = (lora, previous + scale)  # the same file twice adds up
        for name in applied_loras(transformer).keys() - wanted.keys():
            remove_lora(transformer, name)
        current = applied_loras(transformer)
        reports = []
        for name, (lora, scale) in wanted.items():
            if name not in current:
                reports.append(add_lora(transformer, lora, name, scale))
                continue
            if current[name] != scale:
                set_lora_scale(transformer, name, scale)
            reports.append(check_lora(transformer, lora, scale)[1])
        self.reports = reports
        return reports
