"""Upscaler models (ESRGAN, Real-ESRGAN, 4x-UltraSharp, ...: models/esrgan.py; found by upscaler_files.py) read,
and an image upscaled with one as A1111 upscales with them: the model run tile by tile (A1111's 192 px tiles sharing
8 px, blended), again while the image is still smaller than the asked size (at most three passes), then a Lanczos
resize to that size exactly.
"""

import itertools
from pathlib import Path
from typing import Callable

import mlx.core as mx
import numpy as np
from PIL import Image
from safetensors.numpy import load_file

from mflux_core.errors import Cancelled, ModelLoadError
from mflux_core.events import Report, Step
from mflux_core.images.tiles import Tile, blend_bytes, blend_tiles, tile_grid
from mflux_core.models.esrgan import UpscalerModel, network_for
from mflux_core.models.vae import inference
from mflux_core.weights.torch_pickle import read_torch_state_dict

TILE, TILE_OVERLAP = 192, 8  # A1111's ESRGAN_tile and ESRGAN_tile_overlap
MAX_PASSES = 3  # A1111's: a 4x model reaches 8x in two
PEAK_MARGIN = 1.25  # the convolutions' own buffers beside the activations models/esrgan.py counts


def read_upscaler(path: Path) -> UpscalerModel:
    """The model in a .safetensors or torch file; ModelLoadError naming the file when it is none we run."""
    path = Path(path)
    try:
        state = load_file(path) if path.suffix.lower() == ".safetensors" else read_torch_state_dict(path)
        return UpscalerModel(path.stem, network_for(state))
    except ModelLoadError as error:
        raise ModelLoadError(f"The upscaler {path.name} cannot be used: {error}") from None
    except (KeyError, IndexError) as error:  # a layer the network's other layers imply is missing
        raise ModelLoadError(f"The upscaler {path.name} cannot be used: it lacks {error} of its network (an "
                             "incomplete or edited file).") from None
    except (OSError, ValueError) as error:  # safetensors' own errors for a damaged file
        raise ModelLoadError(f"The upscaler {path.name} is not a readable weights file ({error}).") from None


def passes_for(scale: int, size: tuple[int, int], target: tuple[int, int]) -> int:
    """How many of the model's passes the image gets: until it covers the target, at most MAX_PASSES; none for a
    model that does not enlarge."""
    passes, width, height = 0, *size
    while scale > 1 and passes < MAX_PASSES and (width < target[0] or height < target[1]):
        passes, width, height = passes + 1, width * scale, height * scale
    return passes


def upscale_bytes(model: UpscalerModel, size: tuple[int, int], target: tuple[int, int]) -> int:
    """Peak bytes of upscaling an image of `size` towards `target`: one tile's pass and the last pass's blend."""
    passes = passes_for(model.scale, size, target)
    if not passes:
        return 0
    tile = min(TILE, max(size) * model.scale ** (passes - 1))  # the last pass's input is the largest
    largest = (size[0] * model.scale ** passes, size[1] * model.scale ** passes)
    return int(model.net.peak_bytes(tile, tile) * PEAK_MARGIN) + blend_bytes(*largest)


def model_passes(model: UpscalerModel, image: Image.Image, target: tuple[int, int],
                 cancelled: Callable[[], bool] | None = None, report: Report | None = None) -> Image.Image:
    """`image` through as many of the model's passes as it takes to cover `target` (width, height); each tile
    done is reported as a Step counted across the passes (on a CPU a pass can take minutes)."""
    image = image.convert("RGB")
    passes = passes_for(model.scale, image.size, target)
    total = sum(len(pass_tiles(model, image.width * model.scale ** n, image.height * model.scale ** n))
                for n in range(passes))
    done = itertools.count(1)

    def tile_done() -> None:
        if report is not None:
            report(Step(next(done), total, stage=f"upscaling with {model.name}"))

    for _ in range(passes):
        image = model_pass(model, image, cancelled, tile_done)
    return image


def upscale_with(model: UpscalerModel, image: Image.Image, target: tuple[int, int],
                 cancelled: Callable[[], bool] | None = None, report: Report | None = None) -> Image.Image:
    """`image` through the model's passes, then Lanczos to `target` exactly."""
    image = model_passes(model, image, target, cancelled, report)
    return image if image.size == target else image.resize(target, Image.Resampling.LANCZOS)


def upscaled_note(model: UpscalerModel, before: tuple[int, int], after: tuple[int, int]) -> str:
    return f"Input {before[0]}x{before[1]} upscaled to {after[0]}x{after[1]} by {model.name} (x{model.scale})."


def pass_tiles(model: UpscalerModel, width: int, height: int) -> list[Tile]:
    """The tiles of a pass over a width x height image (its sides padded to a multiple of the model's unshuffle)."""
    unshuffle = model.net.unshuffle
    width, height = width + -width % unshuffle, height + -height % unshuffle
    side = min(TILE, max(width, height)) // unshuffle * unshuffle
    return tile_grid(width, height, side, side, TILE_OVERLAP)


def model_pass(model: UpscalerModel, image: Image.Image, cancelled: Callable[[], bool] | None,
               tile_done: Callable[[], None] = lambda: None) -> Image.Image:
    """One pass of the model, tile by tile; a stop is heard between tiles."""
    unshuffle = model.net.unshuffle
    pixels = np.asarray(image, np.float32) / 255
    pad = (-pixels.shape[0] % unshuffle, -pixels.shape[1] % unshuffle)
    pixels = np.pad(pixels, ((0, pad[0]), (0, pad[1]), (0, 0)), mode="reflect")  # as spandrel pads unshuffled input
    height, width = pixels.shape[:2]
    tiles = pass_tiles(model, image.width, image.height)
    scale, outputs = model.scale, []
    for tile in tiles:
        if cancelled is not None and cancelled():
            raise Cancelled(f"Stopped while upscaling with {model.name}.")
        crop = pixels[tile.top:tile.top + tile.height, tile.left:tile.left + tile.width]
        with inference():  # each band and block evaluated before the next: the peak upscale_bytes plans for
            out = model.net(mx.array(crop[None]))[0]
        outputs.append(Image.fromarray(np.array(mx.clip(mx.round(out * 255), 0, 255).astype(mx.uint8))))
        tile_done()
    scaled = [Tile(t.left * scale, t.top * scale, t.width * scale, t.height * scale) for t in tiles]
    blended = blend_tiles(width * scale, height * scale, scaled, outputs)
    return blended.crop((0, 0, image.width * scale, image.height * scale))
