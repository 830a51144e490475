"""What the ControlNet tools (canny, upscale) share: load the side networks, encode each control
image once, and hand the loop a closure that runs the ControlNets before every transformer call.

The maths follows diffusers' FluxControlNetPipeline: the control image is resized like any VAE
input, encoded (posterior mean), normalised and packed; each step the ControlNet sees the noisy
latents, the control latents, the prompt, the timestep and, only if its own config has a guidance
embedding, the guidance scale (even when the base model, e.g. schnell, has none). A Union ControlNet
also gets its control mode (diffusers' `control_mode`): the request's control type, else the tool's own.
"""

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.images.canny import DEFAULT_HIGH, DEFAULT_LOW, canny_edges
from mflux_core.images.io import pil_to_pixels
from mflux_core.memory import HINT_PHASE
from mflux_core.models.controlnet import HINT_SCALE, FluxControlNet, load_controlnet
from mflux_core.models.transformer import ControlNetResiduals, FluxTransformerConfig
from mflux_core.request import GenerationRequest
from mflux_core.sampling.conditioning import Conditioning, ControlResiduals
from mflux_core.sampling.latents import image_position_ids, latent_grid, text_position_ids
from mflux_core.settings_schema import UNION_CONTROL_TYPES
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.common import check_in_channels, packed_channels, prompt_conditioning
from mflux_core.tools.specs import tool_spec
from mflux_core.weights.float8_loading import load_held_in_fp8
from mflux_core.weights.quantize import quantize_model
from mflux_core.weights.resolve import ALIASES, is_demo_folder, side_model_for

CONTROL_TYPE_ALIASES = {"openpose": "pose", "grey": "gray", "lq": "low-quality", "low quality": "low-quality"}


