"""X/Y/Z plots: one to three axes, each a setting and its values, and the request of every cell.

Values are written as A1111 writes them: a list (`2.5, 3.5`; a quoted value keeps its commas), a range (`1-5`,
steps of 1), a range with a step (`0.5-1.0 (+0.25)`) or with a count (`1-10 [4]`), or several (`1-3, 7`).
"Prompt S/R" replaces its first value in the prompt by each value in turn (the first cell keeps the prompt as it
is); "Prompt order" puts its terms, found in the prompt, in every order in turn (`cat, hat, red`: six cells).
Sampler and schedule values are names or A1111's labels (`euler, dpm++2m` or `Euler, DPM++ 2M`; `karras, beta`). LoRA
values are LoRA names (or files) and `none`: each cell has that LoRA in place of the first one, at its scale
(a LoRA scale axis scales it, and leaves the `none` cells alone). VAE / Text Encoder values are files of the
models folder (`t5xxl_fp16, t5xxl_fp8_e4m3fn`; `clip_l_ft + t5xxl_fp8_e4m3fn` for two in one cell; `none`: the
model's own): each cell has them in place of the request's own choice.
A prompt matrix (A1111's script: `a cat|in red|at night`) is a plot whose X and Y axes say which of the
optional parts the prompt gets.
Every cell is a GenerationRequest validated before anything runs; the cells are ordered so that
cells of one model run one after another, without a reload between them.
"""

import csv
import io
import itertools
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.images.grid import labelled_grid
from mflux_core.request import MAX_SEED, GenerationRequest, check_finite, hires_size
from mflux_core.settings_schema import SAMPLER_LABELS, SCHEDULE_LABELS
from mflux_core.styles import Style, style_named, styles_merged

MAX_CELLS = 100  # cells in one plot, unless the caller allows more
MAX_AXIS_VALUES = 10_000  # values one range may spell out, whatever the cell limit
MAX_GRID_PIXELS = 200 * 10**6  # A1111's img_max_size_mp default: a grid's size, and with it its cells' memory
NATIVE_GUESS = 1024  # a cell size a request leaves to the model, taken as FLUX.1's for the grid's check
RANGE = re.compile(r"^\s*(-?[\d.]+)\s*-\s*(-?[\d.]+)\s*(?:\(\s*([+-]?[\d.]+)\s*\)|\[\s*(\d+)\s*\])?\s*$")


def _number(text: str, whole: bool, what: str):
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(f"{what}: {text.strip()[:40]!r} is not a number.") from None
    check_finite(value, what)
    if whole and not value.is_integer():
        raise InvalidRequest(f"{what}: {text.strip()} is not a whole number.")
    return int(value) if whole else value


def check_axis_length(count: int, text: str, what: str) -> None:
    """Refuse a range of more values than an axis takes before making them (a typo's billion would fill memory)."""
    if count > MAX_AXIS_VALUES:
        raise InvalidRequest(f"{what}: the range {text.strip()[:40]!r} has {count:,} values, more than the "
                             f"{MAX_AXIS_VALUES:,} an axis takes.")


def _range(item: str, whole: bool, what: str) -> list | None:
    """One item's values when it is a range, as A1111 spells them out (None when it is not one): every whole number
    or a step of 1, or the step in brackets, ends included; `[count]` values spaced evenly, whole ones cut down as
    A1111's int(x) cuts them (1-10 [5] is 1, 3, 5, 7, 10)."""
    match = RANGE.match(item)
    if match is None:
        return None
    start, end = _number(match.group(1), whole, what), _number(match.group(2), whole, what)
    if match.group(4):
        count = _number(match.group(4), True, what)
        if count < 1:
            raise InvalidRequest(f"{what}: a range needs at least one value.")
        check_axis_length(count, item, what)
        values = [start + (end - start) * i / max(count - 1, 1) for i in range(count)]
        return [int(v) if whole else round(v, 6) for v in values]
    step = _number(match.group(3), whole, what) if match.group(3) else 1
    if step == 0 or (end - start) * step < 0:
        raise InvalidRequest(f"{what}: the step {step:g} does not lead from {start:g} to {end:g}.")
    count = int((end - start) / step + 1e-9) + 1
    check_axis_length(count, item, what)
    return [start + i * step if whole else round(start + i * step, 6) for i in range(count)]


