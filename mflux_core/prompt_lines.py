"""Prompts from a file or textbox (A1111's script): one job of one image (or a few) per line.

A line is a prompt, or its settings in either of two forms:
    --prompt "a red circle" --seed 5 --steps 4 --width 64      (A1111's form: a flag per setting)
    {"prompt": "a red circle", "seed": 5, "steps": 4}          (a JSON object)
Settings a line leaves out come from the job's own (the page's or the command's); as in A1111's script, a line's
prompt goes before the job's own ("start") or after it ("end") when both have one, and so does its negative prompt;
the job's A1111 styles merge in after that. Blank lines and lines starting with # are skipped. Every line's requests
are validated before the first image runs, and a bad line is refused with its line number. Wildcards in a line's
prompt are drawn from that image's seed.
"""

import argparse
import functools
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.request import MAX_SEED, GenerationRequest
from mflux_core.settings_schema import MAX_BATCH, SAMPLER_LABELS, SCHEDULE_LABELS, a1111_sampling
from mflux_core.wildcards import expand_prompt

PROMPT_POSITIONS = ("start", "end")  # A1111's prompt_position: a line's prompt before the job's own, or after it
PROMPT_FIELDS = ("prompt", "negative_prompt")
MAX_TEXT_CHARS = 1_000_000
MAX_IMAGES = 10_000  # images one prompt list may ask for (a 1,000,000-character list of 16-image lines: 8 million)
# What a line may set: the request's field (or batch_count) and how its A1111 form's text is read
LINE_SETTINGS = {"prompt": str, "negative_prompt": str, "seed": int, "steps": int, "width": int, "height": int,
                 "guidance": float, "true_cfg_scale": float, "sampler": str, "schedule": str, "model": str,
                 "variation_seed": int, "variation_strength": float, "batch_count": int}
# A1111's names for the same settings, with FLUX's meanings as Forge gives them (webui/a1111_api.py)
A1111_NAMES = {"n_iter": "batch_count", "cfg_scale": "true_cfg_scale", "distilled_cfg_scale": "guidance",
               "sampler_name": "sampler", "sampler_index": "sampler", "scheduler": "schedule", "sd_model": "model",
               "subseed": "variation_seed", "subseed_strength": "variation_strength"}
BATCH_SIZE = "batch_size"  # A1111's images a batch: a line makes batch_size x n_iter images here too
# The rest of A1111's line options: taken, left out, and named in the line's `ignored` (A1111 runs such lines too)
A1111_LEFT_OUT = {"styles": "the job's styles apply", "restore_faces": "no face restore on a line",
                  "tiling": "no tiling", "seed_resize_from_h": "no seed resize", "seed_resize_from_w": "no seed resize",
                  "outpath_samples": "results go to the outputs folder", "outpath_grids": "grids go to grids/",
                  "prompt_for_display": "the prompt is shown", "do_not_save_samples": "the API saves as asked",
                  "do_not_save_grid": "the API saves as asked"}


@dataclass(frozen=True)
class PromptLine:
    number: int  # 1 for the text's first line
    settings: dict  # LINE_SETTINGS keys -> values
    ignored: tuple[str, ...] = ()  # what the line set that the studio left out, each with why


class _LineParser(argparse.ArgumentParser):
    """The flags form of a line; a mistake is an InvalidRequest, never an exit."""

    def error(self, message: str):
        raise InvalidRequest(f"{message[0].upper()}{message[1:]}.")


@functools.cache
def _flags_parser() -> argparse.ArgumentParser:
    parser = _LineParser(prog="line", add_help=False, allow_abbrev=False)
    kinds = {**LINE_SETTINGS, **{alias: LINE_SETTINGS[name] for alias, name in A1111_NAMES.items()}, BATCH_SIZE: int,
             **dict.fromkeys(A1111_LEFT_OUT, str)}
    for name, kind in kinds.items():
        flags = dict.fromkeys((f"--{name}", f"--{name.replace('_', '-')}"))  # --n_iter or --n-iter
        # text runs to the next flag, quoted or not, as in A1111's script
        parser.add_argument(*flags, dest=name, type=kind, nargs="+" if kind is str else None)
    return parser


def _from_flags(line: str) -> dict:
    try:
        words = shlex.split(line)
    except ValueError as error:
        raise InvalidRequest(f"The line cannot be split into flags ({error}).") from None
    parsed = vars(_flags_parser().parse_args(words))
    return {name: " ".join(value) if isinstance(value, list) else value
            for name, value in parsed.items() if value is not None}


def _from_json(line: str) -> dict:
    try:
        settings = json.loads(line)
    except json.JSONDecodeError as error:
        raise InvalidRequest(f"The line is not valid JSON ({error.msg} at character {error.pos + 1}).") from None
    except ValueError:  # Python reads no integer of more than 4,300 digits
        raise InvalidRequest("The line holds a number too long to read: no setting takes one that size.") from None
    if not isinstance(settings, dict):
        raise InvalidRequest("A JSON line must be an object of settings, like {\"prompt\": \"a cat\"}.")
    return settings


