"""Fill (FLUX.1-Fill-dev): inpaint inside a mask, or outpaint onto a padded canvas.

The transformer sees 384 channels per token at full size: 64 noisy latents, 64 latents of the
image with the masked area blanked, and 256 for the mask itself (the pixel mask unshuffled by the
VAE factor, 8x8, then packed 2x2), mask and image processed exactly as diffusers does.

On a base model (dev, schnell, a finetune: 64 channels, no mask input) it inpaints as diffusers'
FluxInpaintPipeline does: after every step the latents outside the mask are the image's, noised to the next
step (sampling.loop.KeptLatents), the mask taken at latent resolution (each 8x8 block's first pixel, as torch's
nearest resize).
"""

from collections.abc import Callable

import mlx.core as mx
import numpy as np
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.io import load_mask, pil_to_pixels
from mflux_core.images.inpaint_area import box_at_aspect, feather_px, masked_area, pasted_back, processing_size
from mflux_core.images.masks import (
    binarize_mask, describe_mask_problem, feathered_paste, filled_from_surroundings, mask_to_pil, soft_mask,
)
from mflux_core.images.outpaint import outpaint_canvas, parse_padding
from mflux_core.images.resize_modes import JUST_RESIZE, resize_to
from mflux_core.request import GenerationRequest, check_image_size, existing_file
from mflux_core.sampling.latents import pack_latents
from mflux_core.settings_schema import MASKED_CONTENTS
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.specs import MASKED_CONTENT
from mflux_core.tools.common import (
    check_in_channels, encode_pixels, encoding_phase, fit_input, packed_channels, prompt_conditioning, required_image,
    with_size,
)

def fill_channels(model: FluxModel) -> int:
    """Noisy latents + masked-image latents + the packed pixel mask (64 + 64 + 256 = 384 at full size)."""
    return 2 * packed_channels(model) + 4 * model.vae_scale_factor**2


def mask_at_size(mask: Image.Image, width: int, height: int, mode: str) -> np.ndarray:
    """Grayscale, resized (Lanczos, by the image's resize mode) to the output size, thresholded at 50%: diffusers'
    mask processing, with the same geometry as the image."""
    return binarize_mask(resize_to(mask.convert("L"), width, height, mode))


def packed_mask(mask: np.ndarray, scale: int) -> mx.array:
    """(H, W) bool -> (1, tokens, scale*scale*4): each latent pixel carries its scale x scale pixel block."""
    height, width = mask.shape
    h, w = height // scale, width // scale
    blocks = mask.astype(np.float32).reshape(h, scale, w, scale).transpose(1, 3, 0, 2)
    return pack_latents(mx.array(blocks.reshape(1, scale * scale, h, w)))


def fill_conditioning(model: FluxModel, pixels: mx.array, mask: np.ndarray, forced_tile: int = 0) -> mx.array:
    """Fill's extra channels per token: the latents of the image with the masked area blanked, then the packed
    mask; `pixels` (1, H, W, 3) in [-1, 1], `mask` (H, W) bool, True where the model paints."""
    masked_latents = encode_pixels(model, pixels * (1.0 - mask[None, :, :, None]), forced_tile)
    return mx.concatenate([masked_latents, packed_mask(mask, model.vae_scale_factor)], axis=-1)


def fill_canvas(request: GenerationRequest, token_side: int) -> tuple[Image.Image, Image.Image]:
    """The image and mask to fill: the user's pair, or an outpaint canvas built from the padding, grown to whole
    tokens of `token_side` px (so that no padding is cropped off to make a size the model makes)."""
    image = required_image(request.image_path, "an image to fill", "--image-path")
    if request.outpaint_padding and request.masked_image_path:
        raise InvalidRequest("Fill inpaints inside a mask or outpaints a padded canvas, not both: give "
                             "--masked-image-path or --outpaint-padding.")
    if request.outpaint_padding:
        return outpaint_canvas(image, parse_padding(request.outpaint_padding, image.width, image.height), token_side)
    if not request.masked_image_path:
        raise InvalidRequest("Fill needs a mask (white = regenerate): pass --masked-image-path or --outpaint-padding.")
    return image, load_mask(existing_file(request.masked_image_path, "mask image"))


def kept_outside_mask(original: Image.Image, mask: np.ndarray, width: int, height: int,
                      blurred: np.ndarray | None = None) -> Callable[[Image.Image], Image.Image]:
    """keep_unmasked's finish: the original pasted back outside the mask, blended over a 64th of the shorter side
    (4 px at least), and as far as the blurred mask reaches."""
    return lambda generated: feathered_paste(original, generated, mask, feather_px(width, height), blurred)


def mask_weights(mask_image: Image.Image, width: int, height: int, mode: str) -> np.ndarray:
    """The mask's grey levels at the output size, in [0, 1]: the paste's weights (a blurred mask's soft edge)."""
    return np.asarray(resize_to(mask_image.convert("L"), width, height, mode), dtype=np.float32) / 255.0


def latent_mask(mask: np.ndarray, scale: int, latent_channels: int) -> mx.array:
    """(H, W) bool -> the packed latents' mask (1, tokens, 4 * latent_channels): 1 where the model paints."""
    blocks = np.repeat(mask[None, None, ::scale, ::scale].astype(np.float32), latent_channels, axis=1)
    return pack_latents(mx.array(blocks))


