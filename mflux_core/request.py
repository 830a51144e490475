"""GenerationRequest: every setting of one image, validated once, shared by the CLI, the UI and presets."""

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from mflux_core.errors import InvalidRequest
from mflux_core.tools.specs import TOOL_NAMES as TOOLS

MAX_SIDE = 4096  # pixels a side of any image the engine works on at full size (outputs, canvases, references)
MAX_PIXELS = MAX_SIDE * MAX_SIDE  # pixels in all of such an image
MAX_INPUT_PIXELS = 8192 * 8192  # an input image that is resized before use; a larger file is refused undecoded
MAX_STEPS = 500
MAX_PROMPT_CHARS = 20_000
MAX_SEED = 2**32 - 1
DTYPES = ("float32", "bfloat16", "float16")
QUANTIZE_BITS = (3, 4, 5, 6, 8)
MAX_SEQUENCE_LENGTH = 512  # T5 tokens FLUX.1 was trained with


@dataclass(frozen=True)
class GenerationRequest:
    tool: str = "generate"
    model: str | None = None  # alias, repo id or local folder
    base_model: str | None = None  # for third-party derivatives: "schnell" or "dev"
    prompt: str = ""
    seed: int = 0
    steps: int | None = None  # None: the model's default (schnell 4, otherwise 25)
    width: int | None = None  # None: the input image's size, or the model's native side (FLUX.1 1024, demo 64)
    height: int | None = None
    guidance: float | None = None  # None: the tool's default
    image_path: str | None = None
    image_strength: float | None = None
    masked_image_path: str | None = None
    keep_unmasked: bool = False
    outpaint_padding: str | None = None
    depth_image_path: str | None = None
    controlnet_image_path: str | None = None
    controlnet_strength: float | None = None  # None: the tool's default (canny 0.4, upscaler 0.6)
    redux_image_paths: tuple[str, ...] = ()
    redux_image_strengths: tuple[float, ...] = ()
    lora_paths: tuple[str, ...] = ()
    lora_scales: tuple[float, ...] = ()
    quantize: int | None = None
    dtype: str | None = None  # None: float32 on the CPU backend, bfloat16 on a GPU
    init_noise_path: str | None = None
    max_sequence_length: int | None = None  # T5 tokens; None: the model's (its T5 tokenizer's limit, at most 512)
    vae_tiling: bool = False  # decode and encode in tiles even when the whole image fits the memory budget
    extra: dict = field(default_factory=dict)  # tool-specific settings (canny thresholds, ...)

    def validated(self) -> "GenerationRequest":
        """Return this request if every value is usable; otherwise raise InvalidRequest naming the value."""
        if self.tool not in TOOLS:
            raise InvalidRequest(f"Unknown tool {self.tool!r}; choose one of {', '.join(TOOLS)}.")
        _check_prompt(self.prompt)
        _check_types(self)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidRequest(f"{name.capitalize()} must be a whole number of pixels, not {value!r}.")
            if not 16 <= value <= MAX_SIDE:
                raise InvalidRequest(f"{name.capitalize()} {value} is out of range: use 16 to {MAX_SIDE} pixels.")
            if value % 16:
                raise InvalidRequest(
                    f"{name.capitalize()} {value} is not a multiple of 16; try {max(16, round(value / 16) * 16)}."
                )
        if self.width is not None and self.height is not None:
            check_image_size(self.width, self.height, "The requested image")
        if self.steps is not None and not (isinstance(self.steps, int) and 1 <= self.steps <= MAX_STEPS):
            raise InvalidRequest(f"Steps must be a whole number from 1 to {MAX_STEPS}, not {self.steps!r}.")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise InvalidRequest(f"Seed must be a whole number from 0 to {MAX_SEED}, not {self.seed!r}.")
        if self.guidance is not None and not 0 <= self.guidance <= 100:
            raise InvalidRequest(f"Guidance {self.guidance} is out of range: use 0 to 100.")
        if self.image_strength is not None and not 0 <= self.image_strength < 1:
            raise InvalidRequest(
                f"Image strength {self.image_strength} is out of range: use 0 (ignore the image) up to below 1."
            )
        if self.controlnet_strength is not None and not 0 <= self.controlnet_strength <= 2:
            raise InvalidRequest(f"ControlNet strength {self.controlnet_strength} is out of range: use 0 to 2.")
        if self.lora_scales and len(self.lora_scales) != len(self.lora_paths):
            raise InvalidRequest(
                f"{len(self.lora_paths)} LoRA paths but {len(self.lora_scales)} scales: give one scale per LoRA."
            )
        if self.redux_image_strengths and len(self.redux_image_strengths) != len(self.redux_image_paths):
            raise InvalidRequest(
                f"{len(self.redux_image_paths)} Redux images but {len(self.redux_image_strengths)} strengths: "
                "give one strength per image."
            )
        for strength in self.redux_image_strengths:
            if not 0 <= strength <= 1:
                raise InvalidRequest(f"Redux image strength {strength} is out of range: use 0 (ignore the image) to 1.")
        if self.quantize is not None and self.quantize not in QUANTIZE_BITS:
            raise InvalidRequest(f"Quantize must be one of {', '.join(map(str, QUANTIZE_BITS))} bits, not {self.quantize}.")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InvalidRequest(f"Dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")
        if self.max_sequence_length is not None and not 1 <= self.max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise InvalidRequest(f"The T5 sequence length must be from 1 to {MAX_SEQUENCE_LENGTH} tokens.")
        return self

    def with_(self, **changes) -> "GenerationRequest":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def check_image_size(width: int, height: int, what: str, resized: bool = False) -> None:
    """Refuse, before any work starts, an image past the studio's limits: at most MAX_SIDE a side and MAX_PIXELS
    in all for what the engine works on at full size; MAX_INPUT_PIXELS for an input it resizes first (`resized`)."""
    if resized:
        if width * height > MAX_INPUT_PIXELS:
            raise InvalidRequest(f"{what} is too large ({width}x{height} pixels; the limit is {MAX_INPUT_PIXELS:,} "
                                 "pixels).")
    elif max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidRequest(f"{what} would be {width}x{height} pixels, past the {MAX_SIDE}-pixel limit a side "
                             f"({MAX_PIXELS:,} pixels in all).")


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