@dataclass(frozen=True)
class Steering:
    """The resident ControlNet a request runs, the control type its image is prepared for, the control mode it gets
    (None: not a Union ControlNet), and what the user should hear of it."""

    controlnet: FluxControlNet
    name: str  # as the request names it, or the tool's default (what the image's record says it ran)
    kind: str
    mode: int | None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet a request runs: the network and its mode (`side`), the image it sees (at the output size) and
    how strongly it steers."""

    side: Steering
    image: Image.Image
    strength: float
    record: dict | None = None  # what it ran with, kept with the image (unit_record); None: nothing to record


def extra_number(request: GenerationRequest, key: str, default: float | None) -> float | None:
    """A numeric tool setting from request.extra (canny thresholds, upscale factor), or `default`."""
    value = request.extra.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"The setting {key} must be a number, not {value!r}.")
    return float(value)


CANNY_THRESHOLDS = {"canny_low": "low", "canny_high": "high"}  # request.extra key -> canny_edges argument


def requested_canny_edges(image: Image.Image, request: GenerationRequest) -> Image.Image:
    """The image's Canny edges at the request's thresholds (canny_low, canny_high; OpenCV's defaults otherwise)."""
    thresholds = {arg: extra_number(request, key, None) for key, arg in CANNY_THRESHOLDS.items()
                  if request.extra.get(key) is not None}
    return canny_edges(image, **thresholds)


def controlnet_name(model: FluxModel, request: GenerationRequest, default_name: str) -> str:
    """The ControlNet the request names (--controlnet-path), else `default_name`, or its demo twin on a demo model."""
    return request.extra.get("controlnet_path") or side_model_for(model.folder, default_name)


def resident_controlnet(model: FluxModel, request: GenerationRequest, engine: ToolEngine,
                        default_name: str) -> FluxControlNet:
    """The ControlNet named by --controlnet-path (else `default_name`, or its demo twin on a demo model), loaded once
    in the model's dtype and quantized as the request asks (as mflux does: a FLUX.1 ControlNet is gigabytes)."""
    name = controlnet_name(model, request, default_name)
    if name in ALIASES and is_demo_folder(model.folder):  # refused before a multi-GB download
        raise InvalidRequest(f"The ControlNet {name} is made for FLUX.1-dev and cannot drive the demo model "
                             f"{model.folder.name}: put FLUX.1-dev and {ALIASES[name]} into the models folder, or "
                             "download them once online.")
    axes = tuple(model.config.axes_dims_rope)  # an XLabs single file's RoPE: its base model's

    def load(path):  # an FP8 file's linear layers held in FP8, as the transformer's (and as the plan counts them)
        return quantize_model(load_held_in_fp8(partial(load_controlnet, path, model.dtype, axes), path),
                              request.quantize)

    # a single file loads only with the axes its heads fit, so the dtype and bits alone tell its loads apart
    variant = str(model.dtype).removeprefix("mlx.core.") + (f" {request.quantize}-bit" if request.quantize else "")
    return engine.auxiliary_model(name, load, variant, beside=model, check=partial(check_steers, model, name))


def check_steers(model: FluxModel, name: str, controlnet: FluxControlNet) -> None:
    """Refuses a ControlNet made for another transformer's width, input channels, text widths or token size."""
    made_for = (controlnet.config.hidden_size, controlnet.config.in_channels)
    if made_for != (model.config.hidden_size, model.config.in_channels):
        raise InvalidRequest(
            f"The ControlNet {name} was made for a transformer of width {made_for[0]} with {made_for[1]} input "
            f"channels; this model has width {model.config.hidden_size} and {model.config.in_channels} channels."
        )
    reads = (controlnet.config.joint_attention_dim, controlnet.config.pooled_projection_dim)
    if reads != (model.config.joint_attention_dim, model.config.pooled_projection_dim):
        raise InvalidRequest(
            f"The ControlNet {name} reads text encodings {reads[0]} wide (pooled {reads[1]}); this model's text "
            f"encoders give {model.config.joint_attention_dim} (pooled {model.config.pooled_projection_dim}), so it "
            "was made for another model."
        )
    if controlnet.takes_pixels and HINT_SCALE * controlnet.hint.patch != 2 * model.vae_scale_factor:
        raise InvalidRequest(f"The ControlNet {name} makes a token of each {HINT_SCALE * controlnet.hint.patch} px "
                             f"square; this model's tokens are {2 * model.vae_scale_factor} px squares.")


def control_type(request: GenerationRequest, default: str) -> str:
    """The control type the request asks for (--controlnet-mode, one of UNION_CONTROL_TYPES), else `default`."""
    value = request.extra.get("controlnet_mode")
    if value is None or value == "":
        return default
    name = str(value).strip().lower().replace("_", "-")
    name = CONTROL_TYPE_ALIASES.get(name, name)
    if name not in UNION_CONTROL_TYPES:
        raise InvalidRequest(f"The ControlNet control type {value!r} is not one of {', '.join(UNION_CONTROL_TYPES)}.")
    return name


def steering(model: FluxModel, request: GenerationRequest, engine: ToolEngine, default_controlnet: str,
             default_type: str) -> Steering:
    """The request's ControlNet, loaded, and its control mode. A ControlNet without modes (Shakker-Labs'
    Union-Pro-2.0 takes any kind of image so) gets the image prepared for the asked type, with a note; a mode a
    Union ControlNet lacks is refused."""
    kind = control_type(request, default_type)  # an unknown type refused before the ControlNet loads
    controlnet = resident_controlnet(model, request, engine, default_controlnet)
    name = controlnet_name(model, request, default_controlnet)
    if not controlnet.is_union:
        if kind == default_type:
            return Steering(controlnet, name, kind, None)
        return Steering(controlnet, name, kind, None, (f"{name} has no control modes: it was given the {kind} "
                                                       "control image as its input (as Union-Pro-2.0 takes any "
                                                       "kind).",))
    mode = UNION_CONTROL_TYPES.index(kind)
    if mode >= controlnet.num_modes:
        raise InvalidRequest(f"This Union ControlNet has {controlnet.num_modes} control modes, so it has no "
                             f"{kind} mode (number {mode}).")
    return Steering(controlnet, name, kind, mode)


def unit_record(side: Steering, request: GenerationRequest, preprocessor: str | None) -> dict:
    """What one ControlNet ran with, kept in the image's metadata (metadata.py also writes it as A1111's
    "ControlNet N" item): the network, control type, strength and what made its image (canny, depth, gray or
    None: the image as given), with the Canny thresholds when they did."""
    record = {"controlnet": side.name, "type": side.kind, "strength": request.controlnet_strength,
              "preprocessor": preprocessor}
    if preprocessor == "canny":
        record.update({key: extra_number(request, key, default) for key, default in
                       (("canny_low", DEFAULT_LOW), ("canny_high", DEFAULT_HIGH))})
    return record


def controlnet_residuals(controlnet: FluxControlNet, control_tokens: mx.array, text_tokens: int,
                         image_ids: mx.array, strength: float, guidance: float, mode: int | None,
                         base_blocks: int) -> ControlResiduals:
    """One ControlNet's residuals, as the loop's `Conditioning.control`: (latents, timestep, base guidance, the step's
    prompt tokens and pooled vector) -> scaled residuals. `base_blocks`: the main transformer's double blocks, which
    an XLabs ControlNet's samples repeat over."""
    text_ids = text_position_ids(text_tokens)
    rope = controlnet.rope_tables(image_ids, text_ids)
    controlnet_guidance = mx.array([guidance], dtype=mx.float32) if controlnet.config.guidance_embeds else None
    dtype = controlnet.dtype
    control_tokens = control_tokens.astype(dtype)

    def residuals(latents: mx.array, timestep: mx.array, _base_guidance: mx.array | None, text: mx.array,
                  pooled: mx.array):
        blocks, singles = controlnet(
            latents.astype(dtype), control_tokens, text, pooled, timestep, image_ids,
            text_ids, guidance=controlnet_guidance, conditioning_scale=strength, rope=rope, mode=mode,
        )
        if controlnet.takes_pixels and blocks:  # diffusers' controlnet_blocks_repeat: sample i % n after block i
            blocks = [blocks[i % len(blocks)] for i in range(base_blocks)]
        # Evaluated before the transformer's pass, so the two passes' activations are never alive at once
        # (one lazy graph overlapped them: +65% at 512 px on the demo) and the step's peak is what the plan says.
        mx.eval(blocks, singles)
        return blocks, singles

    return residuals


def summed_samples(per_unit: list[list[mx.array]], main_blocks: int) -> list[mx.array]:
    """Several ControlNets' samples as one per main block: each ControlNet's spread over the blocks as it alone
    would be (ControlNetResiduals.per_block), then added; blocks whose samples are the same share one sum. Where the
    ControlNets have as many blocks as each other this is diffusers' FluxMultiControlNetModel, which adds sample i
    to sample i (with different counts it drops the longer lists' tails; here each keeps its own spread)."""
    spread = [ControlNetResiduals.per_block(samples, main_blocks) for samples in per_unit if samples]
    sums: dict[tuple[int, ...], mx.array] = {}
    for parts in zip(*spread):
        key = tuple(map(id, parts))
        if key not in sums:
            sums[key] = sum(parts[1:], parts[0])
    return [sums[tuple(map(id, parts))] for parts in zip(*spread)]


def all_residuals(parts: list[ControlResiduals], main_blocks: tuple[int, int]) -> ControlResiduals:
    """The loop's `Conditioning.control` for several ControlNets: each one's residuals (evaluated one ControlNet
    at a time), summed per main block and evaluated, so only the sums reach the transformer's pass."""
    if len(parts) == 1:
        return parts[0]

    def residuals(latents: mx.array, timestep: mx.array, base_guidance: mx.array | None, text: mx.array,
                  pooled: mx.array):
        per_unit = [part(latents, timestep, base_guidance, text, pooled) for part in parts]
        blocks = summed_samples([blocks for blocks, _ in per_unit], main_blocks[0])
        singles = summed_samples([singles for _, singles in per_unit], main_blocks[1])
        mx.eval(blocks, singles)
        return blocks, singles

    return residuals


def with_default_strength(request: GenerationRequest, default_strength: float) -> GenerationRequest:
    return request if request.controlnet_strength is not None else request.with_(controlnet_strength=default_strength)


def controlnet_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine, units: list[ControlUnit], *,
                      tool: str, notes: tuple[str, ...] = (),
                      estimated: tuple[tuple[str, int], ...] = ()) -> ToolInputs:
    """ToolInputs for a request whose size and ControlNet strengths are set: the prompt plus the ControlNets'
    residuals from their control images."""
    check_in_channels(model, packed_channels(model), tool, "base (dev or schnell)")
    conditioning = prompt_conditioning(model, request)
    controlnets = add_controlnets(model, request, engine, conditioning, units)
    side_notes = tuple(note for unit in units for note in unit.side.notes)
    records = [unit.record for unit in units if unit.record is not None]
    return ToolInputs(request, conditioning, notes=notes + side_notes, controlnets=controlnets, estimated=estimated,
                      recorded={"controlnets": records} if records else {})