def masked_content(request: GenerationRequest) -> str:
    """What the masked area starts from with an image strength: "original" (default) or "fill"."""
    content = request.extra.get(MASKED_CONTENT, MASKED_CONTENTS[0])
    if content not in MASKED_CONTENTS:
        raise InvalidRequest(f"The masked content {str(content)[:40]!r} is not one Fill has: use "
                             f"{' or '.join(MASKED_CONTENTS)}.")
    return content


def start_pixels(request: GenerationRequest, image: Image.Image, mask: np.ndarray,
                 pixels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """The pixels an image strength starts from: the image's, or with masked content "fill" the image with its masked
    area painted from the colours around it (and a note when there is no image strength to start from). As A1111, a
    base model also keeps these latents outside the mask (the original comes back there with keep_unmasked, A1111's
    overlay)."""
    if masked_content(request) != "fill":
        return pixels, ()
    if request.image_strength is None:
        return pixels, ("Masked content 'fill' needs an image strength above 0: the masked area started from noise.",)
    return pil_to_pixels(filled_from_surroundings(image, mask), request.width, request.height), ()


def is_base_model(model: FluxModel) -> bool:
    return model.input_channels == packed_channels(model)


def build_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine) -> ToolInputs:
    if not is_base_model(model):
        check_in_channels(model, fill_channels(model), "Fill", "FLUX.1-Fill (or a base model: dev, schnell)")
    masked_content(request)  # a bad one is refused before the images are read
    image, mask_image = fill_canvas(request, model.token_side)
    if request.mask_blur:  # A1111's mask blur: the model paints where the blurred mask is at least half
        mask_image = soft_mask(mask_image, request.mask_blur)
    if request.only_masked_padding is not None:
        return masked_area_inputs(model, request, image, mask_image)
    return fill_inputs(model, with_size(request, image), image, mask_image)  # a size given resizes the canvas


def fill_inputs(model: FluxModel, request: GenerationRequest, image: Image.Image, mask_image: Image.Image,
                notes: tuple[str, ...] = (), finish: Callable[[Image.Image], Image.Image] | None = None) -> ToolInputs:
    """Fill's inputs for `image` and its mask at the request's size; `finish`: what becomes of the result (default:
    keep_unmasked's paste, or nothing)."""
    image, resize_notes = fit_input(image, request)
    mask = mask_at_size(mask_image, request.width, request.height, request.resize_mode)
    problem = describe_mask_problem(mask)
    if problem:
        raise InvalidRequest(problem)
    pixels = pil_to_pixels(image, request.width, request.height)
    start, content_notes = start_pixels(request, image, mask, pixels)
    notes = (*notes, *resize_notes, *content_notes)
    conditioning = prompt_conditioning(model, request)
    if finish is None and request.keep_unmasked:
        blurred = mask_weights(mask_image, request.width, request.height, request.resize_mode) if request.mask_blur \
            else None
        finish = kept_outside_mask(image, mask, request.width, request.height, blurred)
    forced_tile = request.forced_vae_tile
    encoding = (encoding_phase(model, (request.width, request.height), forced_tile),)
    if is_base_model(model):  # the image's latents are kept outside the mask: from noise inside, unless a strength
        return ToolInputs(request, conditioning, start_image_latents=encode_pixels(model, start, forced_tile),
                          image_strength=request.image_strength, finish=finish, notes=notes,
                          estimated=encoding, repaint_mask=latent_mask(mask, model.vae_scale_factor,
                                                                       model.latent_channels))
    conditioning.extra_channels = fill_conditioning(model, pixels, mask, forced_tile).astype(model.dtype)
    start_latents = None if request.image_strength is None else encode_pixels(model, start, forced_tile)
    return ToolInputs(request, conditioning, start_image_latents=start_latents, image_strength=request.image_strength,
                      finish=finish, notes=notes, estimated=encoding)


def masked_area_inputs(model: FluxModel, request: GenerationRequest, image: Image.Image,
                       mask_image: Image.Image) -> ToolInputs:
    """Inpaint area "Only masked": the box around the mask (and its padding) at the request's size, by default the
    box's shape at the model's native area; the result is pasted back into the image at the image's size."""
    check_image_size(*image.size, "The result (only the masked area is inpainted; the image keeps its size)")
    mask = mask_at_size(mask_image, image.width, image.height, request.resize_mode)
    problem = describe_mask_problem(mask)
    if problem:
        raise InvalidRequest(problem)
    blurred = mask_weights(mask_image, image.width, image.height, request.resize_mode) if request.mask_blur else None
    box, feather = masked_area(mask if blurred is None else blurred > 0, request.only_masked_padding)
    width, height = processing_size(box, model.native_side)
    request = with_size(request.with_(width=request.width or width, height=request.height or height))
    box = box_at_aspect(box, request.width, request.height, image.size)
    crop = resize_to(image.crop(box), request.width, request.height, JUST_RESIZE)
    crop_mask = resize_to(mask_to_pil(mask[box.top:box.bottom, box.left:box.right]), request.width, request.height,
                          JUST_RESIZE)
    note = (f"Only the masked area was inpainted: {box.size[0]}x{box.size[1]} pixels around the mask, at "
            f"{request.width}x{request.height}, pasted back into the {image.width}x{image.height} image.")
    return fill_inputs(model, request, crop, crop_mask, (note,),
                       lambda generated: pasted_back(image, generated, box, mask, feather, blurred))
