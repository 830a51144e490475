"""From panel settings to GenerationRequests: seeds for the batch, LoRA names to files, input images to files.

Input images from the page are written into `<outputs>/inputs/` under a name made from their
content, so a result's metadata points at the exact image it was made from and repeated runs on
the same image write it once.
"""

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.images.io import load_image, save_png_atomic
from mflux_core.lora.a1111 import with_prompt_loras
from mflux_core.presets import UI_FIELDS
from mflux_core.request import MAX_SEED, GenerationRequest
from mflux_core.styles import request_styler
from mflux_core.wildcards import expand_prompt


def read_upload(value: str | Image.Image | None, loader: Callable = load_image) -> Image.Image | None:
    """An input's value (an upload's path, or an image made in the studio) decoded by `loader` with its checks.

    An upload is named by its file name in messages: the server's temporary path means nothing to its sender.
    """
    if value is None:
        return None
    return loader(value) if isinstance(value, Image.Image) else loader(value, name=Path(value).name)


class InputStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def save(self, upload: str | Image.Image | None, kind: str) -> str | None:
        """The path of a PNG holding exactly the image (written once per content); None for no image.

        An upload is decoded and checked first, so one that is refused is never copied here; an image made in
        the studio (a painted mask) is written as it is."""
        image = upload if isinstance(upload, Image.Image) else read_upload(upload)
        if image is None:
            return None
        digest = hashlib.sha256(f"{image.mode} {image.size}".encode() + image.tobytes()).hexdigest()[:20]
        path = self.folder / f"{kind}-{digest}.png"
        if not path.is_file():
            save_png_atomic(image, path)
        return str(path)


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


@dataclass(frozen=True)
class RequestContext:
    """What turning settings into requests needs from the studio."""

    inputs: InputStore
    loras: Mapping[str, Path] = field(default_factory=dict)  # LoRA library name -> file
    wildcards: Path | None = None  # the folder of __name__ wildcard files
    styles: Path | None = None  # the folder of A1111 styles.csv files
    draw_seed: Callable[[], int] = random_seed


def batch_seeds(seed: int | None, count: int, draw_seed: Callable[[], int] = random_seed) -> list[int]:
    """`count` consecutive seeds from `seed` (a random start when None), wrapping at the largest seed."""
    start = draw_seed() if seed is None else seed
    return [(start + i) % (MAX_SEED + 1) for i in range(count)]


def batch_seed_pairs(settings: dict, draw_seed: Callable[[], int] = random_seed) -> list[tuple[int, int | None]]:
    """(seed, variation seed) of each image of a batch: consecutive seeds; with a variation strength, as A1111, the
    one seed with consecutive variation seeds (a random start for either when it is None)."""
    count = settings.get("batch_count", 1)
    seeds = batch_seeds(settings.get("seed"), count, draw_seed)
    if not settings.get("variation_strength"):
        return [(seed, None) for seed in seeds]
    return [(seeds[0], variation) for variation in batch_seeds(settings.get("variation_seed"), count, draw_seed)]


def lora_files(names: list[str], library: Mapping[str, Path]) -> tuple[str, ...]:
    missing = [name for name in names if name not in library]
    if missing:
        raise InvalidRequest(f"The LoRA {missing[0]!r} is not in the LoRA library: check its name (was it moved or "
                             "renamed?), or put its .safetensors file into a LoRA folder.", setting="lora_paths")
    return tuple(str(library[name]) for name in names)


def with_tagged_loras(request: GenerationRequest, context: RequestContext) -> GenerationRequest:
    """The request with its prompt's `<lora:...>` tags (from a style, a wildcard, a prompt list's line) taken out
    and added to its LoRAs from the LoRA library."""
    resolved = request.lora_paths
    request = with_prompt_loras(request)
    return request.with_(lora_paths=(*resolved, *lora_files(list(request.lora_paths[len(resolved):]), context.loras)))


def typed_base(request: GenerationRequest, settings: dict) -> GenerationRequest:
    """`request` (the settings' first, from requests_from_settings) with the prompts as typed (no styles merged) and
    only the settings' own LoRAs: the base of requests whose prompts (a prompt list's lines, a batch image's PNG
    info) are each put together, styled (request_styler), expanded and have their tags taken (with_tagged_loras) on
    their own."""
    own = len(settings.get("lora_paths") or ())
    return request.with_(prompt=settings.get("prompt", ""), negative_prompt=settings.get("negative_prompt", ""),
                         lora_paths=request.lora_paths[:own],
                         lora_scales=request.lora_scales[:own],
                         lora_text_encoder_scales=request.lora_text_encoder_scales[:own])


def cell_finisher(context: RequestContext, seed: int) -> Callable[[GenerationRequest], GenerationRequest]:
    """For a plot's cells, after their axes and styles: the prompt's wildcards (a style's, an S/R value's) drawn from
    the plot's `seed`, its `<lora:...>` tags added to the cell's LoRAs."""
    return lambda request: with_tagged_loras(
        request.with_(prompt=expand_prompt(request.prompt, seed, context.wildcards)), context)


def requests_from_settings(settings: dict, context: RequestContext, **inputs) -> list[GenerationRequest]:
    """One validated request per image of the batch (its seeds: batch_seed_pairs), the named A1111 styles merged
    into its prompts, its prompt's wildcards drawn from its seed and its `<lora:...>` tags (from the prompt or a
    wildcard) added to its LoRAs; `inputs` are input-path fields (image_path=...)."""
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items() if k not in UI_FIELDS}
    fields.update({k: tuple(v) if isinstance(v, list) else v for k, v in inputs.items()})
    seed_pairs = batch_seed_pairs(settings, context.draw_seed)
    base = request_styler(settings.get("styles"), context.styles)(GenerationRequest(**fields))
    requests = []
    for seed, variation_seed in seed_pairs:
        request = with_prompt_loras(base.with_(seed=seed, variation_seed=variation_seed,
                                               prompt=expand_prompt(base.prompt, seed, context.wildcards)))
        requests.append(request.with_(lora_paths=lora_files(list(request.lora_paths), context.loras)).validated())
    return requests