def add_controlnets(model: FluxModel, request: GenerationRequest, engine: ToolEngine, conditioning: Conditioning,
                    units: list[ControlUnit]) -> tuple[FluxTransformerConfig, ...]:
    """Steer `conditioning` by each unit's control image through its ControlNet (their residuals, summed, before
    every transformer call); the ControlNets' configs (for the plan). The request's size must be set."""
    # A base without a guidance embedding (schnell) still hands one to a ControlNet that has it.
    controlnet_guidance = tool_spec(request.tool).guidance if request.guidance is None else request.guidance
    image_ids = image_position_ids(*latent_grid(request.height, request.width, model.vae_scale_factor))
    parts = []
    for unit in units:
        controlnet = unit.side.controlnet
        if controlnet.takes_pixels:  # XLabs: its hint block reads the pixels (once per image), not the VAE's latents
            engine.check_side_run(f"the ControlNet's reading of a {request.width}x{request.height} control image",
                                  HINT_PHASE, controlnet.hint_peak_bytes(request.width, request.height))
            control_tokens = controlnet.hint_tokens(mx.array(pil_to_pixels(unit.image, request.width,
                                                                           request.height)))
            mx.eval(control_tokens)
        else:
            control_tokens = engine.encoded_image(model, unit.image, request.width, request.height,  # once per image
                                                  request.forced_vae_tile)
        parts.append(controlnet_residuals(controlnet, control_tokens, conditioning.text.shape[1], image_ids,
                                          unit.strength, controlnet_guidance, unit.side.mode, model.config.num_layers))
    conditioning.control = all_residuals(parts, (model.config.num_layers, model.config.num_single_layers))
    return tuple(unit.side.controlnet.config for unit in units)