def _check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str):
        raise InvalidRequest("The prompt must be text.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest(f"The prompt is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}.")


_TEXT_FIELDS = ("model", "base_model", "image_path", "masked_image_path", "outpaint_padding", "depth_image_path",
                "controlnet_image_path", "init_noise_path", "dtype")
_NUMBER_FIELDS = {"guidance": "Guidance", "image_strength": "Image strength",
                  "controlnet_strength": "ControlNet strength"}
_NUMBER_LISTS = {"lora_scales": "A LoRA scale", "redux_image_strengths": "A Redux image strength"}


def _check_types(request: GenerationRequest) -> None:
    """Values from JSON (metadata, presets, API calls) can be of any type; later checks assume these."""
    for name in _TEXT_FIELDS:
        if not isinstance(getattr(request, name), (str, type(None))):
            raise InvalidRequest(f"The setting {name} must be text, not {type(getattr(request, name)).__name__}.")
    for name, label in _NUMBER_FIELDS.items():
        if getattr(request, name) is not None:
            check_finite(getattr(request, name), label)
    for name in ("lora_paths", "redux_image_paths", *_NUMBER_LISTS):
        values = getattr(request, name)
        if not isinstance(values, (tuple, list)) or ("paths" in name and not all(isinstance(v, str) for v in values)):
            raise InvalidRequest(f"The setting {name} must be a list of {'paths' if 'paths' in name else 'numbers'}.")
    for name, label in _NUMBER_LISTS.items():
        for value in getattr(request, name):
            check_finite(value, label)
    if not isinstance(request.extra, dict):
        raise InvalidRequest("The setting extra must be an object of tool settings.")
    for key, value in request.extra.items():  # tool settings such as canny_low: numbers must be finite
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            check_finite(value, f"The setting {key}")
    for name in ("keep_unmasked", "vae_tiling"):
        if not isinstance(getattr(request, name), bool):
            raise InvalidRequest(f"The setting {name} must be true or false.")
    length = request.max_sequence_length
    if length is not None and (not isinstance(length, int) or isinstance(length, bool)):
        raise InvalidRequest("The T5 sequence length must be a whole number of tokens.")
    if request.quantize is not None and (not isinstance(request.quantize, int) or isinstance(request.quantize, bool)):
        raise InvalidRequest(f"Quantize must be a whole number of bits, not {request.quantize!r:.40}.")


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
