"""Results on disk and the history gallery, rebuilt from the outputs folder (so it survives a restart).

Layout: `<outputs>/<YYYY-MM-DD>/<HHMMSS>-<tool>-<seed>.png`. Only dated folders count as results;
`inputs/` and `presets/` live beside them.
"""

import re
import time
from pathlib import Path

from PIL import Image

from mflux_core.images.io import save_png_atomic
from mflux_core.metadata import A1111_KEY
from mflux_core.presets import PresetError, settings_from_png
from mflux_core.request import GenerationRequest

DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
HISTORY_LIMIT = 200
GRIDS_FOLDER = "grids"  # plots' grids, beside the dated history folders
CAPTION_CHARS = 80
# What a result's settings mean the same in any tool's panel; its model, guidance and tool settings do not.
CARRIED_ACROSS_TOOLS = ("prompt", "negative_prompt", "true_cfg_scale", "seed", "steps", "width", "height",
                        "lora_paths", "lora_scales", "lora_text_encoder_scales")


def result_path(outputs_dir: Path, request: GenerationRequest, when: float | None = None) -> Path:
    moment = time.localtime(when if when is not None else time.time())
    folder = Path(outputs_dir) / time.strftime("%Y-%m-%d", moment)
    return folder / f"{time.strftime('%H%M%S', moment)}-{request.tool}-{request.seed}.png"


def save_result(outputs_dir: Path, result) -> Path:
    """Write a GenerationResult's image with its metadata; never replaces an existing file."""
    return save_png_atomic(result.image, result_path(outputs_dir, result.request), result.text_chunks)


def save_grids(outputs_dir: Path, grids: list[Image.Image], text_chunks: dict | None) -> list[tuple[str, str]]:
    """A plot's labelled grids (one per Z value) to `grids/<date>/` beside the history, with `text_chunks` (as A1111:
    its first cell's settings, which restore from the grid): (path, "grid N") each."""
    folder = outputs_dir / GRIDS_FOLDER / time.strftime("%Y-%m-%d")
    stamp = time.strftime("%H%M%S")
    return [(str(save_png_atomic(grid, folder / f"{stamp}-plot-{index}.png", text_chunks)), f"grid {index + 1}")
            for index, grid in enumerate(grids)]


def caption(path: Path) -> str:
    """The prompt's start and the seed, from the A1111 `parameters` chunk we write."""
    try:
        with Image.open(path) as image:
            text = image.info.get(A1111_KEY, "")
    except (OSError, ValueError):
        return path.name
    if not isinstance(text, str) or not text:
        return path.name
    prompt, _, line = text.rpartition("\n")
    seed = re.search(r"Seed: (\d+)", line)
    prompt = prompt.strip().replace("\n", " ")
    prompt = prompt if len(prompt) <= CAPTION_CHARS else prompt[: CAPTION_CHARS - 1] + "…"
    return f"{prompt} · seed {seed.group(1)}" if seed else prompt


def settings_to_send(path: Path, tools: tuple[str, ...]) -> dict:
    """The settings a result carries along when it is sent to a panel running `tools`: all of them into a panel of
    its own tool, else those in CARRIED_ACROSS_TOOLS; none when the image holds no settings we can read."""
    try:
        settings = settings_from_png(path)
    except PresetError:
        return {}
    if settings.get("tool", "generate") in tools:
        return settings
    return {key: value for key, value in settings.items() if key in CARRIED_ACROSS_TOOLS}


def history(outputs_dir: Path, limit: int = HISTORY_LIMIT) -> list[tuple[str, str]]:
    """(path, caption) of the newest results, newest first."""
    root = Path(outputs_dir)
    if not root.is_dir():
        return []
    paths = [p for folder in root.iterdir() if folder.is_dir() and DATE_FOLDER.match(folder.name)
             for p in folder.glob("*.png") if not p.is_symlink()]  # never a result: Gradio refused the whole gallery
    paths.sort(key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    return [(str(p), caption(p)) for p in paths[:limit]]