def _numbers(text: str, whole: bool, what: str) -> tuple:
    """A1111's numbers: items of numbers and ranges, one after another (`1-3, 7`: 1, 2, 3, 7)."""
    values = []
    for item in text_values(text, what):
        spelled = _range(item, whole, what)
        values.extend(spelled if spelled is not None else [_number(item, whole, what)])
        check_axis_length(len(values), text, what)
    return tuple(values)


def text_values(text: str, what: str = "") -> tuple[str, ...]:
    """The comma-separated items, read as A1111 reads them (CSV): a quoted item keeps its commas."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return tuple(item.strip() for row in rows for item in row if item.strip())


def values_text(values) -> str:
    """Values written back as an axis reads them: quoted where one holds a comma or a quote."""
    return ", ".join('"' + v.replace('"', '""') + '"' if any(c in v for c in ',"') else v for v in map(str, values))


def _size(text: str, what: str) -> tuple[tuple[int, int], ...]:
    sizes = []
    for part in text_values(text, what):
        match = re.fullmatch(r"([0-9]{1,18})\s*[xX]\s*([0-9]{1,18})", part)  # past 18 digits: no size
        if match is None:
            raise InvalidRequest(f"{what}: {part[:40]!r} is not a size like 512x768.")
        sizes.append((int(match.group(1)), int(match.group(2))))
    return tuple(sizes)


def _lora_scale(request: GenerationRequest, value: float) -> GenerationRequest:
    """The first LoRA at scale `value`, its text-encoder part too (as one number in A1111's tag sets both)."""
    if not request.lora_paths:
        raise InvalidRequest("The LoRA scale axis needs a LoRA: add one first.")
    scales = request.lora_scales or (1.0,) * len(request.lora_paths)
    text_encoder = request.lora_text_encoder_scales
    return request.with_(lora_scales=(value, *scales[1:]),
                         lora_text_encoder_scales=(value, *text_encoder[1:]) if text_encoder else ())


NO_LORA = "none"


def _lora(request: GenerationRequest, value: str) -> GenerationRequest:
    """The first LoRA swapped for `value` at the first LoRA's scales (1 without one); `none` drops it."""
    scales = request.lora_scales or (1.0,) * len(request.lora_paths)
    text_encoder = request.lora_text_encoder_scales
    if value == NO_LORA:
        return request.with_(lora_paths=request.lora_paths[1:], lora_scales=scales[1:],
                             lora_text_encoder_scales=text_encoder[1:])
    if not request.lora_paths:
        return request.with_(lora_paths=(value,), lora_scales=(1.0,), lora_text_encoder_scales=())
    return request.with_(lora_paths=(value, *request.lora_paths[1:]), lora_scales=scales)


def _lora_names(text: str, what: str) -> tuple[str, ...]:
    return tuple(NO_LORA if name.lower() == NO_LORA else name for name in text_values(text, what))


NO_STYLE = "none"


def _style_names(text: str, what: str) -> tuple[str, ...]:
    return tuple(NO_STYLE if name.lower() == NO_STYLE else name for name in text_values(text, what))


def _prompt_replace(request: GenerationRequest, value: str, search: str) -> GenerationRequest:
    """A1111's Prompt S/R: the search term replaced in the prompt and in the negative prompt."""
    if search not in request.prompt and search not in request.negative_prompt:
        raise InvalidRequest(f"Prompt S/R: neither the prompt nor the negative prompt contains {search!r}, the axis's "
                             "first value.")
    return request.with_(prompt=request.prompt.replace(search, value),
                         negative_prompt=request.negative_prompt.replace(search, value))


def _orders(text: str, what: str) -> tuple[tuple[str, ...], ...]:
    """A1111's Prompt order values: every order of the terms (refused before making them when there are too many)."""
    terms = text_values(text, what)
    if math.factorial(min(len(terms), 20)) > MAX_AXIS_VALUES:  # min: 20 terms are past any limit already
        raise InvalidRequest(f"{what}: {len(terms)} terms have more orders than the {MAX_AXIS_VALUES:,} values an axis "
                             "takes: use fewer terms.")
    return tuple(itertools.permutations(terms))


def _prompt_order(request: GenerationRequest, order: tuple[str, ...]) -> GenerationRequest:
    """A1111's Prompt order: the terms, where the prompt has them, swapped into `order` (the first place the prompt
    has one of them gets order[0], and so on; the text between them stays)."""
    places = sorted((request.prompt.find(term), term) for term in order)
    missing = [term for place, term in places if place < 0]
    if missing:
        raise InvalidRequest(f"Prompt order: the prompt does not contain {missing[0][:80]!r}.")
    between, rest = [], request.prompt
    for _, term in places:
        place = rest.find(term)
        if place < 0:
            raise InvalidRequest(f"Prompt order: {term[:80]!r} overlaps another of the axis's terms in the prompt.")
        between.append(rest[:place])
        rest = rest[place + len(term):]
    return request.with_(prompt="".join(text + term for text, term in zip(between, order)) + rest)


def _named(labels: dict[str, str], aliases: dict[str, str] | None = None) -> Callable[[str, str], tuple[str, ...]]:
    """A parser of names (`dpm++2m`), their labels (`DPM++ 2M`) or `aliases`, any case, into names."""
    known = {key.lower().replace(" ", ""): name for name, label in labels.items() for key in (name, label)}
    known.update(aliases or {})

    def parse(text: str, what: str) -> tuple[str, ...]:
        names = []
        for part in text_values(text, what):
            if part.lower().replace(" ", "") not in known:
                raise InvalidRequest(f"{what}: {part[:40]!r} is not one of {', '.join(labels.values())}.")
            names.append(known[part.lower().replace(" ", "")])
        return tuple(names)

    return parse


@dataclass(frozen=True)
class AxisKind:
    label: str  # as the grid writes it
    parse: Callable[[str, str], tuple]  # (values text, what) -> values
    apply: Callable[[GenerationRequest, object], GenerationRequest]
    value_labels: dict | None = None  # value -> how the grid writes it, where not the value itself


def _field(name: str):
    return lambda request, value: request.with_(**{name: value})


OWN_FILES = "none"  # a VAE / Text Encoder axis's value for the model's own


def _modules(request: GenerationRequest, value: str) -> GenerationRequest:
    """A cell's VAE / text encoder files in place of the request's (`none`: the model's own; `a + b`: two files)."""
    return request.with_(modules=() if value == OWN_FILES else tuple(part.strip() for part in value.split("+")))


AXIS_KINDS = {
    "seed": AxisKind("Seed", lambda text, what: _numbers(text, True, what), _field("seed")),
    "var-seed": AxisKind("Var. seed", lambda text, what: _numbers(text, True, what), _field("variation_seed")),
    "var-strength": AxisKind("Var. strength", lambda text, what: _numbers(text, False, what),
                             _field("variation_strength")),
    "steps": AxisKind("Steps", lambda text, what: _numbers(text, True, what), _field("steps")),
    "guidance": AxisKind("Guidance", lambda text, what: _numbers(text, False, what), _field("guidance")),
    "true-cfg": AxisKind("True CFG", lambda text, what: _numbers(text, False, what), _field("true_cfg_scale")),
    "strength": AxisKind("Image strength", lambda text, what: _numbers(text, False, what),
                         _field("image_strength")),
    "denoising": AxisKind("Denoising", lambda text, what: _numbers(text, False, what),  # A1111's: 1 - strength
                          lambda request, value: request.with_(image_strength=round(1 - value, 6))),
    "controlnet-strength": AxisKind("ControlNet strength", lambda text, what: _numbers(text, False, what),
                                    _field("controlnet_strength")),
    "hires-scale": AxisKind("Hires upscale", lambda text, what: _numbers(text, False, what), _field("hires_scale")),
    "hires-steps": AxisKind("Hires steps", lambda text, what: _numbers(text, True, what), _field("hires_steps")),
    "hires-strength": AxisKind("Hires denoising", lambda text, what: _numbers(text, False, what),
                               _field("hires_strength")),
    "lora-scale": AxisKind("LoRA scale", lambda text, what: _numbers(text, False, what), _lora_scale),
    "lora": AxisKind("LoRA", _lora_names, _lora),
    "model": AxisKind("Model", text_values, _field("model")),
    "modules": AxisKind("VAE / Text Encoder", text_values, _modules),
    "size": AxisKind("Size", _size, lambda request, size: request.with_(width=size[0], height=size[1])),
    "prompt-sr": AxisKind("Prompt S/R", text_values, None),  # applied with the axis's search term
    "prompt-order": AxisKind("Prompt order", _orders, _prompt_order),
    "styles": AxisKind("Styles", _style_names, None),  # names, made Styles by resolve_styles; merged by plot_cells
    "sampler": AxisKind("Sampler", _named(SAMPLER_LABELS), _field("sampler"), SAMPLER_LABELS),
    # A1111's first schedule label, "Automatic" (the sampler's own), is Simple here as its txt2img takes it
    "schedule": AxisKind("Schedule", _named(SCHEDULE_LABELS, {"automatic": "simple"}), _field("schedule"),
                         SCHEDULE_LABELS),
}


@dataclass(frozen=True)
class Axis:
    kind: str
    values: tuple

    @property
    def label(self) -> str:
        return AXIS_KINDS[self.kind].label

    def value_label(self, value) -> str:
        if AXIS_KINDS[self.kind].value_labels:
            return AXIS_KINDS[self.kind].value_labels[value]
        if self.kind == "prompt-order":
            return ", ".join(value)
        if isinstance(value, tuple):
            return f"{value[0]}x{value[1]}"
        if self.kind == "lora":
            return Path(value).stem  # a library name is its file's name
        if self.kind == "modules":
            return " + ".join(Path(part.strip()).stem for part in value.split("+"))
        if isinstance(value, Style):
            return value.name
        return f"{value:g}" if isinstance(value, float) else str(value)

    def apply(self, request: GenerationRequest, value) -> GenerationRequest:
        if self.kind == "prompt-sr":
            return _prompt_replace(request, value, self.values[0])
        return AXIS_KINDS[self.kind].apply(request, value)

    def heading(self, value) -> str:
        """How the grid labels the row or column of `value`."""
        return f"{self.label}: {self.value_label(value)}"


@dataclass(frozen=True)
class PromptPartsAxis(Axis):
    """A prompt matrix's axis: each value says which of `parts` follow the prompt, joined by commas."""

    parts: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return "Prompt matrix"

    def heading(self, value) -> str:
        return " ".join(f"{'+' if on else '-'}{part}" for part, on in zip(self.parts, value))

    def apply(self, request: GenerationRequest, value) -> GenerationRequest:
        return request.with_(prompt=", ".join([request.prompt, *(p for p, on in zip(self.parts, value) if on)]))


def prompt_matrix(prompt: str, max_cells: int = MAX_CELLS) -> tuple[str, list[Axis]]:
    """A1111's prompt matrix: `base|part|part...` -> the base prompt and the axes of every combination of the parts
    (the first half of the parts across, the rest down, as A1111 lays out its grid); refused over `max_cells`."""
    base, *parts = [part.strip().strip(",").strip() for part in prompt.split("|")]
    parts = [part for part in parts if part]
    if not parts:
        raise InvalidRequest("A prompt matrix needs optional parts after the prompt, split by |: "
                             "'a cat|in red|at night'.")
    if 2 ** len(parts) > max_cells:
        count = f"{2 ** len(parts):,}" if len(parts) <= 40 else f"2^{len(parts)}"
        raise InvalidRequest(f"The prompt matrix has {count} cells ({len(parts)} optional parts), more than the limit "
                             f"of {max_cells}: use fewer parts.")
    across = (len(parts) + 1) // 2
    groups = [tuple(parts[:across]), tuple(parts[across:])]
    return base, [PromptPartsAxis("prompt-matrix", _combinations(len(group)), group) for group in groups if group]


def _combinations(count: int) -> tuple[tuple[bool, ...], ...]:
    """Every on/off choice of `count` parts, the first part changing fastest (A1111's order)."""
    return tuple(tuple(bool(number >> bit & 1) for bit in range(count)) for number in range(2 ** count))


def resolve_loras(axes: list[Axis], resolve: Callable[[str], str]) -> list[Axis]:
    """The axes with a LoRA axis's names turned into files by `resolve` (which refuses an unknown name), so a plot
    is refused before anything runs."""
    return [Axis(a.kind, tuple(v if v == NO_LORA else resolve(v) for v in a.values)) if a.kind == "lora" else a
            for a in axes]


def resolve_styles(axes: list[Axis], styles: dict[str, Style]) -> list[Axis]:
    """The axes with a Styles axis's names looked up in `styles` (the styles folder's), so a plot naming a style
    there is none of is refused before anything runs."""
    def looked_up(name: str):
        return name if name == NO_STYLE else style_named(name, styles, "The Styles axis: ")

    return [Axis(a.kind, tuple(looked_up(v) for v in a.values)) if a.kind == "styles" else a for a in axes]


def parse_axis(kind: str, values: str) -> Axis:
    """An axis from its kind (a key of AXIS_KINDS) and its values as typed."""
    if kind not in AXIS_KINDS:
        raise InvalidRequest(f"Unknown plot axis {kind!r}; choose one of {', '.join(AXIS_KINDS)}.")
    what = f"The {AXIS_KINDS[kind].label} axis"
    parsed = AXIS_KINDS[kind].parse(values or "", what)
    if not parsed:
        raise InvalidRequest(f"{what} has no values.")
    return Axis(kind, parsed)


def parse_axis_flag(text: str) -> Axis:
    """`kind=values`, as the CLI takes an axis (`steps=1-4`, `guidance=2.5, 3.5`)."""
    kind, separator, values = text.partition("=")
    if not separator:
        raise InvalidRequest(f"A plot axis is kind=values, e.g. steps=1-4, not {text[:40]!r}.")
    return parse_axis(kind.strip().lower(), values)


@dataclass(frozen=True)
class Cell:
    request: GenerationRequest
    position: tuple[int, int, int]  # (x, y, z) indices


def plot_cells(base: GenerationRequest, axes: list[Axis], max_cells: int = MAX_CELLS, styles: tuple[Style, ...] = (),
               finish: Callable[[GenerationRequest], GenerationRequest] = lambda request: request,
               vary_seeds: tuple[bool, ...] = ()) -> list[Cell]:
    """Every cell's validated request, model changes outermost; refused over `max_cells` before anything runs.
    The request's own A1111 `styles`, then the cell's Styles-axis style, merge into each cell's prompts after its
    other axes changed them (A1111 merges p.styles, the axis's appended, after its scripts: a Prompt S/R term must be
    in the user's own prompt); `finish` then completes each cell (its prompt's wildcards, its `<lora:...>` tags).
    `vary_seeds` (X, Y, Z): A1111's "Vary seeds for X/Y/Z", each cell's seed moved on by seed_offset."""
    if not 1 <= len(axes) <= 3:
        raise InvalidRequest("A plot has one to three axes.")
    if any(axis.kind in ("strength", "denoising") for axis in axes) and not base.image_path:
        raise InvalidRequest("The image strength and denoising axes need an input image to start from "
                             "(image-to-image): give one, or choose another axis.")
    if any(axis.kind == "var-strength" for axis in axes) and base.variation_seed is None:
        base = base.with_(variation_seed=random.randrange(MAX_SEED + 1))  # as A1111's subseed -1: one for the cells
    axes = list(axes) + [Axis("seed", (None,))] * (3 - len(axes))  # a missing axis: one cell, nothing changed
    sizes = [len(axis.values) for axis in axes]
    count = sizes[0] * sizes[1] * sizes[2]
    if count > max_cells:
        raise InvalidRequest(f"The plot has {count} cells, more than the limit of {max_cells}: use fewer values.")
    # a model axis runs outermost, then a LoRA axis (a LoRA scale axis then scales its LoRA, none in its none cells)
    order = sorted(range(3), key=lambda i: {"model": 0, "lora": 1}.get(axes[i].kind, 2))
    cells = []
    for indices in itertools.product(*(range(len(axes[i].values)) for i in order)):
        position = [0, 0, 0]
        request, no_lora, cell_styles = base, False, styles
        for axis_index, value_index in zip(order, indices):
            position[axis_index] = value_index
            kind, value = axes[axis_index].kind, axes[axis_index].values[value_index]
            if kind == "styles":
                cell_styles = cell_styles if value == NO_STYLE else (*cell_styles, _looked_up(value))
            elif value is not None and not (no_lora and kind == "lora-scale"):  # a scale of the LoRA axis's LoRA
                request = axes[axis_index].apply(request, value)
            no_lora = no_lora or (kind == "lora" and value == NO_LORA)
        offset = seed_offset(position, sizes, vary_seeds)
        if offset and request.seed is not None:
            request = request.with_(seed=(request.seed + offset) % (MAX_SEED + 1))
        cells.append(Cell(finish(styles_merged(request, cell_styles)).validated(), tuple(position)))
    check_grid_size(cells, sizes)
    return cells


def seed_offset(position, sizes, vary_seeds) -> int:
    """How far A1111's "Vary seeds for X/Y/Z" moves a cell's seed (after its axes set it): by the cell's place along
    each varied axis, counted in cells of the varied axes before it (X, then Y, then Z)."""
    offset, stride = 0, 1
    for index, size, varied in zip(position, sizes, vary_seeds):
        if varied:
            offset, stride = offset + index * stride, stride * size
    return offset


def _looked_up(value) -> Style:
    if not isinstance(value, Style):
        raise InvalidRequest(f"The Styles axis's {str(value)[:80]!r} was not looked up in the styles folder.")
    return value


def cell_size(request: GenerationRequest) -> tuple[int, int]:
    """A cell's image size as far as its request tells (a side left to the model or the input: FLUX.1's 1024)."""
    width, height = request.width or NATIVE_GUESS, request.height or NATIVE_GUESS
    return hires_size(width, height, request.hires_scale) if request.hires_scale else (width, height)


def check_grid_size(cells: list[Cell], lengths: list[int]) -> None:
    """Refuse, before anything runs, a plot whose grids would be past A1111's grid limit (its img_max_size_mp), which
    counts every Z value's grid, as the cells all are held until they are gridded."""
    sizes = [cell_size(cell.request) for cell in cells]
    width, height = max(w for w, _ in sizes), max(h for _, h in sizes)
    pixels = lengths[0] * lengths[1] * lengths[2] * width * height
    if pixels > MAX_GRID_PIXELS:
        used = 3 if lengths[2] > 1 else 2 if lengths[1] > 1 else 1  # X, X x Y or X x Y x Z
        shape = " x ".join(str(length) for length in lengths[:used])
        raise InvalidRequest(f"The plot's grids would be {pixels / 1e6:,.0f} megapixels ({shape} cells of up to "
                             f"{width}x{height}), more than the {MAX_GRID_PIXELS // 10**6} a plot may have (A1111's "
                             "limit): use fewer values or a smaller size.")


def _labels(axis: Axis) -> list[str]:
    return [axis.heading(value) if value is not None else "" for value in axis.values]


def plot_grids(axes: list[Axis], images: dict[tuple[int, int, int], Image.Image]) -> list[Image.Image]:
    """One labelled grid per Z value (X across, Y down) of the cells' images; cells that did not run are blank."""
    x, y, z = list(axes) + [Axis("seed", (None,))] * (3 - len(axes))
    grids = []
    for zi, title in enumerate(_labels(z)):
        rows = [[images.get((xi, yi, zi)) for xi in range(len(x.values))] for yi in range(len(y.values))]
        if any(image is not None for row in rows for image in row):
            grids.append(labelled_grid(rows, _labels(x), _labels(y), title))
    return grids
