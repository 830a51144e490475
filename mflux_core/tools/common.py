"""Pieces every tool uses: sizes, prompt conditioning, loading and encoding input images."""

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace

import mlx.core as mx
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.io import load_image, pil_to_pixels
from mflux_core.images.resize_modes import resize_note, resize_to
from mflux_core.models.vae import FLUX_SIDE
from mflux_core.models.vae_memory import vae_peak_bytes
from mflux_core.request import MAX_SEQUENCE_LENGTH, GenerationRequest, clean_prompt, existing_file, size_of_input
from mflux_core.prompt_schedule import prompt_schedule
from mflux_core.sampling.conditioning import Conditioning, NegativePrompt, PromptChange
from mflux_core.sampling.latents import pack_latents
from mflux_core.sampling.schedule import configured_sampling
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.specs import tool_spec

DEFAULT_IMAGE_STRENGTH = 0.4  # mflux's: how much of an image-to-image input is kept


class SizeDecided(Exception):
    """What `with_size` raises while the manager probes a tool for the size it would make (`probing_size`): the
    request with its size, and the canvas of a tool that paints several panels across."""

    def __init__(self, request: GenerationRequest, canvas: tuple[int, int] | None):
        super().__init__("the tool's size is decided")
        self.request, self.canvas = request, canvas


_probing_size = ContextVar("probing_size", default=False)


@contextmanager
def probing_size():
    """Within: a tool's build stops where its size is decided (SizeDecided), before its inputs are prepared at
    that size. The manager probes so for a model that makes only some sizes (a demo model): a 4000 x 3000 photo
    is then read at the size the model makes, not encoded at its own first (minutes on the CPU)."""
    token = _probing_size.set(True)
    try:
        yield
    finally:
        _probing_size.reset(token)


def with_size(request: GenerationRequest, image: Image.Image | None = None, native_side: int = FLUX_SIDE,
              panels: int = 1) -> GenerationRequest:
    """Fill in a missing width/height: the input image's size (request.size_of_input), or else the model's
    native side (FluxModel.native_side: 1024 for FLUX.1, 64 for the demo models). `panels`: the tool paints
    that many of this size side by side (an in-context diptych: 2). Every tool decides its size here."""
    if request.width is None or request.height is None:
        width, height = size_of_input(*image.size) if image else (native_side, native_side)
        request = request.with_(width=request.width or width, height=request.height or height)
    if _probing_size.get():
        raise SizeDecided(request, (panels * request.width, request.height) if panels > 1 else None)
    return request


def resolved_request(model: FluxModel, request: GenerationRequest) -> GenerationRequest:
    """The request with what the model and the tool decide before any input is read: the T5 token count, the
    tool's default guidance (for models with a guidance embedding), and the schedule and sampler the model's scheduler
    config asks for where the request keeps the defaults; recorded so the request replays."""
    defaults = GenerationRequest()
    sampling = {key: value for key, value in configured_sampling(model.scheduler_config).items()
                if getattr(request, key) == getattr(defaults, key)}
    guidance = request.guidance
    if guidance is None and model.has_guidance:
        spec = tool_spec(request.tool)
        on_base = spec.base_guidance is not None and model.input_channels == packed_channels(model)
        guidance = spec.base_guidance if on_base else spec.guidance
    length = request.max_sequence_length or default_sequence_length(model.text_encoders, request.tool)
    return request.with_(guidance=guidance, max_sequence_length=length, **sampling)


def default_sequence_length(encoders, tool: str) -> int:
    """T5 tokens when the request sets none: the model's default for each picture the tool's prompt describes,
    plus the tool's prompt template's own tokens, so the template takes no room from the user's words (up to 512:
    FLUX.1 folders are at 512 already; the demo models' 32 would cut IC-Edit's instruction off behind its
    ~100-token template, and an In-Context prompt's right panel behind its left)."""
    spec = tool_spec(tool)
    template = spec.prompt_template
    extra = encoders.t5_token_count(template.format(instruction="")) - 1 if template else 0  # one end token
    return min(MAX_SEQUENCE_LENGTH, encoders.default_sequence_length * spec.prompt_pictures + extra)


def tool_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine | None = None) -> ToolInputs:
    """What the request's tool builds for the runner, from the request resolved once (`engine`: None only for
    tools that need nothing beyond the model, as training's validation images of `generate`)."""
    return tool_spec(request.tool).build_inputs(model, resolved_request(model, request), engine)


def prompt_conditioning(model: FluxModel, request: GenerationRequest) -> Conditioning:
    """The prompt's embeddings and guidance; with true CFG, the negative prompt's embeddings too; each with the
    later prompts its A1111 prompt editing ([from:to:when], [a|b]) switches to, by step."""
    steps = request.steps or model.default_steps
    (text, pooled), changes = scheduled_embeddings(model, request.prompt, steps, request.max_sequence_length)
    guidance = request.guidance if model.has_guidance else None  # schnell's may still steer a ControlNet
    negative = None
    if request.uses_true_cfg:
        (negative_text, negative_pooled), negative_changes = scheduled_embeddings(
            model, request.negative_prompt, steps, request.max_sequence_length)
        negative = NegativePrompt(negative_text, negative_pooled, scale=request.true_cfg_scale,
                                  changes=negative_changes)
    return Conditioning(text=text, pooled=pooled, guidance=guidance, negative=negative, changes=changes)


