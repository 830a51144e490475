"""Kontext (FLUX.1-Kontext-dev): edit a reference image by instruction.

The reference image's latent tokens are appended after the image tokens with position ids whose
first coordinate is 1; the transformer's output for them is cut off. As in diffusers, ComfyUI and BFL's code, the
reference is read at the resolution Kontext was trained on that is closest to its aspect ratio (about one megapixel;
a phone photo is not read at 12), and the output is that size unless one is asked for; `--no-kontext-auto-resize`
keeps the reference's own size (floored to a multiple of 16). A model that makes only some sizes (a demo model,
taught with references of its own sizes) reads it at the output's size. Several reference images are one, side by
side at the first one's height (images/stitch.py): Kontext reads one picture.
"""

from PIL import Image

from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.stitch import stitched_files
from mflux_core.request import GenerationRequest, check_image_size
from mflux_core.sampling.latents import image_position_ids
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.specs import KONTEXT_AUTO_RESIZE
from mflux_core.tools.common import (
    check_in_channels, fit_input, packed_channels, encode_image, prompt_conditioning, required_image, with_size,
)

PREFERRED_RESOLUTIONS = [  # (width, height) Kontext was trained on
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
]


def auto_resizes(request: GenerationRequest) -> bool:
    return bool(request.extra.get(KONTEXT_AUTO_RESIZE, True))  # absent: on


def reference_size(image: Image.Image, auto_resize: bool, multiple: int) -> tuple[int, int]:
    width, height = (max(multiple, side // multiple * multiple) for side in image.size)
    if auto_resize:  # the aspect ratio of the floored size, as diffusers reads it
        aspect = width / height
        _, width, height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_RESOLUTIONS)
    return width // multiple * multiple, height // multiple * multiple


def auto_resize_note(size: tuple[int, int], width: int, height: int) -> tuple[str, ...]:
    if tuple(size) == (width, height):
        return ()
    return (f"Reference {size[0]}x{size[1]} read at {width}x{height}, the Kontext resolution closest to its shape "
            "(to keep its own size: untick the reference resize, or --no-kontext-auto-resize).",)


def reference_image(request: GenerationRequest) -> Image.Image:
    paths = request.reference_paths
    if len(paths) < 2:
        return required_image(paths[0] if paths else None, "a reference image", "--image-path")
    return stitched_files(paths)


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, packed_channels(model), "Kontext", "FLUX.1-Kontext")
    reference = reference_image(request)
    multiple = 2 * model.vae_scale_factor
    if model.native_sizes:  # a demo model was taught with references of its own sizes: the output's, by resize mode
        request = with_size(request, reference)
        reference, notes = fit_input(reference, request)
        width, height = reference_size(reference, False, multiple)
    else:
        auto_resize = auto_resizes(request)
        width, height = reference_size(reference, auto_resize, multiple)
        if not auto_resize:
            check_image_size(width, height, "The reference image, which Kontext uses at its own size,")
        notes = auto_resize_note(reference.size, width, height) if auto_resize else ()
    if (width, height) != reference.size:
        reference = reference.resize((width, height), Image.Resampling.LANCZOS)
    request = with_size(request, reference)
    conditioning = prompt_conditioning(model, request)
    conditioning.reference_tokens = encode_image(model, reference, width, height).astype(model.dtype)
    grid = (2 * (height // multiple), 2 * (width // multiple))
    conditioning.reference_ids = image_position_ids(*grid, first=1.0)
    return ToolInputs(request, conditioning, notes=notes)
