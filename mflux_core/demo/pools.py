"""Example pools: many dataset examples rendered once (in parallel) and kept as arrays.

Training draws its batches from these pools with a per-step generator, so rendering costs
nothing per step and the data of step k does not depend on earlier steps.
"""

from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np

from mflux_core.demo import dataset

Size = tuple[int, int]  # (width, height)

EXAMPLE_FUNCTIONS = {
    "text_to_image": dataset.text_to_image_example,
    "fill": dataset.fill_example,
    "depth": dataset.depth_example,
    "canny": dataset.canny_example,
    "kontext": dataset.kontext_example,
    "upscale": dataset.upscale_example,
}


def _render_chunk(kind: str, seed: int, start: int, stop: int, size: Size, held_out: bool) -> dict[str, list]:
    make = EXAMPLE_FUNCTIONS[kind]
    columns: dict[str, list] = {}
    for index in range(start, stop):
        example = make(seed, index, size[0], held_out, height=size[1])
        for field in fields(example):
            value = getattr(example, field.name)
            if isinstance(value, (np.ndarray, str)):
                columns.setdefault(field.name, []).append(value)
    return columns


def render_pool(kind: str, seed: int, count: int, size: Size = (64, 64), held_out: bool = False,
                workers: int = 1) -> dict[str, np.ndarray]:
    """`count` examples of a kind at `size` (width, height) as stacked arrays (text fields as arrays of str);
    order is by index."""
    chunk = max(1, -(-count // (4 * max(workers, 1))))
    bounds = [(start, min(start + chunk, count)) for start in range(0, count, chunk)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, *zip(*[(kind, seed, a, b, size, held_out) for a, b in bounds])))
    else:
        parts = [_render_chunk(kind, seed, a, b, size, held_out) for a, b in bounds]
    return {name: np.stack([v for part in parts for v in part[name]]) if not isinstance(parts[0][name][0], str)
            else np.array([v for part in parts for v in part[name]]) for name in parts[0]}


def size_suffix(size: Size) -> str:
    """What a cached file's name gains for a size: nothing at 64x64, so the 64 px recipe's names are unchanged."""
    return "" if tuple(size) == (64, 64) else f"-{size[0]}x{size[1]}"


def cached_pool(folder: Path, kind: str, seed: int, count: int, workers: int = 1, **kwargs) -> dict[str, np.ndarray]:
    """render_pool, saved to / read from `folder` so later stages and resumed runs reuse it."""
    path = Path(folder) / f"pool-{kind}-{seed}-{count}{size_suffix(kwargs.get('size', (64, 64)))}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    pool = render_pool(kind, seed, count, workers=workers, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **pool)
    return pool
