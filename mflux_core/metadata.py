"""Settings stored in PNG text chunks: our JSON (exact, restorable), an A1111-style `parameters` line and, where it
can say the same, a ComfyUI graph."""

import json
from pathlib import Path

from PIL import Image

from mflux_core.comfy_export import comfy_graph
from mflux_core.comfy_workflow import PROMPT_KEY as COMFY_PROMPT_KEY
from mflux_core.controlnet_infotext import infotext_items
from mflux_core.errors import InvalidRequest
from mflux_core.lora.a1111 import tagged_prompt
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import (
    DEFAULT_FACE_FIX_STRENGTH, HIRES_UPSCALERS, ONLY_MASKED_PADDING, SAMPLER_LABELS, SCHEDULE_LABELS,
)
from mflux_core.tools.specs import (
    FACE_FIX, FACE_FIX_PADDING, FACE_FIX_PROMPT, FACE_FIX_STRENGTH, KONTEXT_AUTO_RESIZE, TILE_HEIGHT, TILE_OVERLAP,
    TILE_SIZE, UPSCALER, UPSCALER_ONLY,
)

JSON_KEY = "mflux_studio"
A1111_KEY = "parameters"
FORMAT_VERSION = 2  # 2: Kontext reads a reference larger than its trained size at that size (1: its own size)
MAX_METADATA_CHARS = 200_000


def request_metadata(request: GenerationRequest, extras: dict | None = None) -> dict:
    """Everything needed to reproduce the image (inputs by path), plus what the run decided."""
    return {"format": FORMAT_VERSION, "request": request.to_dict(), **(extras or {})}


def a1111_parameters(request: GenerationRequest, extras: dict | None = None) -> str:
    extras = extras or {}
    if request.tool == "upscale" and request.extra.get(UPSCALER_ONLY):  # as A1111's Extras writes its upscale
        items = [("Size", f"{request.width}x{request.height}"),
                 ("Postprocess upscaler", request.extra.get(UPSCALER, HIRES_UPSCALERS[1])),
                 ("Tool", request.tool), ("Version", "mflux-studio")]
        return f"{tagged_prompt(request)}\n" + ", ".join(f"{k}: {v}" for k, v in items)
    items = [
        ("Steps", extras.get("steps", request.steps)),
        ("Sampler", SAMPLER_LABELS[request.sampler]),
        ("Schedule type", SCHEDULE_LABELS[request.schedule]),
        ("CFG scale", request.true_cfg_scale if request.uses_true_cfg else 1),
        ("Distilled CFG Scale", extras.get("guidance", request.guidance)),
        ("Seed", request.seed),
        *variation_parameters(request),
        ("Size", f"{request.width}x{request.height}"),
        ("Model", request.model),
        *((f"Module {i}", Path(name).stem) for i, name in enumerate(request.modules, 1)),  # as Forge names them
        ("Denoising strength", denoising_strength(request)),
        *hires_parameters(request),
        *inpaint_area_parameters(request),
        *tile_parameters(request),
        *face_fix_parameters(request),
        *((key, json.dumps(text)) for key, text in infotext_items(extras.get("controlnets", []), request.resize_mode,
                                                                   request.width, request.height)),
        ("Tool", request.tool),
        ("Version", "mflux-studio"),
    ]
    line = ", ".join(f"{k}: {v}" for k, v in items if v is not None)
    negative = f"Negative prompt: {request.negative_prompt}\n" if request.negative_prompt else ""  # as A1111 writes it
    return f"{tagged_prompt(request)}\n{negative}{line}"


def denoising_strength(request: GenerationRequest) -> float | None:
    """A1111's denoising strength: how much the image-to-image pass (or the hires fix's second pass) changes."""
    if request.hires_scale is not None:
        return request.hires_strength
    return None if request.image_strength is None else round(1 - request.image_strength, 4)


def hires_parameters(request: GenerationRequest) -> list[tuple[str, object]]:
    """The hires fix's items as A1111 writes them (its prompt only when it differs, quoted)."""
    if request.hires_scale is None:
        return []
    items = [("Hires upscale", f"{request.hires_scale:g}"), ("Hires steps", request.hires_steps),
             ("Hires upscaler", request.hires_upscaler)]
    return items + ([("Hires prompt", json.dumps(request.hires_prompt))] if request.hires_prompt else [])


def tile_parameters(request: GenerationRequest) -> list[tuple[str, object]]:
    """A tiled upscale's items: A1111's SD upscale's two (its tile is its Size; ours is the output's), and the tile."""
    extra = request.extra
    if request.tool != "upscale" or extra.get(TILE_SIZE) is None:
        return []
    tile = extra[TILE_SIZE] if extra.get(TILE_HEIGHT) is None else f"{extra[TILE_SIZE]}x{extra[TILE_HEIGHT]}"
    return [("SD upscale overlap", extra.get(TILE_OVERLAP)),
            ("SD upscale upscaler", extra.get(UPSCALER, HIRES_UPSCALERS[1])), ("Tile size", tile)]