def scheduled_embeddings(model: FluxModel, prompt: str, steps: int,
                         max_sequence_length: int) -> tuple[tuple[mx.array, mx.array], tuple[PromptChange, ...]]:
    """The first step's prompt embeddings, and each later prompt's with the step it starts at (each distinct text
    encoded once)."""
    schedule = prompt_schedule(prompt, steps)
    encoded = {text: prompt_embeddings(model, text, max_sequence_length) for _, text in schedule}
    changes = tuple(PromptChange(last + 1, *encoded[text]) for (last, _), (_, text) in zip(schedule, schedule[1:]))
    return encoded[schedule[0][1]], changes


def prompt_embeddings(model: FluxModel, prompt: str, max_sequence_length: int) -> tuple[mx.array, mx.array]:
    """(T5 tokens, CLIP pooled vector) of a prompt, in the model's dtype, through the cached text encoders."""
    embeddings = model.text_encoders.encode(clean_prompt(prompt), max_sequence_length)
    return embeddings.t5.astype(model.dtype), embeddings.pooled.astype(model.dtype)


def fit_input(image: Image.Image, request: GenerationRequest) -> tuple[Image.Image, tuple[str, ...]]:
    """An input image at the request's (set) output size by its resize mode, and a note when it was resized."""
    width, height, mode = request.width, request.height, request.resize_mode
    note = resize_note(image.size, width, height, mode)
    return resize_to(image, width, height, mode), (note,) if note else ()


def required_image(path: str | None, what: str, flag: str) -> Image.Image:
    if not path:
        raise InvalidRequest(f"This tool needs {what}: pass {flag}.")
    return load_image(existing_file(path, what.removeprefix("an ").removeprefix("a ")))  # "The input image ..."


def encode_pixels(model: FluxModel, pixels, forced_tile: int = 0) -> mx.array:
    """(1, H, W, 3) pixels in [-1, 1] -> packed latents (posterior mean, normalised), float32; encoded in
    tiles of the side `forced_tile` asks for (the request's forced_vae_tile), or smaller ones where the whole would not
    fit the model's memory allowance."""
    _, height, width, _ = pixels.shape
    tile = model.vae_tile(height, width, "encode", forced_tile)
    latents = model.vae.encode(mx.array(pixels), tiled=tile is not None, tile_size=tile or 0)
    return pack_latents(latents.astype(mx.float32))


def encode_image(model: FluxModel, image: Image.Image, width: int, height: int, forced_tile: int = 0) -> mx.array:
    """An RGB image resized like diffusers' VaeImageProcessor, VAE-encoded (as encode_pixels) and packed."""
    return encode_pixels(model, pil_to_pixels(image, width, height), forced_tile)


def start_image_inputs(model: FluxModel, inputs: ToolInputs, image: Image.Image) -> ToolInputs:
    """`inputs` made to start from `image` (image-to-image, as diffusers' Img2Img pipelines): the image at the
    request's size, encoded, noised to the request's image strength (mflux's default when it sets none)."""
    request = inputs.request
    if request.image_strength is None:
        request = request.with_(image_strength=DEFAULT_IMAGE_STRENGTH)
    image, notes = fit_input(image, request)
    latents = encode_image(model, image, request.width, request.height, request.forced_vae_tile)
    return replace(inputs, request=request, start_image_latents=latents, image_strength=request.image_strength,
                   notes=inputs.notes + notes,
                   estimated=inputs.estimated + (encoding_phase(model, image.size, request.forced_vae_tile),))


def encoding_phase(model: FluxModel, size: tuple[int, int], forced_tile: int = 0) -> tuple[str, int]:
    """(phase, peak bytes above the weights) of encode_pixels on an image of `size`, for the run's memory plan."""
    width, height = size
    tile = model.vae_tile(height, width, "encode", forced_tile)
    phase = "encoding the input image" + (f" in {tile} px tiles" if tile else "")
    return phase, vae_peak_bytes(model.vae.config, height, width, model.vae.dtype.size, "encode", tile)


def packed_channels(model: FluxModel) -> int:
    """Channels of one packed latent token (64 for FLUX.1's 16-channel VAE)."""
    return 4 * model.latent_channels


def check_in_channels(model: FluxModel, expected: int, tool: str, model_kind: str) -> None:
    """Refuse a transformer that was not trained for this tool (e.g. Fill weights asked to do text-to-image)."""
    if model.input_channels != expected:
        widened = model.input_channels != model.config.in_channels
        raise InvalidRequest(
            f"The model {model.name or model.folder} takes {model.input_channels} input channels per token"
            f"{' with its control LoRA (use that on the Depth tool)' if widened else ''}; "
            f"{tool} needs a {model_kind} model ({expected} channels)."
        )
