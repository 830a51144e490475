"""Every setting's type and limits, written once (pydantic v2), and the sentences that refuse a bad value.

A `Setting` holds one setting's pydantic type (its constraints) and its words: what users call it and
what a usable value is. GenerationRequest.validated(), preset settings and the LoRA training config
build their pydantic models from the same Settings, so a limit is the same wherever a value comes from
(the CLI, the page, the Python API, a preset file or PNG metadata, a training config). A pydantic error
never reaches a user as it is: `sentence` (one refusal) and `fragment` (one of a preset's problems)
turn it into our words.
"""

from dataclasses import dataclass, replace
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, create_model
from pydantic_core import PydanticCustomError

from mflux_core.errors import InvalidRequest
from mflux_core.images.resize_modes import RESIZE_MODES

MAX_SIDE = 4096  # pixels a side of any image the engine works on at full size (outputs, canvases, references)
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # pixels in all of such an image
MAX_INPUT_PIXELS = 8192 * 8192  # an input image that is resized before use; a larger file is refused undecoded
MAX_STEPS = 500
MAX_PROMPT_CHARS = 20_000
MAX_SEED = 2**32 - 1
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZE_BITS = (3, 4, 5, 6, 8)
MAX_SEQUENCE_LENGTH = 512  # T5 tokens FLUX.1 was trained with
MAX_LORA_SCALE = 4  # A1111 and Forge users write <lora:name:scale> from -4 to 4
MAX_LIST_ITEMS = 8  # LoRAs, Redux images and their scales or strengths
MAX_BATCH = 16  # images per run
MAX_HIRES_SCALE = 4  # the hires fix's upscale factor
DEFAULT_HIRES_STRENGTH = 0.5  # the hires fix's second pass: A1111's denoising strength when a request sets none
DEFAULT_FACE_FIX_STRENGTH = 0.4  # the face fix's denoising strength (ADetailer's ad_denoising_strength)
MAX_FACE_FIX_PADDING = 256  # px of context around a face
# A1111's Checkpoint Merger methods (mflux_core/weights/merge.py), by name, with its labels
WEIGHTED_SUM, ADD_DIFFERENCE = "weighted-sum", "add-difference"
MERGE_METHODS = {WEIGHTED_SUM: "Weighted sum", ADD_DIFFERENCE: "Add difference"}
MAX_MASK_BLUR = 64  # px: Fill's mask blur (A1111's slider goes to 64)
ONLY_MASKED_PADDING = 32  # pixels of context around the mask that Fill's "Only masked" takes by default (A1111's)
# What Fill's masked area starts from when it starts from the image (an image strength): as it is, or painted from
# the colours around it (A1111's masked content "original" and "fill"; its "latent noise" is no image strength)
MASKED_CONTENTS = ("original", "fill")
# What an image-to-image batch (mflux_core/image_batch.py) may take from each image's PNG info: A1111's "Parameters to
# take from png info", with FLUX.1's guidance in place of its CFG scale; label -> the settings it sets
PNG_INFO_FIELDS = {"Prompt": ("prompt",), "Negative prompt": ("negative_prompt",), "Seed": ("seed",),
                   "Guidance": ("guidance", "true_cfg_scale"), "Sampler": ("sampler", "schedule"),
                   "Steps": ("steps",)}
HIRES_UPSCALERS = ("Lanczos", "ControlNet upscaler")  # Lanczos as A1111 names it; the other: mflux_core.hires
# A1111's upscalers that are no model file the studio could run (the rest name ESRGAN-family files: upscaler_models)
A1111_OTHER_UPSCALERS = ("None", "Nearest", "LDSR", "ScuNET GAN", "ScuNET PSNR", "SwinIR 4x")
# A Union ControlNet's control modes, by index, as InstantX and Shakker-Labs publish them (Union-Pro's config has
# ten embeddings; the last three are unused). mflux_core.models.controlnet
UNION_CONTROL_TYPES = ("canny", "tile", "depth", "blur", "pose", "gray", "low-quality")
MAX_TRUE_CFG_SCALE = 20  # true CFG (diffusers' true_cfg_scale); 1 is off, useful values are about 1.5 to 5
# Samplers and sigma schedules (mflux_core.sampling), by name, with the names A1111's "parameters" text gives them
SAMPLER_LABELS = {"euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "dpm++2m": "DPM++ 2M",
                  "dpm++2m_sde": "DPM++ 2M SDE", "unipc": "UniPC"}
SCHEDULE_LABELS = {"simple": "Simple", "beta": "Beta", "karras": "Karras", "exponential": "Exponential"}