FACE_FIX_MODEL = "OpenCV frontal face"  # the face fix's detector, where ADetailer names its model


def face_fix_parameters(request: GenerationRequest) -> list[tuple[str, object]]:
    """The face fix as ADetailer's items (A1111 and Forge with ADetailer read them; so does presets.py)."""
    extra = request.extra
    if not extra.get(FACE_FIX):
        return []
    prompt = extra.get(FACE_FIX_PROMPT) or ""
    return [("ADetailer model", FACE_FIX_MODEL), *([("ADetailer prompt", json.dumps(prompt))] if prompt else []),
            ("ADetailer denoising strength", extra.get(FACE_FIX_STRENGTH, DEFAULT_FACE_FIX_STRENGTH)),
            ("ADetailer inpaint only masked", True),
            ("ADetailer inpaint padding", extra.get(FACE_FIX_PADDING, ONLY_MASKED_PADDING))]


def variation_parameters(request: GenerationRequest) -> list[tuple[str, object]]:
    """A1111's variation seed items (none at strength 0, as A1111 writes them)."""
    if not request.variation_strength:
        return []
    return [("Variation seed", request.variation_seed), ("Variation seed strength", f"{request.variation_strength:g}")]


def inpaint_area_parameters(request: GenerationRequest) -> list[tuple[str, object]]:
    """A1111's items for its mask blur and its inpaint area "Only masked" (none for no blur and the whole picture)."""
    blur = [("Mask blur", request.mask_blur)] if request.mask_blur else []
    if request.only_masked_padding is None:
        return blur
    return [*blur, ("Inpaint area", "Only masked"), ("Masked area padding", request.only_masked_padding)]


def png_text_chunks(request: GenerationRequest, extras: dict | None = None) -> dict[str, str]:
    """Our JSON, A1111's `parameters` and, for what ComfyUI's core nodes express, ComfyUI's graph (comfy_export)."""
    extras = extras or {}
    chunks = {JSON_KEY: json.dumps(request_metadata(request, extras), sort_keys=True),
              A1111_KEY: a1111_parameters(request, extras)}
    graph = comfy_graph(request, extras.get("steps", request.steps), extras.get("guidance", request.guidance))
    return chunks if graph is None else {**chunks, COMFY_PROMPT_KEY: json.dumps(graph)}


def request_from_metadata(metadata: dict) -> GenerationRequest:
    """Rebuild a request from our JSON; unknown keys and bad values are refused, never guessed."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("request"), dict):
        raise InvalidRequest("The metadata has no 'request' section written by mflux-studio.")
    values = metadata["request"]
    unknown = sorted(set(values) - set(GenerationRequest.field_names()))
    if unknown:
        raise InvalidRequest(f"The metadata has unknown settings: {', '.join(map(str, unknown[:5]))}.")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if metadata.get("format") == 1 and converted.get("tool") == "kontext":  # made when the reference kept its size
        converted["extra"] = {KONTEXT_AUTO_RESIZE: False, **(converted.get("extra") or {})}
    try:
        return GenerationRequest(**converted).validated()
    except TypeError as error:
        raise InvalidRequest(f"The metadata settings are malformed ({error}).") from None


def carries_our_settings(path: Path) -> bool:
    """Whether an image holds our JSON; one that cannot be opened counts as ours (read_metadata_file says why)."""
    try:
        with Image.open(path) as image:
            return isinstance(image.info.get(JSON_KEY), str)
    except (OSError, ValueError):
        return True


def read_metadata_file(path: Path) -> dict:
    """Our JSON from a PNG's text chunk or from a JSON sidecar file."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = path.read_text(errors="replace")
    else:
        try:
            with Image.open(path) as image:
                text = image.info.get(JSON_KEY)
        except (OSError, ValueError) as error:
            raise InvalidRequest(f"Cannot read {path} as an image ({error}).") from None
        if not text:
            raise InvalidRequest(f"{path.name} carries no mflux-studio settings.")
    if len(text) > MAX_METADATA_CHARS:
        raise InvalidRequest(f"The settings in {path.name} are too large to be ours.")
    try:
        return json.loads(text)
    except ValueError as error:  # JSONDecodeError, or a number past the 4,300 digits Python reads
        raise InvalidRequest(f"The settings in {path.name} are not valid JSON ({getattr(error, 'msg', error)}).") \
            from None
    except RecursionError:
        raise InvalidRequest(f"The settings in {path.name} nest too deeply to be ours.") from None
