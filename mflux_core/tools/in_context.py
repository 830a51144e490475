"""In-context generation on FLUX.1-Fill: a diptych canvas (context left, generation right) and its mask.

In-Context LoRA, CatVTON and IC-Edit are all the same Fill call (mflux's FluxInContextFill): the
left panel is read-only context (mask 0), the right panel is generated where its own mask is white
(all of it when there is none). The image is twice the panel width; the result is cropped back to
the right panel unless the full diptych is asked for. A tool may apply a LoRA of its own (apply_tool_lora), and on a
demo Fill folder the one trained for it there (demo_lora: mflux_core.demo.diptych_lora).
"""

from pathlib import Path

import numpy as np
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.masks import binarize_mask
from mflux_core.images.io import pil_to_pixels
from mflux_core.lora.a1111 import LoraUse, with_loras_added
from mflux_core.request import GenerationRequest, check_image_size
from mflux_core.tools.common import check_in_channels, prompt_conditioning
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.fill import fill_channels, fill_conditioning
from mflux_core.weights.resolve import is_demo_folder


def panel(image: Image.Image, width: int, height: int) -> Image.Image:
    image = image.convert("RGB")
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def diptych_canvas(left: Image.Image, right: Image.Image | None, width: int, height: int) -> Image.Image:
    """(2 * width, height): `left` and `right` each resized to one panel; a missing right panel is black."""
    canvas = Image.new("RGB", (2 * width, height))
    canvas.paste(panel(left, width, height), (0, 0))
    if right is not None:
        canvas.paste(panel(right, width, height), (width, 0))
    return canvas


def diptych_mask(right_mask: Image.Image | None, width: int, height: int) -> np.ndarray:
    """(height, 2 * width) bool: the left panel never regenerates; the right one where `right_mask` is white.

    The right mask is resized (Lanczos) to the panel and thresholded at 50%, as diffusers does for Fill.
    """
    mask = np.zeros((height, 2 * width), dtype=bool)
    if right_mask is None:
        mask[:, width:] = True
        return mask
    gray = right_mask.convert("L")
    if gray.size != (width, height):
        gray = gray.resize((width, height), Image.Resampling.LANCZOS)
    mask[:, width:] = binarize_mask(gray)
    if not mask.any():
        raise InvalidRequest("The mask is empty: paint the area of the right image to regenerate.")
    return mask


def right_half(image: Image.Image) -> Image.Image:
    return image.crop((image.width // 2, 0, image.width, image.height))


def with_lora(request: GenerationRequest, path: str, scale: float = 1.0) -> GenerationRequest:
    """The request with one more LoRA (every listed LoRA gets an explicit scale), unless it lists that one already
    (an image made before tools kept their LoRA out of the request lists it)."""
    return request if path in request.lora_paths else with_loras_added(request, [LoraUse(path, scale, scale)])


def demo_lora(model: FluxModel, file_name: str) -> Path | None:
    """A demo Fill folder's own LoRA for a tool (`file_name` in the folder), when it holds one."""
    path = model.folder / file_name if is_demo_folder(model.folder) else None
    return path if path is not None and path.is_file() else None


def apply_tool_lora(model: FluxModel, request: GenerationRequest, engine: ToolEngine, path: str,
                    scale: float = 1.0) -> None:
    """The model carries the request's LoRAs and the tool's own. The request (and so the image's metadata) keeps
    the user's only: the tool adds its LoRA again when the request is replayed (from its style, its LoRA option or
    its demo model), and a result sent back to the page names only LoRAs of the user's library."""
    engine.apply_loras(model, with_lora(request, path, scale))


def check_fill_model(model: FluxModel, tool: str) -> None:
    check_in_channels(model, fill_channels(model), tool, "FLUX.1-Fill")


def in_context_inputs(model: FluxModel, request: GenerationRequest, left: Image.Image, right: Image.Image | None,
                      right_mask: Image.Image | None, tool: str) -> ToolInputs:
    """Fill conditioning for the diptych; `request.width/height` are one panel's size (set by the caller)."""
    check_fill_model(model, tool)
    width, height = request.width, request.height
    check_image_size(2 * width, height, "The diptych (both panels side by side)")
    mask = diptych_mask(right_mask, width, height)
    pixels = pil_to_pixels(diptych_canvas(left, right, width, height), 2 * width, height)
    conditioning = prompt_conditioning(model, request)
    conditioning.extra_channels = fill_conditioning(model, pixels, mask).astype(model.dtype)
    finish = None if request.extra.get("save_full_image") else right_half
    return ToolInputs(request, conditioning, finish=finish, canvas=(2 * width, height))