def a1111_sampling(sampler: str, schedule: str) -> dict:
    """Our sampler and schedule from A1111's names ("DPM++ 2M" and "Karras"; older files write "DPM++ 2M Karras");
    a sampler or schedule we do not have is left out."""
    samplers = {label.lower(): name for name, label in SAMPLER_LABELS.items()}
    schedules = {label.lower(): name for name, label in SCHEDULE_LABELS.items()}
    sampler, schedule = sampler.strip().lower(), schedule.strip().lower()
    head, _, tail = sampler.rpartition(" ")
    if sampler not in samplers and head in samplers and tail in schedules and not schedule:
        sampler, schedule = head, tail
    found = {"sampler": samplers.get(sampler), "schedule": schedules.get(schedule)}
    return {key: value for key, value in found.items() if value}


OUT_OF_RANGE = "{label} {value} is out of range: use {limits}."
REFUSED = "refused"  # the type of our own errors: their message is the phrase after the setting's name


def refuse(phrase: str) -> PydanticCustomError:
    """An error for a validator to raise: `phrase` follows the setting's name ("must be a model name ...")."""
    return PydanticCustomError(REFUSED, "{phrase}", {"phrase": phrase})


@dataclass(frozen=True)
class Setting:
    """One setting: its pydantic type and, in the user's words, its name and what it accepts."""

    label: str  # how a sentence names it: "Steps", "The prompt"; for a list, one item: "LoRA scale"
    annotation: Any  # the pydantic type with its constraints
    accepts: str  # what a usable value (an item, for a list) is: "a whole number from 1 to 500"
    kind: str = ""  # what a value of the wrong type should have been; "" means `accepts`
    limits: str = ""  # a number's range in words: "16 to 4096 pixels"
    out_of_range: str = OUT_OF_RANGE
    each: bool = False  # a list: the words describe one item
    bounds: tuple[float, float] | None = None  # a number's (low, high), so a refusal names the range first

    def optional(self) -> "Setting":
        return replace(self, annotation=self.annotation | None)

    def listed(self) -> "Setting":
        """A list of at most MAX_LIST_ITEMS of these; the words still describe one item."""
        return replace(self, annotation=Annotated[tuple[self.annotation, ...], Field(max_length=MAX_LIST_ITEMS)],
                       each=True)


def number(label: str, low: int, high: int, whole: bool = False, below: bool = False, unit: str = "",
           low_note: str = "", multiple_of: int | None = None, out_of_range: str = OUT_OF_RANGE) -> Setting:
    """A finite number from `low` to `high` (below `high` when `below`), whole or not, perhaps a multiple of a step."""
    bound = {"lt": high} if below else {"le": high}
    constraints = Field(ge=low, multiple_of=multiple_of, allow_inf_nan=False, **bound)
    annotation = Annotated[int if whole else float, Strict(), constraints]
    what = f"a multiple of {multiple_of}" if multiple_of else "a whole number" if whole else "a number"
    upper = f"{'below ' if below else ''}{high}"
    return Setting(label, annotation, accepts=f"{what} from {low} to {upper}",
                   kind=f"{'a whole number' if whole else 'a number'}{f' of {unit}' if unit else ''}",
                   limits=f"{low}{f' {low_note}' if low_note else ''} to {upper}{f' {unit}' if unit else ''}",
                   out_of_range=out_of_range, bounds=(low, high))


def choice(label: str, options) -> Setting:
    """One of `options`, of their type (a float or a bool is not the whole number 8)."""
    options = tuple(options)

    def validate(value):
        if value not in options:
            raise PydanticCustomError("not_a_choice", "not one of the choices")
        return value

    words = f"one of {', '.join(map(str, options))}"
    return Setting(label, Annotated[type(options[0]), Strict(), AfterValidator(validate)], accepts=words)


def text(label: str, max_chars: int | None = None) -> Setting:
    if max_chars is None:
        return Setting(label, Annotated[str, Strict()], accepts="text")
    return Setting(label, Annotated[str, Strict(), Field(max_length=max_chars)],
                   accepts=f"text of at most {max_chars:,} characters", kind="text")


def switch(label: str) -> Setting:
    return Setting(label, Annotated[bool, Strict()], accepts="true or false")


def checked(setting: Setting, check, accepts: str) -> Setting:
    """`setting` with a further check: `check(value)` returns a phrase for a bad value (or None)."""
    def validate(value):
        problem = check(value)
        if problem:
            raise refuse(problem)
        return value

    return replace(setting, annotation=Annotated[setting.annotation, AfterValidator(validate)], accepts=accepts)


# Settings several things share (the request, presets, the training config)
SEED = number("Seed", 0, MAX_SEED, whole=True, out_of_range="{label} must be {accepts}, not {value}.")
VARIATION_SEED = number("Variation seed", 0, MAX_SEED, whole=True,
                        out_of_range="{label} must be {accepts}, not {value}.")
