"""Upscale in tiles (A1111's SD upscale script, ComfyUI's Ultimate SD Upscale): the input resampled to the output
size, then regenerated a tile at a time, each tile image-to-image from its part of the resampled image (steered by
that part through the upscaler ControlNet unless the upscaler is Lanczos or an upscaler model, which makes the
resampled image) with the request's seed, as A1111 gives
every tile the same seed; the tiles are blended where they overlap (images/tiles.py). The transformer and the VAE
work at one tile's size, so an output far past what one pass could hold is made within the memory of one tile.

One job of the manager, as the hires fix is: one tile's run planned against the memory budget before the first
step, steps counted across the tiles, a stop heard in any tile, one image with one metadata record.
"""

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.events import Report, Step, passes_report
from mflux_core.flux_model import FluxModel
from mflux_core.images.tiles import Tile, blend_bytes, blend_tiles, tile_grid
from mflux_core.native_sizes import makes_size, what_it_makes
from mflux_core.request import GenerationRequest
from mflux_core.sampling.schedule import img2img_start_step
from mflux_core.settings_schema import MAX_SIDE
from mflux_core.tools.common import resolved_request
from mflux_core.tools.controlnet_conditioning import extra_number
from mflux_core.tools.specs import TILE_HEIGHT, TILE_OVERLAP, TILE_SIZE  # a tile size of 0: the model's own side
from mflux_core.tools.upscale import (
    image_to_upscale, resampled as resampled_input, starts_from_image, upscale_inputs, upscaled_size,
)

if TYPE_CHECKING:
    from mflux_core.manager import GenerationResult, ModelManager

MIN_TILE = 32


def is_tiled(request: GenerationRequest) -> bool:
    return request.tool == "upscale" and request.extra.get(TILE_SIZE) is not None


def whole_pixels(request: GenerationRequest, key: str, what: str) -> int | None:
    value = extra_number(request, key, None)
    if value is not None and (value != int(value) or value < 0):
        raise InvalidRequest(f"{what} must be a whole number of pixels, 0 or more, not {value:g}.")
    return None if value is None else int(value)


def check_tile_settings(request: GenerationRequest) -> None:
    """Refuse, before a model loads, a tile size or overlap that cannot make tiles."""
    width = whole_pixels(request, TILE_SIZE, "The tile size")
    height = whole_pixels(request, TILE_HEIGHT, "The tile height")
    for side, what, zero in ((width, "size", "the model's own side"), (height, "height", "as wide as the tile")):
        if side and (side % 16 or not MIN_TILE <= side <= MAX_SIDE):
            raise InvalidRequest(f"The tile {what} {side} must be a multiple of 16 from {MIN_TILE} to {MAX_SIDE} px "
                                 f"(0: {zero}).")
    overlap = whole_pixels(request, TILE_OVERLAP, "The tile overlap")
    width, height = width or height, height or width
    if width and overlap is not None and overlap > min(width, height) // 2:
        tile = f"{width} px tile" if width == height else f"{width}x{height} px tile's shorter side"
        raise InvalidRequest(f"A tile overlap of {overlap} px is more than half the {tile}: use at most "
                             f"{min(width, height) // 2}.")


def tile_shape_and_overlap(model: FluxModel, request: GenerationRequest) -> tuple[int, int, int]:
    """The tile's width (0: the model's native side, 1024 for FLUX.1), its height (by default as wide) and the
    overlap (default an eighth of the tile's shorter side, A1111's 64 px on its 512 px tiles, at least 16 px)."""
    width = whole_pixels(request, TILE_SIZE, "The tile size") or model.native_side
    height = whole_pixels(request, TILE_HEIGHT, "The tile height") or width
    overlap, shorter = whole_pixels(request, TILE_OVERLAP, "The tile overlap"), min(width, height)
    return width, height, min(shorter // 2, max(16, shorter // 8) if overlap is None else overlap)


def previews_in_place(report: Report | None, canvas: Image.Image, tile: Tile) -> Report | None:
    """`report` with each step's preview of `tile` shown in its place on `canvas` (the resampled image with the tiles
    made so far), so the page follows the whole image."""
    if report is None:
        return None

    def relay(event) -> None:
        if isinstance(event, Step) and event.preview is not None:
            shown = canvas.copy()
            shown.paste(event.preview.convert("RGB").resize((tile.width, tile.height)), tile.box[:2])
            event = replace(event, preview=shown)
        report(event)

    return relay


# what the job holds at the whole output's size beside the blend: the resampled input, the preview canvas and the
# tiles' images, 8-bit RGB each, and the PNG written of the result
HELD_BYTES_PER_PIXEL = 4 * 3


def generate_tiled(manager: "ModelManager", request: GenerationRequest, report: Report | None,
                   cancelled: Callable[[], bool] | None) -> "GenerationResult":
    """Every tile, with the manager's lock held by the caller."""
    started = manager.run_started()
    check_tile_settings(request)
    model = manager._prepared_model(request, cancelled)
    image = image_to_upscale(request)
    request = starts_from_image(upscaled_size(resolved_request(model, request), image))
    resampled, notes = resampled_input(manager, image, request)
    width, height, overlap = tile_shape_and_overlap(model, request)
    tiles = tile_grid(request.width, request.height, width, height, overlap)
    tile_size = (tiles[0].width, tiles[0].height)
    if not makes_size(model.native_sizes, model.token_side, tile_size):
        raise InvalidRequest(f"{request.model} makes {what_it_makes(model.native_sizes, model.token_side)}, so it has "
                             f"no {tile_size[0]}x{tile_size[1]} tiles: give a tile size it makes, or 0 for its own.")
    shape = {TILE_SIZE: width, **({TILE_HEIGHT: height} if height != width else {}), TILE_OVERLAP: overlap}
    request = request.with_(extra={**{k: v for k, v in request.extra.items() if k != TILE_HEIGHT}, **shape})
    tile_request = request.with_(width=tile_size[0], height=tile_size[1])
    first = upscale_inputs(model, tile_request, manager, resampled.crop(tiles[0].box), notes)
    held = request.width * request.height * HELD_BYTES_PER_PIXEL
    blending = ("blending the tiles", blend_bytes(request.width, request.height) + held)
    first = replace(first, estimated=(*first.estimated, blending))  # the plan holds the whole job
    steps = tile_request.steps or model.default_steps
    start = img2img_start_step(steps, first.image_strength) if first.image_strength is not None else 0
    total = (steps - start) * len(tiles)
    plan = manager.resident.plan_run(model, first)
    images, canvas = [], resampled.convert("RGB")
    with manager.resident.budget.holding(plan):
        for index, tile in enumerate(tiles):
            inputs = first if index == 0 else upscale_inputs(model, tile_request, manager, resampled.crop(tile.box))
            stage = f"tile {index + 1} of {len(tiles)}"
            tile_report = passes_report(previews_in_place(report, canvas, tile), index * (steps - start) - start,
                                        total, stage)
            images.append(manager.run_inputs(model, inputs, tile_report, cancelled))
            canvas.paste(images[-1].convert("RGB"), tile.box[:2])
    whole = first.request.with_(width=request.width, height=request.height)  # what replays the job
    return manager.finished(blend_tiles(request.width, request.height, tiles, images), whole, model,
                            first.conditioning.guidance, plan, started, before=resampled, notes=first.notes,
                            recorded=first.recorded)
