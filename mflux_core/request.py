"""GenerationRequest: every setting of one image, validated once, shared by the CLI, the UI and presets."""

import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from mflux_core.controlnet_units import units_problem, unit_without_image
from mflux_core.errors import InvalidRequest
from mflux_core.regions import MAX_REGIONS, check_regions_fit, regions_problem
from mflux_core.settings_schema import (  # the limits are imported from here too
    DTYPES, GUIDANCE, LORA_SCALE, LORA_TEXT_ENCODER_SCALE, MAX_INPUT_PIXELS, MAX_PIXELS, MAX_PROMPT_CHARS, MAX_SEED,
    MAX_SEQUENCE_LENGTH, MAX_SIDE, MAX_STEPS, QUANTIZE, QUANTIZE_BITS, SEED, SEQUENCE_LENGTH, STEPS, TRUE_CFG_SCALE,
    VARIATION_SEED, Setting, checked, choice, number, parsed, schema, side, switch, text,
)
from mflux_core.settings_schema import SAMPLER, SCHEDULE
from mflux_core.settings_schema import HIRES_UPSCALERS, MAX_HIRES_SCALE, MAX_MASK_BLUR
from mflux_core.images.resize_modes import DEFAULT_RESIZE_MODE
from mflux_core.settings_schema import RESIZE_MODE
from mflux_core.tools.specs import TOOL_NAMES as TOOLS, tool_spec

DEFAULT_VAE_TILE = 512  # pixels, when tiling is asked for without a size (mflux's)
MIN_VAE_TILE = 128  # mflux's smallest --vae-tile-size

WHOLE_TEXT = re.compile(r"[0-9]{1,18}")  # whole_text's


