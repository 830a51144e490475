"""The memory plan of one request: before loading (from the files' configs and headers) and before
denoising (from the loaded model and what its tool built)."""

from dataclasses import replace

from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.memory import MemoryPlan, controlnet_step_bytes, transformer_step_bytes, vae_tile
from mflux_core.models.transformer import FluxTransformerConfig
from mflux_core.models.vae import VAEConfig
from mflux_core.models.vae_memory import vae_peak_bytes
from mflux_core.native_sizes import native_size_for, read_native_sizes
from mflux_core.request import MAX_SEQUENCE_LENGTH, GenerationRequest
from mflux_core.sampling.latents import latent_grid
from mflux_core.sampling.regional import attention_bias_bytes
from mflux_core.tools.specs import TILE_SIZE
from mflux_core.weights.resolve import ModelSource
from mflux_core.weights.component_folder import component_config

# Copies of the decoded float32 pixels beside MLX's while they become an 8-bit image: numpy's one
# (pixels_to_pil works in place) and the 8-bit image, a quarter of one.
PIXEL_COPIES = 1.25
INPUT_BYTES_PER_PIXEL = 5  # an 8-bit RGB input and its 8-bit mask, and a copy's slack (Fill's canvas, before the paste)


def image_plan(transformer: FluxTransformerConfig, vae: VAEConfig, width: int, height: int, *, extra_tokens: int,
               text_tokens: int, itemsize: int, weights_bytes: int, reserved_bytes: int, decode_tile: int | None,
               vae_itemsize: int, regional: bool = False, controlnets: tuple[FluxTransformerConfig, ...] = (),
               estimated: tuple[tuple[str, int], ...] = ()) -> MemoryPlan:
    """The `estimated` phases of side models, denoising steps over the image's tokens (plus `extra_tokens`, e.g. a
    Kontext reference; with the ControlNets' passes before each), then the decode. `regional`: the steps carry
    regional prompts' attention bias over the whole sequence."""
    scale = 2 ** (len(vae.block_out_channels) - 1)
    h, w = latent_grid(height, width, scale)
    image_tokens = (h // 2) * (w // 2) + extra_tokens
    decoding = "decoding" if decode_tile is None else f"decoding in {decode_tile} px tiles"
    decode = vae_peak_bytes(vae, h * scale, w * scale, vae_itemsize, "decode", decode_tile)
    pixels = h * scale * w * scale * 3 * 4
    bias = attention_bias_bytes(image_tokens + text_tokens, itemsize) if regional else 0
    step = (controlnet_step_bytes(transformer, controlnets, image_tokens, text_tokens, itemsize) if controlnets
            else transformer_step_bytes(transformer, image_tokens, text_tokens, itemsize))
    phases = (
        *estimated,
        ("denoising", step + bias),
        (decoding, decode),
        ("saving the image", int((1 + PIXEL_COPIES) * pixels)),
    )
    return MemoryPlan(f"a {width}x{height} image", weights_bytes, phases, reserved_bytes)


def plan_tool_run(model: FluxModel, inputs: ToolInputs, weights_bytes: int, reserved_bytes: int) -> MemoryPlan:
    """The plan of running a tool's inputs through the loop and decoding the result."""
    request, conditioning = inputs.request, inputs.conditioning
    width, height = inputs.canvas or (request.width, request.height)
    reference = conditioning.reference_tokens
    f = model.vae_scale_factor
    h, w = latent_grid(height, width, f)
    plan = image_plan(
        model.config, model.vae.config, width, height,
        extra_tokens=0 if reference is None else reference.shape[1], text_tokens=conditioning.text.shape[1],
        itemsize=model.dtype.size, weights_bytes=weights_bytes, reserved_bytes=reserved_bytes,
        decode_tile=model.vae_tile(h * f, w * f, "decode", request.forced_vae_tile), vae_itemsize=model.vae.dtype.size,
        regional=conditioning.attention_mask is not None, controlnets=inputs.controlnets, estimated=inputs.estimated,
    )
    return with_remedies(plan, request)


def plan_sized(model: FluxModel, request: GenerationRequest, canvas: tuple[int, int] | None, weights_bytes: int,
               reserved_bytes: int) -> MemoryPlan:
    """The plan of a request whose size the tool has decided, before it reads its inputs at that size (an outpaint
    canvas encoded): encoding an input image at that size, denoising and decoding; the tool's own extras are planned
    once it has built them."""
    width, height = canvas or (request.width, request.height)
    f = model.vae_scale_factor
    h, w = latent_grid(height, width, f)
    tile = model.vae_tile(h * f, w * f, "encode", request.forced_vae_tile)
    encoding = "encoding the input image" if tile is None else f"encoding the input image in {tile} px tiles"
    pixels = h * f * w * f * 3 * 4  # the input as float pixels, and Fill's masked copy of them, beside the encoder's
    encoded = ((encoding, 2 * pixels + vae_peak_bytes(model.vae.config, h * f, w * f, model.vae.dtype.size, "encode",
                                                      tile)),) if request.image_path else ()
    # what the tool then holds to the end beside the models: the input (a canvas) and its mask, 8-bit, for its finish
    held = h * f * w * f * INPUT_BYTES_PER_PIXEL if request.image_path else 0
    text_tokens = min(MAX_SEQUENCE_LENGTH, request.max_sequence_length or MAX_SEQUENCE_LENGTH)
    return with_remedies(image_plan(
        model.config, model.vae.config, width, height, extra_tokens=0, text_tokens=text_tokens,
        itemsize=model.dtype.size, weights_bytes=weights_bytes, reserved_bytes=reserved_bytes + held,
        decode_tile=model.vae_tile(h * f, w * f, "decode", request.forced_vae_tile), vae_itemsize=model.vae.dtype.size,
        estimated=encoded,
    ), request)


def is_whole_upscale(request: GenerationRequest) -> bool:
    return request.tool == "upscale" and request.extra.get(TILE_SIZE) is None


def with_remedies(plan: MemoryPlan, request: GenerationRequest) -> MemoryPlan:
    """The plan, whose refusal names tiles first for an upscale in one piece."""
    return replace(plan, remedies=f"upscale in tiles (a tile size), {plan.remedies}") if is_whole_upscale(request) \
        else plan


def plan_from_files(source: ModelSource, request: GenerationRequest, itemsize: int, weights_bytes: int,
                    reserved_bytes: int, allowance: int) -> MemoryPlan | None:
    """The plan of a request from its model's config files, before anything is loaded, at the size the model makes
    (a demo model's nearest native size); None where the size is only known once the tool has read its input image,
    the request is made in tiles (planned per tile), or the transformer is a single file."""
    if source.transformer_file is not None or (request.tool == "upscale" and not is_whole_upscale(request)):
        return None
    vae = VAEConfig.from_dict(component_config(source.component("vae"), "vae"))
    width, height = request.width, request.height
    if width is None or height is None:
        if request.tool != "generate" or request.image_path:
            return None
        width, height = width or vae.native_side, height or vae.native_side
    width, height = native_size_for(read_native_sizes(source.folder), width, height) or (width, height)
    transformer = FluxTransformerConfig.from_dict(component_config(source.folder / "transformer"))
    prompts = 1 + len(request.regions or ())  # each region's prompt is encoded on its own, after the base one
    text_tokens = prompts * min(MAX_SEQUENCE_LENGTH, request.max_sequence_length or MAX_SEQUENCE_LENGTH)
    return with_remedies(image_plan(
        transformer, vae, width, height, extra_tokens=0, text_tokens=text_tokens, itemsize=itemsize,
        weights_bytes=weights_bytes, reserved_bytes=reserved_bytes, vae_itemsize=itemsize, regional=prompts > 1,
        decode_tile=vae_tile(vae, height, width, itemsize, "decode", allowance, request.forced_vae_tile),
    ), request)
