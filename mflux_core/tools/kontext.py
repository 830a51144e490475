"""Kontext (FLUX.1-Kontext-dev): edit a reference image by instruction.

The reference image's latent tokens are appended after the image tokens with position ids whose
first coordinate is 1; the transformer's output for them is cut off. A reference larger than the resolution
Kontext was trained on that is closest to its shape (about one megapixel) is read at that resolution, as diffusers,
ComfyUI and BFL's code read every reference (a phone photo is not read at 12 megapixels); a smaller one keeps its own
size (floored to a multiple of 16). `--kontext-auto-resize` resizes every reference (diffusers' default),
`--no-kontext-auto-resize` none. The output is the reference's size as read unless one is asked for. A model that
makes only some sizes (a demo model, taught with references of its own sizes) reads it at the output's size.
Several reference images are one, side by side at the first one's height (images/stitch.py): Kontext reads one
picture, and without a size asked for, the output is that picture's size, as in ComfyUI's Kontext template.
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
    check_in_channels, encode_image, encoding_phase, fit_input, packed_channels, prompt_conditioning, required_image,
    with_size,
)

PREFERRED_RESOLUTIONS = [  # (width, height) Kontext was trained on
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
]


def reference_size(image: Image.Image, auto_resize: bool | None, multiple: int) -> tuple[int, int]:
    """The size Kontext reads the reference at, floored to `multiple`. `auto_resize` (request.extra's
    kontext_auto_resize): True, the trained resolution nearest its shape (diffusers' default); None, the same only
    for a reference larger than that, which keeps a big photo to what Kontext was trained on without inventing
    pixels for a small one; False, its own size."""
    width, height = (max(multiple, side // multiple * multiple) for side in image.size)
    aspect = width / height  # of the floored size, as diffusers reads it
    _, nearest_width, nearest_height = min((abs(aspect - w / h), w, h) for w, h in PREFERRED_RESOLUTIONS)
    if auto_resize or (auto_resize is None and width * height > nearest_width * nearest_height):
        width, height = nearest_width // multiple * multiple, nearest_height // multiple * multiple
    return width, height


def auto_resize_note(size: tuple[int, int], width: int, height: int) -> str:
    return (f"Reference {size[0]}x{size[1]} read at {width}x{height}, the Kontext resolution closest to its shape "
            "(Reference size 'Its own size', or --no-kontext-auto-resize, keeps its size).")


def reference_image(request: GenerationRequest) -> Image.Image:
    paths = request.reference_paths
    if len(paths) < 2:
        return required_image(paths[0] if paths else None, "a reference image", "--image-path")
    return stitched_files(paths)


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    check_in_channels(model, packed_channels(model), "Kontext", "FLUX.1-Kontext")
    reference = reference_image(request)
    sized_by_stitch = len(request.reference_paths) > 1 and request.width is None and request.height is None
    multiple = 2 * model.vae_scale_factor
    if model.native_sizes:  # a demo model was taught with references of its own sizes: the output's, by resize mode
        request = with_size(request, reference)
        reference, notes = fit_input(reference, request)
        width, height = reference_size(reference, False, multiple)
    else:
        auto_resize = request.extra.get(KONTEXT_AUTO_RESIZE)
        width, height = reference_size(reference, None if auto_resize is None else bool(auto_resize), multiple)
        check_image_size(width, height, "The reference image, which Kontext uses at its own size,",
                         setting="image_path")
        resized = (width, height) != reference_size(reference, False, multiple)
        notes = (auto_resize_note(reference.size, width, height),) if resized else ()
    if (width, height) != reference.size:
        reference = reference.resize((width, height), Image.Resampling.LANCZOS)
    request = with_size(request, reference)
    if sized_by_stitch:  # as ComfyUI's Kontext template, whose latent is the stitched references'
        notes += (f"The output is {request.width}x{request.height}, the {len(request.reference_paths)} reference "
                  "images side by side; set a width and height for another size.",)
    engine.check_side_run(f"encoding the {width}x{height} reference",
                          *encoding_phase(model, (width, height), request.forced_vae_tile))
    conditioning = prompt_conditioning(model, request)
    conditioning.reference_tokens = encode_image(model, reference, width, height,
                                                 request.forced_vae_tile).astype(model.dtype)
    grid = (2 * (height // multiple), 2 * (width // multiple))
    conditioning.reference_ids = image_position_ids(*grid, first=1.0)
    return ToolInputs(request, conditioning, notes=notes)