@dataclass(frozen=True)
class GenerationRequest:
    tool: str = "generate"
    model: str | None = None  # alias, repo id or local folder
    base_model: str | None = None  # for third-party derivatives: "schnell", "dev", another model or a folder
    # Forge's VAE / Text Encoder: VAE, CLIP-L or T5 files used instead of the model's own (weights/module_files.py)
    modules: tuple[str, ...] = ()
    prompt: str = ""
    seed: int = 0
    variation_seed: int | None = None  # A1111's variation seed: its noise blended into the seed's ...
    variation_strength: float = 0.0  # ... this much of the way (0: the seed's image; 1: the variation seed's)
    steps: int | None = None  # None: the model's default (schnell 4, otherwise 25)
    width: int | None = None  # None: the input image's size, or the model's native side (FLUX.1 1024, demo 64)
    height: int | None = None
    guidance: float | None = None  # None: the tool's default
    negative_prompt: str = ""  # true CFG's negative prompt; empty: none
    true_cfg_scale: float = 1.0  # diffusers' true_cfg_scale: above 1, with a negative prompt, a second pass per step
    image_path: str | None = None
    reference_image_paths: tuple[str, ...] = ()  # Kontext: further references, side by side after image_path
    image_strength: float | None = None
    masked_image_path: str | None = None
    keep_unmasked: bool = False
    outpaint_padding: str | None = None
    only_masked_padding: int | None = None  # Fill: inpaint only the box around the mask, this many pixels of context
    #                                          (A1111's inpaint area "Only masked"); None: the whole picture
    mask_blur: int = 0  # Fill: A1111's mask blur, px (gaussian sigma at the image's size): a smoother mask whose soft
    #                     edge the paste blends over
    depth_image_path: str | None = None
    controlnet_image_path: str | None = None
    controlnet_strength: float | None = None  # None: the tool's default (canny 0.4, upscaler 0.6)
    controlnet_units: tuple[dict, ...] = ()  # further ControlNets beside the one above: mflux_core/controlnet_units.py
    redux_image_paths: tuple[str, ...] = ()
    redux_image_strengths: tuple[float, ...] = ()
    lora_paths: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()
    # one per LoRA for its text-encoder part (ComfyUI's strength_clip, A1111's <lora:name:te:unet>); (): lora_scales
    lora_text_encoder_scales: tuple[float, ...] = ()
    quantize: int | None = None
    dtype: str | None = None  # None: float32 on the CPU backend, bfloat16 on a GPU
    init_noise_path: str | None = None
    max_sequence_length: int | None = None  # T5 tokens; None: the model's (its T5 tokenizer's limit, at most 512)
    vae_tiling: bool = False  # decode and encode in tiles even when the whole image fits the memory budget
    vae_tile_size: int | None = None  # with vae_tiling, the tiles' side in pixels (None: DEFAULT_VAE_TILE)
    sampler: str = "euler"  # mflux_core.sampling.samplers: euler, euler_a, heun, dpm++2m, dpm++2m_sde, unipc
    schedule: str = "simple"  # mflux_core.sampling.schedule: simple, beta, karras, exponential
    resize_mode: str = DEFAULT_RESIZE_MODE  # how an input image of another size is brought to the output size
    extra: dict = field(default_factory=dict)  # tool-specific settings (canny thresholds, ...)
    regions: tuple[dict, ...] = ()  # regional prompts (generate): see mflux_core/regions.py
    region_strength: float = 1.0  # how strictly regions are kept apart in attention, 0 (not) to 1
    # Hires fix (text-to-image): a second, image-to-image pass on the first pass's image upscaled by hires_scale
    hires_scale: float | None = None  # None: no second pass
    hires_steps: int | None = None  # None: the first pass's steps
    hires_strength: float | None = None  # A1111's denoising strength: how much the second pass changes; None: 0.5
    hires_upscaler: str | None = None  # None: Lanczos
    hires_prompt: str = ""  # empty: the first pass's prompt

    def validated(self) -> "GenerationRequest":
        """Return this request if every value is usable; otherwise raise InvalidRequest naming the value."""
        parsed(_SCHEMA, {name: getattr(self, name) for name in self.field_names()}, REQUEST_SETTINGS)
        if (self.negative_prompt or self.true_cfg_scale != 1) and not tool_spec(self.tool).true_cfg:
            raise InvalidRequest(
                f"The {self.tool} tool has no true CFG (nor has the diffusers pipeline it follows): leave the "
                "negative prompt empty and the true CFG scale at 1."
            )
        if self.width is not None and self.height is not None:
            check_image_size(self.width, self.height, "The requested image", setting="width")
            check_regions_fit(self.regions, self.width, self.height)
        if self.regions and self.tool != "generate":
            raise InvalidRequest(f"Regional prompts are for the generate tool, not {self.tool}.")
        if self.hires_scale is not None:
            self._check_hires()
        elif self.hires_steps is not None or self.hires_strength is not None:  # e.g. a plot's hires axis
            raise InvalidRequest("Hires steps and hires denoising strength belong to the hires fix: turn it on "
                                 "(give it an upscale factor) or leave them out.")
        if self.lora_scales and len(self.lora_scales) != len(self.lora_paths):
            raise InvalidRequest(
                f"{len(self.lora_paths)} LoRA paths but {len(self.lora_scales)} scales: give one scale per LoRA."
            )
        if self.lora_text_encoder_scales and len(self.lora_text_encoder_scales) != len(self.lora_paths):
            raise InvalidRequest(
                f"{len(self.lora_paths)} LoRA paths but {len(self.lora_text_encoder_scales)} text encoder scales: give "
                "one per LoRA (or none: the LoRA scales)."
            )
        if self.controlnet_units:
            self._check_controlnet_units()
        if self.vae_tile_size is not None and self.vae_tile_size % 16:
            raise InvalidRequest(f"The VAE tile size must be a multiple of 16 pixels, not {self.vae_tile_size}.")
        if self.only_masked_padding is not None and self.tool != "fill":
            raise InvalidRequest(f"Inpainting only the masked area is for the fill tool, not {self.tool}.")
        if self.mask_blur and self.tool != "fill":
            raise InvalidRequest(f"A mask blur is for the fill tool, not {self.tool}.")
        if self.variation_strength and self.variation_seed is None:
            raise InvalidRequest("A variation strength needs a variation seed to blend in: give one, or set the "
                                 "strength to 0.")
        if self.reference_image_paths and self.tool != "kontext":
            raise InvalidRequest(f"Several reference images are for the Kontext tool, not {self.tool}: send one image.")
        if self.redux_image_strengths and len(self.redux_image_strengths) != len(self.redux_image_paths):
            raise InvalidRequest(
                f"{len(self.redux_image_paths)} Redux images but {len(self.redux_image_strengths)} strengths: "
                "give one strength per image."
            )
        return self

    def _check_controlnet_units(self) -> None:
        if self.tool != "controlnet":
            raise InvalidRequest(f"Further ControlNet units are for the controlnet tool, not {self.tool}.")
        missing = unit_without_image(self.controlnet_units)
        if missing is not None:
            raise InvalidRequest(f"ControlNet unit {missing} has no control image: give it a controlnet_image_path.")

    def _check_hires(self) -> None:
        if self.tool not in ("generate", "controlnet") or self.image_path:
            raise InvalidRequest("The hires fix runs after text-to-image only (Generate, or ControlNet steering it): "
                                 "remove the input image or turn the hires fix off.")
        if self.tool == "controlnet" and self.hires_upscaler == HIRES_UPSCALERS[1]:
            raise InvalidRequest(f"The ControlNet tool's hires fix takes no {HIRES_UPSCALERS[1]}: its own "
                                 f"ControlNets steer the second pass (use {HIRES_UPSCALERS[0]} or an upscaler model).")
        if self.hires_strength == 0:
            raise InvalidRequest("Hires denoising strength 0 would leave the upscaled image as it is: use more than "
                                 "0 up to 1.")
        if self.width is not None and self.height is not None:
            hires_size(self.width, self.height, self.hires_scale)

    @property
    def reference_paths(self) -> tuple[str, ...]:
        """Kontext's references in order: image_path, then reference_image_paths (the CLI may give only those)."""
        return ((self.image_path,) if self.image_path else ()) + self.reference_image_paths

    @property
    def forced_vae_tile(self) -> int:
        """The VAE tile side asked for (0: none; the memory budget may still ask for smaller tiles)."""
        return (self.vae_tile_size or DEFAULT_VAE_TILE) if self.vae_tiling else 0

    @property
    def uses_true_cfg(self) -> bool:
        """diffusers' rule: the negative prompt's pass runs when true_cfg_scale > 1 and a negative prompt is given
        (here an empty one counts as none, so the scale alone changes nothing)."""
        return self.true_cfg_scale > 1 and bool(self.negative_prompt.strip())

    def with_(self, **changes) -> "GenerationRequest":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_image_size(width: int, height: int, what: str, resized: bool = False, setting: str | None = None) -> None:
    """Refuse, before any work starts, an image past the studio's limits: at most MAX_SIDE a side and MAX_PIXELS
    in all for what the engine works on at full size; MAX_INPUT_PIXELS for an input it resizes first (`resized`);
    `setting`: the request field the refusal names (the output's size: width, as the pair's first)."""
    if resized:
        if width * height > MAX_INPUT_PIXELS:
            raise InvalidRequest(f"{what} is too large ({width}x{height} pixels; the limit is {MAX_INPUT_PIXELS:,} "
                                 "pixels).", setting)
    elif max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidRequest(f"{what} would be {width}x{height} pixels, past the {MAX_SIDE}-pixel limit a side "
                             f"({MAX_PIXELS:,} pixels in all).", setting)


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The hires fix's second-pass size: the first pass's times `scale`, snapped down to multiples of 16; refused
    past the size limits."""
    size = tuple(max(16, round(side * scale) // 16 * 16) for side in (width, height))
    check_image_size(*size, f"The hires fix's second pass ({width}x{height} upscaled {scale:g} times)")
    return size


def whole_text(text) -> int | None:
    """A whole number written as text: ASCII digits, at most 18 (no setting takes more; Python reads no int of
    thousands of digits, and str.isdigit() also passes '²', which int() refuses), else None."""
    return int(text) if isinstance(text, str) and WHOLE_TEXT.fullmatch(text) else None


def is_finite_number(value) -> bool:
    """An int or float (not a bool) that is neither NaN nor infinite (an int too large for a float is infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def check_finite(value, what: str) -> float:
    """`value` as a float when it is a finite number; otherwise InvalidRequest naming the setting (`what`)."""
    if not is_finite_number(value):
        kind = "finite number" if isinstance(value, (int, float)) and not isinstance(value, bool) else "number"
        raise InvalidRequest(f"{what} must be a {kind}, not {str(value)[:40]}.")
    return float(value)


def snap_to_16(value: int) -> int:
    return max(16, min(MAX_SIDE, value // 16 * 16))


def size_of_input(width: int, height: int) -> tuple[int, int]:
    """An input image's size as the output's, when none is given: scaled down to MAX_SIDE a side with its aspect kept
    (an 8192x4096 photo makes 4096x2048), each side rounded down to a multiple of 16."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return snap_to_16(int(width * scale)), snap_to_16(int(height * scale))


def clean_prompt(prompt: str) -> str:
    """Drop control characters (except newlines and tabs) that tokenizers would choke on or hide."""
    return "".join(ch for ch in prompt if ch in "\n\t" or ch.isprintable())


def existing_file(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise InvalidRequest(f"The {what} {path} does not exist or is not a file.")
    return resolved


def _finite_if_number(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not is_finite_number(value):
        raise PydanticCustomError("finite_number", "not a finite number")
    return value


REQUEST_SETTINGS: dict[str, Setting] = {
    "tool": choice("The tool", TOOLS),
    "model": text("The model").optional(),
    "base_model": text("The base model").optional(),
    "modules": text("VAE / text encoder file", 255).listed(),
    "prompt": text("The prompt", MAX_PROMPT_CHARS),
    "seed": SEED,
    "variation_seed": VARIATION_SEED.optional(),
    "variation_strength": number("Variation strength", 0, 1),
    "steps": STEPS.optional(),
    "width": side("Width").optional(),
    "height": side("Height").optional(),
    "guidance": GUIDANCE.optional(),
    "negative_prompt": text("The negative prompt", MAX_PROMPT_CHARS),
    "true_cfg_scale": TRUE_CFG_SCALE,
    "image_path": text("The image path").optional(),
    "reference_image_paths": text("reference image path").listed(),
    "image_strength": number("Image strength", 0, 1, below=True, low_note="(ignore the image)").optional(),
    "masked_image_path": text("The mask path").optional(),
    "keep_unmasked": switch("The setting keep_unmasked"),
    "outpaint_padding": text("The outpaint padding").optional(),
    "only_masked_padding": number("Only masked padding", 0, MAX_SIDE, whole=True, unit="px").optional(),
    "mask_blur": number("Mask blur", 0, MAX_MASK_BLUR, whole=True, unit="px"),
    "depth_image_path": text("The depth image path").optional(),
    "controlnet_image_path": text("The control image path").optional(),
    "controlnet_strength": number("ControlNet strength", 0, 2).optional(),
    "controlnet_units": checked(Setting("The further ControlNet units", tuple[Any, ...], accepts="a list"),
                                units_problem, "a list of ControlNet units"),
    "redux_image_paths": text("Redux image path").listed(),
    "redux_image_strengths": number("Redux image strength", 0, 1, low_note="(ignore the image)").listed(),
    "lora_paths": text("LoRA path").listed(),
    "lora_scales": LORA_SCALE.listed(),
    "lora_text_encoder_scales": LORA_TEXT_ENCODER_SCALE.listed(),
    "quantize": QUANTIZE.optional(),
    "dtype": choice("Dtype", DTYPES).optional(),
    "init_noise_path": text("The initial noise path").optional(),
    "max_sequence_length": SEQUENCE_LENGTH.optional(),
    "vae_tiling": switch("The setting vae_tiling"),
    "vae_tile_size": number("VAE tile size", MIN_VAE_TILE, MAX_SIDE, whole=True, unit="px").optional(),
    "sampler": SAMPLER,
    "schedule": SCHEDULE,
    "resize_mode": RESIZE_MODE,
    "extra": Setting("The setting extra", dict[str, Annotated[Any, AfterValidator(_finite_if_number)]],
                     accepts="an object of tool settings"),
    "regions": checked(Setting("Regional prompts", tuple[Any, ...], accepts="a list"), regions_problem,
                       f"a list of at most {MAX_REGIONS} regions"),
    "region_strength": number("Region strength", 0, 1),
    "hires_scale": number("Hires upscale", 1, MAX_HIRES_SCALE).optional(),
    "hires_steps": STEPS.optional(),
    "hires_strength": number("Hires denoising strength", 0, 1).optional(),
    "hires_upscaler": text("The hires upscaler", 255).optional(),  # Lanczos, ControlNet upscaler or a model's name
    "hires_prompt": text("The hires prompt", MAX_PROMPT_CHARS),
}
assert set(REQUEST_SETTINGS) == set(GenerationRequest.field_names()), "every request field needs a setting"
_SCHEMA = schema("GenerationRequestSchema", REQUEST_SETTINGS, {})
