"""A1111's prompt styles: named prompt and negative prompt pieces kept in `styles.csv` files (columns name, prompt,
negative_prompt), picked by name and merged into a request's prompts before its wildcards are drawn.

A style's text holding `{prompt}` takes the user's prompt in its place; any other is added after it, joined by
", " (empty parts left out), the same for the negative prompt; several styles apply in the order named. This is
how A1111 and Forge apply styles, so a styles.csv copied from either folder gives the same prompts here.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.settings_schema import MAX_LIST_ITEMS
from mflux_core.tools.specs import tool_spec

PLACEHOLDER = "{prompt}"
MAX_STYLE_FILE_BYTES = 4 * 1024 * 1024  # a styles file is a few kB; anything far larger is not one
MAX_STYLES_PER_REQUEST = MAX_LIST_ITEMS  # as many as a preset can name


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def read_styles(folder: Path | None) -> dict[str, Style]:
    """Every style in the folder's .csv files (A1111's columns; its older `text` column is the prompt), by name; a
    name in several files keeps its first (styles.csv, A1111's own, then the others by name). Nothing when there
    is no such folder."""
    styles: dict[str, Style] = {}
    if folder is None or not Path(folder).is_dir():
        return styles
    for path in sorted(Path(folder).glob("*.csv"), key=lambda path: (path.name != "styles.csv", path.name)):
        for style in styles_in(path):
            styles.setdefault(style.name, style)
    return styles


def styles_in(path: Path) -> list[Style]:
    if path.stat().st_size > MAX_STYLE_FILE_BYTES:
        raise InvalidRequest(f"The styles file {path.name} is over {MAX_STYLE_FILE_BYTES // 2**20} MB: is it one?")
    try:
        with path.open(newline="", encoding="utf-8-sig", errors="replace") as file:
            rows = csv.DictReader(file, skipinitialspace=True)
            return [Style(name, row.get("prompt") or row.get("text") or "", row.get("negative_prompt") or "")
                    for row in rows if (name := (row.get("name") or "").strip())]
    except (OSError, csv.Error) as error:
        raise InvalidRequest(f"Cannot read the styles file {path.name} ({error}).") from None


def merged(style_text: str, text: str) -> str:
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, text)
    return ", ".join(part for part in (text.strip(), style_text.strip()) if part)


def _counted(names) -> list:
    names = list(names or ())
    if len(names) > MAX_STYLES_PER_REQUEST:
        raise InvalidRequest(f"Pick at most {MAX_STYLES_PER_REQUEST} styles, not {len(names)}.")
    return names


def _merged_in(prompt: str, negative_prompt: str, styles) -> tuple[str, str]:
    for style in styles:
        prompt, negative_prompt = merged(style.prompt, prompt), merged(style.negative_prompt, negative_prompt)
    return prompt, negative_prompt


def picked_styles(names, folder: Path | None) -> tuple[Style, ...]:
    """The named styles of the styles folder, in order (an unknown name refused); the folder is not read when none
    are named."""
    names = _counted(names)
    styles = read_styles(folder) if names else {}
    return tuple(style_named(name, styles) for name in names)


def style_named(name, styles: dict[str, Style], what: str = "") -> Style:
    """The style of that name; refused, naming some of the folder's, when there is none (`what` starts the
    sentence: "The Styles axis: ")."""
    if name not in styles:
        known = ", ".join(sorted(styles)[:8]) or "none: put A1111's styles.csv into the styles folder"
        raise InvalidRequest(f"{what}{'there' if what else 'There'} is no style named {str(name)[:80]!r} "
                             f"(styles: {known}).")
    return styles[name]


def styles_merged(request, styles):
    """The request with `styles` (Style objects) merged into its prompt in order and, on a tool with true CFG, into
    its negative prompt (a plot's cells: A1111 merges styles after its scripts changed the prompts)."""
    prompt, negative = _merged_in(request.prompt, request.negative_prompt, styles)
    return request.with_(prompt=prompt,
                         negative_prompt=negative if tool_spec(request.tool).true_cfg else request.negative_prompt)


def request_styler(names, folder: Path | None):
    """A function merging the named styles of the styles folder into a request (styles_merged), for requests whose
    prompts are put together first (a prompt list's line beside the job's prompt, a batch image's PNG info, a re-read
    prompt file): A1111 merges the styles last. The folder is read, and an unknown name refused, once, now."""
    styles = picked_styles(names, folder)
    return lambda request: styles_merged(request, styles)