def _named(settings: dict) -> tuple[dict, tuple[str, ...]]:
    """The settings under the request's names, and what of A1111's the studio leaves out (named, with why); unknown
    ones refused, naming what a line may set."""
    named, ignored = {}, []
    for key, value in settings.items():
        name = A1111_NAMES.get(key, key)
        if key in A1111_LEFT_OUT:
            ignored.append(f"--{key} ({A1111_LEFT_OUT[key]})")
            continue
        if name not in (*LINE_SETTINGS, BATCH_SIZE):
            raise InvalidRequest(f"Unknown setting {str(key)[:40]!r}; a line may set {', '.join(LINE_SETTINGS)}.")
        named[name] = value
    sampling = {name: named[name] for name in ("sampler", "schedule") if isinstance(named.get(name), str)}
    if sampling:  # A1111's labels ("Euler a", "DPM++ 2M Karras", "Karras") as the names they stand for
        known = a1111_sampling(sampling.get("sampler", ""), sampling.get("schedule", ""))
        for name, label in sampling.items():
            if name not in known and label.lower() not in (SAMPLER_LABELS if name == "sampler" else SCHEDULE_LABELS):
                ignored.append(f"--{name} {label[:40]!r} (not in the studio: the default runs)")  # as A1111's API
                del named[name]
        named.update(known)
    batch = named.pop(BATCH_SIZE, 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise InvalidRequest(f"The batch size must be a whole number from 1 to {MAX_BATCH}, not {str(batch)[:40]}.")
    if batch > 1:
        named["batch_count"] = named.get("batch_count", 1) * batch
    count = named.get("batch_count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BATCH:
        raise InvalidRequest(f"The image count (batch_count) must be a whole number from 1 to {MAX_BATCH}, "
                             f"not {str(count)[:40]}.")
    return named, tuple(ignored)


def read_prompt_lines(text: str) -> list[PromptLine]:
    """Every line's settings, each refused with its line number when it cannot be read."""
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidRequest(f"The prompt list is {len(text):,} characters long; the limit is {MAX_TEXT_CHARS:,}.")
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            read = _from_json if line.startswith("{") else _from_flags if line.startswith("--") else None
            lines.append(PromptLine(number, *_named(read(line) if read else {"prompt": line})))
        except InvalidRequest as error:
            raise InvalidRequest(f"Line {number}: {error}") from None
    if not lines:
        raise InvalidRequest("The prompt list has no lines to run (blank lines and # comments are skipped).")
    return lines


def read_prompt_file(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_TEXT_CHARS * 4:
            raise InvalidRequest(f"The prompt list {path.name} is larger than {MAX_TEXT_CHARS * 4:,} bytes.")
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"The prompt list {path.name} is not UTF-8 text.") from None
    except OSError as error:
        raise InvalidRequest(f"Cannot read the prompt list {path.name} ({error.strerror}).") from None


def seeded_lines(lines: list[PromptLine], seed: int, images: int, iterate: bool, same_seed: bool,
                 drawn: Callable[[], int] | None = None) -> list[PromptLine]:
    """The lines with A1111's seed for each line without its own: the job's `seed` moved on by its `images` after each
    line ("Iterate seed every line"), else one `drawn` per line when the job's seed was random (`drawn` given) and
    "Use same random seed for all lines" is off, else the job's."""
    seeded = []
    for index, line in enumerate(lines):
        settings = dict(line.settings)
        if "seed" not in settings:
            settings["seed"] = (seed + index * images) % (MAX_SEED + 1) if iterate else \
                drawn() if drawn and not same_seed else seed
        seeded.append(replace(line, settings=settings))
    return seeded


def beside_job_prompts(settings: dict, base: GenerationRequest, position: str) -> dict:
    """A line's settings with its prompt and negative prompt put before ("start") or after ("end") the job's own,
    where both have one (A1111's script; a line's prompt alone replaces none, the job's alone is kept)."""
    if position not in PROMPT_POSITIONS:
        raise InvalidRequest(f"A line's prompt goes at the {' or '.join(PROMPT_POSITIONS)} of the job's own, not "
                             f"{str(position)[:40]!r}.")
    joined = dict(settings)
    for key in PROMPT_FIELDS:
        own = getattr(base, key)
        if joined.get(key) and own:
            joined[key] = f"{joined[key]} {own}" if position == "start" else f"{own} {joined[key]}"
    return joined


def line_requests(base: GenerationRequest, lines: list[PromptLine], seeds: list[int], batch_count: int = 1,
                  wildcards: Path | None = None,
                  styled: Callable[[GenerationRequest], GenerationRequest] = lambda request: request,
                  label: Callable[[int], str] = "Line {}".format,
                  position: str = "start") -> list[tuple[int, GenerationRequest]]:
    """(line number, validated request) for every image of every line, in order. A line's images start at its own
    seed, else at each of `seeds`, and run `batch_count` consecutive seeds (the line's own count, else this one),
    or with a variation strength, as A1111, that seed with consecutive variation seeds. Its prompts are put beside
    `base`'s (beside_job_prompts, at `position`), then `styled` (the A1111 styles picked, merged into the prompts),
    then the prompt's wildcards are drawn from each image's seed. A refusal starts with the line's `label`."""
    total = sum(line.settings.get("batch_count", batch_count) * (1 if "seed" in line.settings else len(seeds))
                for line in lines)
    if total > MAX_IMAGES:
        raise InvalidRequest(f"The prompt list asks for {total:,} images, more than the {MAX_IMAGES:,} one run makes: "
                             "split it into several lists.")
    requests = []
    for line in lines:
        settings = beside_job_prompts(line.settings, base, position)
        count = settings.pop("batch_count", batch_count)
        starts = [settings.pop("seed")] if "seed" in settings else seeds
        try:
            for start in starts:
                first = styled(base.with_(**settings, seed=start)).validated()  # before seeds are counted
                for i in range(count):
                    seeds_of_image = {"variation_seed": (first.variation_seed + i) % (MAX_SEED + 1)} \
                        if first.variation_strength else {"seed": (start + i) % (MAX_SEED + 1)}
                    image = first.with_(**seeds_of_image)
                    expanded = expand_prompt(first.prompt, image.seed, wildcards)
                    requests.append((line.number, image.with_(prompt=expanded).validated()))
        except InvalidRequest as error:
            raise InvalidRequest(f"{label(line.number)}: {error}") from None
    return requests
