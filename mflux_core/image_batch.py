"""A tool on a batch of input images (A1111's img2img "Batch"): one job of the same settings, and the same seed, on
each image in turn (image-to-image; Fill, each image with its mask); optionally each image's own prompt and settings
from its PNG info.

As A1111's batch, the seed is drawn once for the whole batch (frames of a video stay alike), and a PNG's prompts
are added after the job's. PNG info is read in every format the studio restores (ours, A1111's, ComfyUI's,
SwarmUI's, InvokeAI's, Draw Things'); an image that carries none runs with the job's settings. Every image is read and every
request validated before the first runs; a refusal names the image.
"""

from collections.abc import Callable
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.presets import PresetError, settings_from_png
from mflux_core.prompt_lines import PromptLine, line_requests
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import PNG_INFO_FIELDS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")  # what A1111's batch reads from a folder
MAX_BATCH_IMAGES = 10_000


def images_in(folder: Path) -> list[Path]:
    """The images directly in `folder`, by name (frames in order)."""
    if not folder.is_dir():
        raise InvalidRequest(f"{folder} is not a folder.")
    images = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InvalidRequest(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return images


def png_info_settings(path: Path, fields: tuple[str, ...]) -> dict:
    """The `fields` (PNG_INFO_FIELDS labels) of the settings an image carries; {} when it carries none."""
    try:
        found = settings_from_png(path)
    except PresetError:
        return {}
    keys = {key for label in fields for key in PNG_INFO_FIELDS[label]}
    return {key: value for key, value in found.items() if key in keys}


def masks_for(images: list[str | Path], masks: list[str | Path], where: str) -> list[str | Path]:
    """An inpaint batch's masks (file names or paths), as A1111 finds them: the one mask for every image, else each
    image's by its name (any image type); an image without one is refused before any runs. `where` starts the
    refusal: "The masks in masks/", "The uploaded masks"."""
    if len(masks) == 1:
        return masks * len(images)
    by_name = {Path(mask).stem: mask for mask in masks}
    missing = [Path(image).name for image in images if Path(image).stem not in by_name]
    if missing:
        raise InvalidRequest(f"{where} have no mask for {missing[0]}" +
                             (f" and {len(missing) - 1} more images" if len(missing) > 1 else "") +
                             f" (a mask is found by its image's name: {Path(missing[0]).stem}.png, .jpg, ...).")
    return [by_name[Path(image).stem] for image in images]


def batch_requests(base: GenerationRequest, images: list[tuple[str, Path, dict]], png_info: tuple[str, ...],
                   seeds: list[int], batch_count: int = 1, wildcards: Path | None = None,
                   styled: Callable[[GenerationRequest], GenerationRequest] = lambda request: request,
                   ) -> list[tuple[str, GenerationRequest]]:
    """(image name, validated request) for every image of the batch, in order. `images`: (name, file to read its PNG
    info from, the request's input fields: image_path=..., masked_image_path=...); each image runs `seeds` (or the
    seed from its PNG info) as a prompt list's line does, its prompts after `base`'s when taken from its PNG info."""
    if not images:
        raise InvalidRequest("The batch has no images.")
    if len(images) > MAX_BATCH_IMAGES:
        raise InvalidRequest(f"The batch has {len(images):,} images; the limit is {MAX_BATCH_IMAGES:,}.")
    unknown = [label for label in png_info if label not in PNG_INFO_FIELDS]
    if unknown:
        raise InvalidRequest(f"Unknown PNG info {unknown[0][:40]!r}; choose from {', '.join(PNG_INFO_FIELDS)}.")
    lines = []
    for number, (_, info_file, inputs) in enumerate(images, start=1):
        settings = png_info_settings(info_file, png_info) if png_info else {}
        lines.append(PromptLine(number, {**settings, **inputs}))
    named = line_requests(base, lines, seeds, batch_count, wildcards, styled, label=lambda n: images[n - 1][0],
                          position="end")  # A1111 adds a PNG info's prompts after the job's own
    return [(images[number - 1][0], request) for number, request in named]