STEPS = number("Steps", 1, MAX_STEPS, whole=True, out_of_range="{label} must be {accepts}, not {value}.")
SEQUENCE_LENGTH = number("The T5 sequence length", 1, MAX_SEQUENCE_LENGTH, whole=True, unit="tokens",
                         out_of_range="{label} must be from {limits}.")
GUIDANCE = number("Guidance", 0, 100)
TRUE_CFG_SCALE = number("True CFG scale", 1, MAX_TRUE_CFG_SCALE, low_note="(off)")
SAMPLER = choice("The sampler", SAMPLER_LABELS)
SCHEDULE = choice("The schedule", SCHEDULE_LABELS)
LORA_SCALE = number("LoRA scale", -MAX_LORA_SCALE, MAX_LORA_SCALE)
LORA_TEXT_ENCODER_SCALE = number("LoRA text encoder scale", -MAX_LORA_SCALE, MAX_LORA_SCALE)
QUANTIZE = choice("Quantize", QUANTIZE_BITS)
RESIZE_MODE = choice("The resize mode", RESIZE_MODES)


def side(label: str) -> Setting:
    return number(label, 16, MAX_SIDE, whole=True, unit="pixels", multiple_of=16)


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


def schema(name: str, settings: dict[str, Setting], defaults: dict[str, Any]) -> type[BaseModel]:
    """A pydantic model with a field per setting; a setting without a default must be given."""
    fields = {key: (setting.annotation, defaults.get(key, ...)) for key, setting in settings.items()}
    return create_model(name, __base__=Schema, **fields)


def _shown(value) -> str:
    return repr(value)[:40] if isinstance(value, str) else str(value)[:40]


def sentence(error: dict, settings: dict[str, Setting]) -> str:
    """One pydantic error as the sentence a user reads, naming the setting as `settings` words it."""
    key, *inside = error["loc"]
    setting = settings[key]
    value, kind = error["input"], error["type"]
    if inside and isinstance(inside[0], str):  # a value inside a mapping (a tool setting in `extra`)
        label = f"The setting {inside[0]}"
    elif setting.each:
        label = f"A {setting.label}" if inside else f"The {setting.label}s"
    else:
        label = setting.label
    if kind == REFUSED:
        return f"{label} {error['msg']}."
    # an int too large for a float is a number, but not a finite one
    if kind == "finite_number" or (kind == "float_type" and isinstance(value, int) and not isinstance(value, bool)):
        return f"{label} must be a finite number, not {_shown(value)}."
    outside = setting.bounds is not None and isinstance(value, (int, float)) and \
        not setting.bounds[0] <= value <= setting.bounds[1]
    if kind in ("greater_than_equal", "less_than_equal", "less_than") or (kind == "multiple_of" and outside):
        return setting.out_of_range.format(label=setting.label, value=value, limits=setting.limits,
                                           accepts=setting.accepts)
    if kind == "multiple_of":
        step = error["ctx"]["multiple_of"]
        return f"{label} {value} is not a multiple of {step}; try {max(step, round(value / step) * step)}."
    if kind == "string_too_long":
        limit = error["ctx"]["max_length"]
        return f"{label} is {len(value):,} characters long; the limit is {limit:,}."
    if kind in ("too_long", "tuple_type"):
        shown = f"{len(value)} of them" if kind == "too_long" else _shown(value)
        return f"{label} must be a list of at most {MAX_LIST_ITEMS} items, not {shown}."
    return f"{label} must be {setting.kind or setting.accepts}, not {_shown(value)}."


def fragment(error: dict, settings: dict[str, Setting]) -> str:
    """One pydantic error as one of the problems a preset's message lists: "'steps' must be ..."."""
    key, *inside = error["loc"]
    if error["type"] == "extra_forbidden":
        return f"unknown setting '{str(key)[:40]}'"
    setting = settings[key]
    phrase = error["msg"] if error["type"] == REFUSED else f"must be {setting.accepts}"
    if error["type"] in ("too_long", "tuple_type"):
        return f"'{key}' must be a list of at most {MAX_LIST_ITEMS} items"
    if inside and setting.each:
        return f"'{key}' has an item that {phrase}: {_shown(error['input'])}"
    return f"'{key}' {phrase}"


def parsed(model: type[BaseModel], values: dict, settings: dict[str, Setting]) -> dict:
    """`values` checked, with the defaults of those not given; InvalidRequest with the first problem's sentence."""
    try:
        return dict(model.model_validate(values))
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        raise InvalidRequest(sentence(first, settings), setting=str(first["loc"][0])) from None


def problems(model: type[BaseModel], values: dict, settings: dict[str, Setting], words=sentence) -> list[str]:
    """Every problem with `values` in `model`'s schema, in our words; empty when they are usable."""
    try:
        model.model_validate(values)
    except ValidationError as error:
        return [words(item, settings) for item in error.errors(include_url=False)]
    return []
