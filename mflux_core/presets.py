"""Presets: named settings that users save, load, share as JSON, and restore from PNGs.

A preset's `settings` are GenerationRequest fields that are settings, never input images (no
`image_path`, `masked_image_path`, ...), plus `batch_count` (images per run). `seed: null` means a
random seed. LoRAs are named by their library name; models, and side models in `extra`
(`controlnet_path`, `redux_path`), by alias, models-folder name or repo id: a preset never holds a
path, and nothing in it is executed. Every file read is checked for size,
nesting depth, unknown keys and bad values, and all problems are reported at once.

Files: {"format": 1, "name": "...", "description": "...", "settings": {...}}
"""

import json
import math
import os
import re
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from PIL import ExifTags, Image

from mflux_core.app_metadata import (
    INVOKE_KEY, SIZE_TEXT, XMP_KEY, FoundSettings, NotTheirSettings, is_draw_things_xmp, is_mflux_metadata,
    is_swarm_parameters, read_draw_things_xmp, read_invoke_metadata, read_mflux_metadata, read_swarm_parameters,
)
from mflux_core.comfy_workflow import PROMPT_KEY as COMFY_PROMPT_KEY, read_comfy_prompt
from mflux_core.errors import InvalidRequest
from mflux_core.images.outpaint import parse_padding
from mflux_core.lora.a1111 import LoraUse, lora_library_name, take_lora_tags, with_loras_added
from mflux_core.metadata import A1111_KEY, JSON_KEY, MAX_METADATA_CHARS, request_from_metadata
from mflux_core.request import (
    MAX_SEED, MAX_SIDE, MAX_STEPS, REQUEST_SETTINGS, TOOLS, GenerationRequest, is_finite_number, whole_text,
)
from mflux_core.controlnet_infotext import controlnet_settings
from mflux_core.controlnet_units import IMAGE_KEY
from mflux_core.settings_schema import (
    MAX_BATCH, MAX_LIST_ITEMS, MAX_LORA_SCALE, MAX_PROMPT_CHARS, MAX_TRUE_CFG_SCALE, SEED, Setting, checked, fragment,
    number, problems, schema, text,
)
from mflux_core.settings_schema import a1111_sampling
from mflux_core.settings_schema import (
    A1111_OTHER_UPSCALERS, MAX_FACE_FIX_PADDING, MAX_HIRES_SCALE, MAX_MASK_BLUR, ONLY_MASKED_PADDING,
)
from mflux_core.tools.specs import FACE_FIX, FACE_FIX_PADDING, FACE_FIX_PROMPT, FACE_FIX_STRENGTH, tool_spec

FORMAT_VERSION = 1
MAX_PRESET_BYTES = 64 * 1024
MAX_JSON_DEPTH = 4  # preset -> settings -> extra -> a list value
MAX_NAME_CHARS = 64
MAX_DESCRIPTION_CHARS = 500
MAX_EXTRA_KEYS = 32
MAX_EXTRA_TEXT = 200  # characters of a text value in `extra`

INPUT_PATH_FIELDS = frozenset({
    "image_path", "reference_image_paths", "masked_image_path", "depth_image_path", "controlnet_image_path",
    "redux_image_paths", "init_noise_path",
})
SETTING_FIELDS = tuple(f.name for f in fields(GenerationRequest) if f.name not in INPUT_PATH_FIELDS)
UI_FIELDS = ("batch_count", "styles")  # the page's, not a request's: images per run, A1111 styles by name
PRESET_KEYS = {"format", "name", "description", "settings"}

# An alias, a models-folder name or a repo id ("owner/name"): never a path.
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]*$")
_EXTRA_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class PresetError(InvalidRequest):
    """A preset (or PNG settings) that cannot be used; the message lists every problem."""


@dataclass(frozen=True)
class Preset:
    name: str
    settings: dict
    description: str = ""
    source: str = "user"  # "shipped" or "user"
    path: Path | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name} (shipped)" if self.source == "shipped" else self.name

    @property
    def tool(self) -> str:
        return self.settings.get("tool", "generate")


# ----- validation ---------------------------------------------------------------------------

MODEL_NAME = "a model name (alias, models-folder name or owner/repo), not a path"
MODULE_NAME = "a VAE / text encoder file's name in the models folder, not a path"
PADDING = "pixels or percentages such as 64 or 0,25%,0,25%"


def _model_problem(value) -> str | None:
    if len(value) > 200 or not _MODEL_NAME.match(value) or ".." in value:
        return f"must be {MODEL_NAME}"


def _module_name_problem(value) -> str | None:
    """A module's name in the models folder: a file, or a file in one folder there (`text_encoders/t5xxl.sft`)."""
    if value.startswith(("/", "~", ".")) or ".." in value or "\\" in value or value.count("/") > 1:
        return f"must be {MODULE_NAME}"


def _padding_problem(value) -> str | None:
    if len(value) > 100:
        return "must be text such as 64 or 0,25%,0,25%"
    try:
        parse_padding(value, 1024, 1024)
    except InvalidRequest:
        return f"must be {PADDING}"


def _lora_name_problem(value) -> str | None:
    if len(value) > 120 or not _LORA_NAME.match(value) or ".." in value:
        return "must be a LoRA library name, not a path"


def _is_path_key(key: str) -> bool:
    return key.endswith(("_path", "_paths"))


def _extra_problem(value: dict) -> str | None:
    if len(value) > MAX_EXTRA_KEYS:
        return f"must be an object with at most {MAX_EXTRA_KEYS} keys"
    for key, item in value.items():
        if not _EXTRA_KEY.match(str(key)):
            return f"has a bad key {str(key)[:40]!r} (lowercase letters, digits and _ only)"
        if _is_path_key(key) and (not isinstance(item, str) or _model_problem(item)):
            return f"{key} must name a model (alias, models-folder name or owner/repo), not a file"
        scalars = item if isinstance(item, list) else [item]
        if isinstance(item, list) and len(item) > MAX_LIST_ITEMS:
            return f"{key} has more than {MAX_LIST_ITEMS} items"
        for scalar in scalars:
            if not (scalar is None or isinstance(scalar, bool) or is_finite_number(scalar)
                    or (isinstance(scalar, str) and len(scalar) <= MAX_EXTRA_TEXT)):
                return f"{key} must be a number, true/false, short text or a list of those"


def _region_mask_problem(regions) -> str | None:
    if any(region.get("mask_path") is not None for region in regions):
        return "hold a region mask path; presets hold boxes only (masks are input files)"
    return None


def _units_problem(units) -> str | None:
    for number_, unit in enumerate(units, 2):
        if unit.get(IMAGE_KEY) is not None:
            return f"hold unit {number_}'s control image path; presets hold settings only (images are input files)"
        if unit.get("controlnet_path") is not None and _model_problem(unit["controlnet_path"]):
            return f"name unit {number_}'s ControlNet by a path; it must be {MODEL_NAME}"
    return None


def _model_name(label: str) -> Setting:
    return checked(text(label), _model_problem, MODEL_NAME).optional()


# The request's settings, less its input files; what a preset names (models, LoRAs, side models in `extra`)
# is named, never a path. A preset's seed may be null: a random one each run.
PRESET_SETTINGS: dict[str, Setting] = {
    **{key: setting for key, setting in REQUEST_SETTINGS.items() if key not in INPUT_PATH_FIELDS},
    "model": _model_name("The model"),
    "base_model": _model_name("The base model"),
    "modules": checked(text("VAE / text encoder file", 255), _module_name_problem, MODULE_NAME).listed(),
    "seed": SEED.optional(),
    "outpaint_padding": checked(text("The outpaint padding"), _padding_problem, PADDING).optional(),
    "lora_paths": checked(text("LoRA"), _lora_name_problem, "a LoRA library name").listed(),
    "extra": checked(Setting("The setting extra", dict, "an object"), _extra_problem,
                     f"an object with at most {MAX_EXTRA_KEYS} keys"),
    "batch_count": number("Images", 1, MAX_BATCH, whole=True),
    "styles": text("Style", 200).listed(),
    "regions": checked(REQUEST_SETTINGS["regions"], _region_mask_problem, "regions with boxes (masks are input files)"),
    "controlnet_units": checked(REQUEST_SETTINGS["controlnet_units"], _units_problem,
                                "ControlNet units without images, their ControlNets named"),
}
assert set(PRESET_SETTINGS) == set(SETTING_FIELDS) | set(UI_FIELDS), "every setting needs a check"
_SCHEMA = schema("PresetSettings", PRESET_SETTINGS, dict.fromkeys(PRESET_SETTINGS))


def settings_problems(settings) -> list[str]:
    """Every problem with a settings object, as short phrases; empty when it is usable."""
    if not isinstance(settings, dict):
        return ["'settings' must be an object"]
    inputs = [key for key in settings if key in INPUT_PATH_FIELDS]
    found = [f"'{key}' is an input file path; presets hold settings only" for key in inputs]
    found += problems(_SCHEMA, {k: v for k, v in settings.items() if k not in inputs}, PRESET_SETTINGS, fragment)
    loras = settings.get("lora_paths") or []
    for key, what in (("lora_scales", "scales"), ("lora_text_encoder_scales", "text encoder scales")):
        scales = settings.get(key) or []
        if not found and scales and len(scales) != len(loras):
            found.append(f"{len(loras)} LoRAs but {len(scales)} {what}")
    return found


def validate_settings(settings) -> dict:
    """A clean copy of `settings` (lists, not tuples), or PresetError listing every problem."""
    problems = settings_problems(settings)
    if problems:
        raise PresetError("The settings cannot be used: " + "; ".join(problems[:8]) + ".")
    return {k: list(v) if isinstance(v, tuple) else (dict(v) if isinstance(v, dict) else v)
            for k, v in settings.items()}


def json_depth(text: str) -> int:
    """How deeply arrays and objects nest in JSON text, found without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise PresetError(f"A preset name must be 1 to {MAX_NAME_CHARS} printable characters.")
    return name.strip()


def parse_preset(text: str, source: str = "user", path: Path | None = None) -> Preset:
    """A Preset from JSON text someone gave us; PresetError says everything that is wrong."""
    where = path.name if path else "The preset"
    if len(text.encode("utf-8", errors="replace")) > MAX_PRESET_BYTES:
        raise PresetError(f"{where} is larger than {MAX_PRESET_BYTES // 1024} KiB; presets are small settings files.")
    if json_depth(text) > MAX_JSON_DEPTH:
        raise PresetError(f"{where} nests deeper than {MAX_JSON_DEPTH} levels; it is not a preset.")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as error:  # ValueError: JSONDecodeError, or a number past 4,300 digits
        raise PresetError(f"{where} is not valid JSON ({getattr(error, 'msg', error)}).") from None
    if not isinstance(data, dict):
        raise PresetError(f"{where} must be a JSON object with 'name' and 'settings'.")
    problems = [f"unknown key '{str(k)[:40]}'" for k in data if k not in PRESET_KEYS]
    if data.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        problems.append(f"format {data.get('format')!r} is not {FORMAT_VERSION}")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        problems.append(f"'description' must be text of at most {MAX_DESCRIPTION_CHARS} characters")
    problems += settings_problems(data.get("settings"))
    if problems:
        raise PresetError(f"{where} cannot be used: " + "; ".join(problems[:8]) + ".")
    return Preset(name=_check_name(data.get("name")), settings=validate_settings(data["settings"]),
                  description=description, source=source, path=path)


def preset_json(preset: Preset) -> str:
    data = {"format": FORMAT_VERSION, "name": preset.name, "settings": preset.settings}
    if preset.description:
        data["description"] = preset.description
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


# ----- files --------------------------------------------------------------------------------


def preset_file_name(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", _check_name(name).lower()).strip("-")[:60] or "preset"
    return f"{slug}.json"


def read_preset_file(path: Path, source: str = "user") -> Preset:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PRESET_BYTES:
            raise PresetError(f"{path.name} is larger than {MAX_PRESET_BYTES // 1024} KiB; it is not a preset.")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise PresetError(f"Cannot read the preset {path.name} ({error.strerror or error}).") from None
    return parse_preset(text, source=source, path=path)


def list_presets(folders: list[tuple[Path, str]]) -> tuple[list[Preset], list[str]]:
    """Presets in (folder, source) pairs, by name; later folders win on a name clash. Also the problems found."""
    by_name: dict[str, Preset] = {}
    problems = []
    for folder, source in folders:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).glob("*.json")):
            try:
                preset = read_preset_file(path, source)
            except PresetError as error:
                problems.append(str(error))
                continue
            by_name[preset.name] = preset
    return sorted(by_name.values(), key=lambda p: (p.source != "user", p.name.lower())), problems


def _named_file(folder: Path, name: str) -> Path:
    """The file of the preset `name` in `folder`; refused when that file holds a preset of another name (names
    that differ only in case or punctuation share a file name: "My Look" and "my look!" are my-look.json)."""
    path = Path(folder) / preset_file_name(name)
    try:
        holder = read_preset_file(path).name if path.is_file() else name
    except PresetError:  # a damaged file: replacing or deleting it loses nothing
        holder = name
    if holder != name:
        raise PresetError(f"The preset {name!r} would go into {path.name}, which holds the preset {holder!r}: give "
                          "it a name that differs in more than case or punctuation.")
    return path


def save_preset(folder: Path, preset: Preset) -> Path:
    """Write (or replace) the preset's file in `folder` atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = _named_file(folder, preset.name)
    temp = folder / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        temp.write_text(preset_json(preset), encoding="utf-8")
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise PresetError(f"Could not save the preset to {path} ({error.strerror or error}).") from None
    return path


def delete_preset(folder: Path, name: str) -> None:
    path = _named_file(folder, name)
    if not path.is_file():
        raise PresetError(f"There is no user preset named {name!r} (shipped presets cannot be deleted).")
    path.unlink()


# ----- settings from requests and PNGs -------------------------------------------------------


def _named_side_models(settings: dict) -> dict:
    """Tool settings with side models by name kept and paths (input files, model folders) dropped."""
    return {k: v for k, v in settings.items()
            if not (_is_path_key(k) and (not isinstance(v, str) or _model_problem(v)))}


def settings_from_request(request: GenerationRequest) -> dict:
    """The settings of a request (its input paths dropped, LoRA paths as library names)."""
    values = request.to_dict()
    settings = {k: values[k] for k in SETTING_FIELDS}
    settings["lora_paths"] = [lora_library_name(p) for p in settings["lora_paths"]]
    settings["regions"] = [region for region in settings["regions"] if region.get("mask_path") is None]
    settings["extra"] = _named_side_models(settings["extra"])
    settings["controlnet_units"] = [_named_side_models({k: v for k, v in unit.items() if k != IMAGE_KEY})
                                    for unit in settings["controlnet_units"]]
    for key in ("model", "base_model"):  # a folder path: keep its name, as in a models folder
        if settings[key] and _model_problem(settings[key]):
            name = Path(settings[key]).name
            settings[key] = None if _model_problem(name) else name
    settings["modules"] = [Path(name).name if _module_name_problem(name) else name for name in settings["modules"]]
    return settings


NEGATIVE_PROMPT = "Negative prompt:"
_A1111_ITEM = re.compile(r'(?:^|(?<=,))\s*([A-Za-z][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


@dataclass(frozen=True)
class Infotext:
    prompt: str
    negative: str
    items: dict[str, str]  # the last line's "Key: value" items, a quoted value with its quotes


def split_infotext(text: str) -> Infotext:
    """An A1111 / Forge `parameters` text in its parts, as A1111 splits it: the last line is the items line when it
    holds at least three items; the lines before it are the prompt, then the negative prompt from its label on."""
    *lines, last = text.strip().split("\n")
    if len(_A1111_ITEM.findall(last)) < 3:
        lines, last = [*lines, last], ""
    lines = [line.strip() for line in lines]
    negative_from = next((i for i, line in enumerate(lines) if line.startswith(NEGATIVE_PROMPT)), len(lines))
    negative = [lines[negative_from][len(NEGATIVE_PROMPT):].strip(), *lines[negative_from + 1:]] if (
        negative_from < len(lines)) else []  # A1111 writes it after the prompt, over one or more lines
    return Infotext("\n".join(lines[:negative_from]), "\n".join(negative),
                    {key.strip(): value.strip() for key, value in _A1111_ITEM.findall(last)})


def settings_from_a1111(text: str) -> dict:
    """Prompt, negative prompt, steps, seed, size, guidance, true CFG, sampler, schedule and the hires fix from an
    A1111 / Forge `parameters` text chunk, the prompt's `<lora:name:scale>` tags as LoRAs (by name), and the
    ControlNet extension's first unit as the ControlNet tool's settings."""
    infotext = split_infotext(text)
    negative = infotext.negative
    values = {key: value.strip('"') for key, value in infotext.items.items()}
    prompt, tagged = take_lora_tags(infotext.prompt)
    settings: dict = {"prompt": prompt[:MAX_PROMPT_CHARS], **_tagged_loras(tagged)}  # as found_settings cuts it
    steps, seed = whole_text(values.get("Steps")), whole_text(values.get("Seed"))
    if steps is not None:
        settings["steps"] = max(1, min(MAX_STEPS, steps))
    if seed is not None and seed <= MAX_SEED:
        settings["seed"] = seed
    settings.update(_a1111_variation(values))
    size = SIZE_TEXT.fullmatch(values.get("Size", ""))
    if size:
        settings["width"], settings["height"] = (_snapped_side(int(v)) for v in size.groups())
    if values.get("Tool") in TOOLS:
        settings["tool"] = values["Tool"]
    modules = [values[f"Module {i}"] for i in range(1, 4) if values.get(f"Module {i}")]  # Forge's VAE / TE files
    if modules and not any(map(_module_name_problem, modules)):
        settings["modules"] = modules
    settings.update(a1111_sampling(values.get("Sampler", ""), values.get("Schedule type", "")))
    settings.update(_a1111_guidance(values, negative, tool_spec(settings.get("tool", "generate")).true_cfg))
    steered = controlnet_settings(values) if values.get("Tool") in (None, "controlnet") else {}
    inpainted = _a1111_inpaint_area(values) if values.get("Tool") in (None, "fill") else {}
    hires = _a1111_hires(values)
    settings = {**settings, **(hires or _a1111_img2img(values)), **steered, **inpainted}
    face_fix = _a1111_face_fix(values)
    if face_fix:
        settings["extra"] = {**settings.get("extra", {}), **face_fix}
    return validate_settings(settings)


def _a1111_face_fix(values: dict) -> dict:
    """The face fix from ADetailer's items (its first unit's; any model: the studio finds faces its own way)."""
    if "ADetailer model" not in values:
        return {}
    found = {FACE_FIX: True}
    prompt = values.get("ADetailer prompt", "")
    if prompt:
        try:  # written as a JSON string (its quotes already taken off)
            prompt = json.loads(f'"{prompt}"')
        except json.JSONDecodeError:
            pass
        found[FACE_FIX_PROMPT] = prompt[:MAX_EXTRA_TEXT]
    try:
        strength = float(values.get("ADetailer denoising strength", "nan"))
        padding = float(values.get("ADetailer inpaint padding", "nan"))
    except ValueError:
        return found
    if 0 < strength <= 1:
        found[FACE_FIX_STRENGTH] = strength
    if padding.is_integer() and 0 <= padding <= MAX_FACE_FIX_PADDING:
        found[FACE_FIX_PADDING] = int(padding)
    return found


def _a1111_img2img(values: dict) -> dict:
    """The image strength of an img2img, inpainting or SD upscale run from A1111's denoising strength (1 minus it; 1
    starts from noise: no image strength)."""
    try:
        strength = float(values.get("Denoising strength", "nan"))
    except ValueError:
        return {}
    return {"image_strength": round(1 - strength, 6)} if 0 < strength < 1 else {}


def _snapped_side(pixels: int) -> int:
    """A side another program made, at the nearest the studio makes (a multiple of 16 within its limits)."""
    return max(16, min(MAX_SIDE, round(pixels / 16) * 16))


def found_settings(read: Callable[[str], FoundSettings], text: str, what: str) -> dict:
    """Another app's settings (app_metadata.py, comfy_workflow.py) brought within the studio's limits as A1111's are:
    a seed past the studio's 32-bit range left out, steps, size, guidance and true CFG clamped, LoRAs by name."""
    try:
        found = read(text)
    except NotTheirSettings as error:
        raise PresetError(f"The {what} in the image cannot be read: {error}.") from None
    raw = found.settings
    settings = {key: raw[key] for key in ("sampler", "schedule") if key in raw}
    settings.update({key: raw[key][:MAX_PROMPT_CHARS] for key in ("prompt", "negative_prompt") if key in raw})
    if raw.get("seed", MAX_SEED + 1) <= MAX_SEED:
        settings["seed"] = int(raw["seed"])
    if "steps" in raw:
        settings["steps"] = max(1, min(MAX_STEPS, int(raw["steps"])))
    if "width" in raw:
        settings["width"], settings["height"] = _snapped_side(int(raw["width"])), _snapped_side(int(raw["height"]))
    if 0 <= raw.get("guidance", -1) <= 100:
        settings["guidance"] = float(raw["guidance"])
    if "true_cfg_scale" in raw:
        settings["true_cfg_scale"] = min(float(MAX_TRUE_CFG_SCALE), float(raw["true_cfg_scale"]))
    if "image_strength" in raw:
        settings["image_strength"] = raw["image_strength"]
    if "quantize" in raw:  # mflux's: its images are made at it
        settings["quantize"] = raw["quantize"]
    return validate_settings({**settings, **_tagged_loras(found.loras)})


def _a1111_variation(values: dict) -> dict:
    """The variation seed and its strength from A1111's items; nothing where either is missing or out of range."""
    seed, strength = whole_text(values.get("Variation seed")), values.get("Variation seed strength", "")
    try:
        strength = float(strength)
    except ValueError:
        return {}
    if not (seed is not None and seed <= MAX_SEED and 0 < strength <= 1):
        return {}
    return {"variation_seed": seed, "variation_strength": strength}


def _a1111_inpaint_area(values: dict) -> dict:
    """Fill's mask blur, "Only masked" and its padding from A1111's inpaint items (its default padding where none is
    given)."""
    blur, padding = whole_text(values.get("Mask blur")), whole_text(values.get("Masked area padding"))
    settings = {"mask_blur": min(MAX_MASK_BLUR, blur)} if blur else {}
    if values.get("Inpaint area") != "Only masked":
        return settings
    return {**settings, "only_masked_padding": ONLY_MASKED_PADDING if padding is None else min(MAX_SIDE, padding)}


def _a1111_hires(values: dict) -> dict:
    """The hires fix's settings from A1111's items; A1111's latent and other built-in upscalers leave ours (Lanczos),
    a model's name (4x-UltraSharp, R-ESRGAN 4x+) is kept: the run finds its file in the models folder."""
    try:
        scale, strength = float(values["Hires upscale"]), float(values.get("Denoising strength", "nan"))
    except (KeyError, ValueError):
        return {}
    if not 1 <= scale <= MAX_HIRES_SCALE:
        return {}
    settings = {"hires_scale": scale, "hires_prompt": values.get("Hires prompt", "")}
    hires_steps = whole_text(values.get("Hires steps"))
    if hires_steps:  # A1111's 0: the first pass's
        settings["hires_steps"] = min(MAX_STEPS, hires_steps)
    if 0 < strength <= 1:
        settings["hires_strength"] = strength
    upscaler = values.get("Hires upscaler", "")
    if upscaler and not upscaler.startswith("Latent") and upscaler not in A1111_OTHER_UPSCALERS:
        settings["hires_upscaler"] = upscaler
    return settings


def _a1111_guidance(values: dict, negative: str, has_true_cfg: bool) -> dict:
    """FLUX guidance, negative prompt and true CFG from A1111's words.

    Forge (and we) write FLUX's distilled guidance as "Distilled CFG Scale" and real classifier-free guidance as
    "CFG scale" (1: off), which is diffusers' true_cfg_scale. A plain A1111 PNG (Stable Diffusion) has only "CFG
    scale": real CFG on an undistilled model, typically 5-8, which is not FLUX's distilled guidance (that would
    mean something else entirely), so guidance stays the tool's default and the scale becomes true CFG only where
    a negative prompt comes with it (A1111's CFG always had one, if empty; here an empty one turns it off).
    """
    def read(key: str) -> float | None:
        try:
            value = float(values[key])
        except (KeyError, ValueError):
            return None
        return value if math.isfinite(value) else None

    forge = "Distilled CFG Scale" in values
    settings = {}
    guidance = read("Distilled CFG Scale" if forge else "Guidance")
    if guidance is not None and 0 <= guidance <= 100:
        settings["guidance"] = guidance
    if not has_true_cfg:
        return settings
    if negative:
        settings["negative_prompt"] = negative[:MAX_PROMPT_CHARS]
    cfg = read("CFG scale")
    if cfg is not None and (forge or negative):
        settings["true_cfg_scale"] = max(1.0, min(float(MAX_TRUE_CFG_SCALE), cfg))
    return settings


def _tagged_loras(tagged: list[LoraUse]) -> dict:
    """lora_paths / lora_scales (clamped to the allowed range) of the tagged LoRAs, by name, and their text-encoder
    scales where one differs: whoever applies the settings looks them up in its LoRA library (the page names those
    it does not have)."""
    def clamped(scale: float) -> float:
        return max(-MAX_LORA_SCALE, min(MAX_LORA_SCALE, scale))

    found = [LoraUse(lora.name, clamped(lora.scale), clamped(lora.text_encoder_scale)) for lora in tagged
             if not _lora_name_problem(lora.name)]
    if not found:
        return {}
    loras = with_loras_added(GenerationRequest(), found)
    settings = {"lora_paths": list(loras.lora_paths), "lora_scales": list(loras.lora_scales)}
    return {**settings, "lora_text_encoder_scales": list(loras.lora_text_encoder_scales)} \
        if loras.lora_text_encoder_scales else settings


def settings_from_png(path: Path) -> dict:
    """Settings stored in an image: ours (exact), an A1111 `parameters` chunk (or a JPEG's or WebP's EXIF comment), a
    ComfyUI graph, SwarmUI's or InvokeAI's JSON, Draw Things' XMP; PresetError when none."""
    path = Path(path)
    chunks = image_metadata(path)
    ours, theirs = chunks.get(JSON_KEY), chunks.get(A1111_KEY)
    if isinstance(ours, str) and len(ours) <= MAX_METADATA_CHARS:
        try:
            stored = json.loads(ours)
        except (ValueError, RecursionError):  # ValueError: JSONDecodeError, or a number past 4,300 digits
            raise PresetError(f"The settings in {path.name} are not valid JSON.") from None
        return validate_settings(settings_from_request(request_from_metadata(stored)))
    if isinstance(theirs, str) and len(theirs) <= MAX_METADATA_CHARS:
        if is_swarm_parameters(theirs):  # SwarmUI writes JSON where A1111 writes its text
            return found_settings(read_swarm_parameters, theirs, "SwarmUI settings")
        if is_mflux_metadata(theirs):  # and so does mflux, into the EXIF UserComment
            return found_settings(read_mflux_metadata, theirs, "mflux settings")
        return settings_from_a1111(theirs)
    for key, read, what in ((COMFY_PROMPT_KEY, read_comfy_prompt, "ComfyUI workflow"),
                            (INVOKE_KEY, read_invoke_metadata, "InvokeAI settings")):
        if isinstance(chunks.get(key), str) and len(chunks[key]) <= MAX_METADATA_CHARS:
            return found_settings(read, chunks[key], what)
    xmp = _xmp_text(chunks)
    if xmp is not None and is_draw_things_xmp(xmp):
        return found_settings(read_draw_things_xmp, xmp, "Draw Things settings")
    raise PresetError(f"{path.name} carries no settings (not mflux-studio's, an A1111 'parameters' chunk, a "
                      "ComfyUI workflow, SwarmUI's, InvokeAI's, Draw Things' or mflux's).")


def image_metadata(path: Path) -> dict:
    """An image's metadata as Pillow reads it (a PNG's text chunks among it), with a JPEG's or WebP's EXIF
    UserComment under A1111's key: A1111 and Forge write their text there where a PNG has its chunk."""
    try:
        with Image.open(path) as image:
            chunks = dict(image.info)
            comment = _exif_user_comment(image) if A1111_KEY not in chunks else None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise PresetError(f"{Path(path).name} is not an image we can read ({error}).") from None
    return chunks if comment is None else {**chunks, A1111_KEY: comment}


def _exif_user_comment(image: Image.Image) -> str | None:
    """The EXIF UserComment as text: its first 8 bytes name the encoding (EXIF 2.3, 4.6.5); "UNICODE" is UTF-16,
    big-endian as A1111 writes it (piexif) unless the bytes show little-endian text."""
    comment = image.getexif().get_ifd(ExifTags.IFD.Exif).get(ExifTags.Base.UserComment)
    if not isinstance(comment, bytes) or len(comment) > 2 * MAX_METADATA_CHARS:
        return None
    prefix, body = comment[:8], comment[8:]
    if prefix == b"UNICODE\0":
        little_endian = body[1:2] == b"\0" and body[:1] != b"\0"
        return body.decode("utf-16-le" if little_endian else "utf-16-be", errors="replace").rstrip("\0")
    if prefix in (b"ASCII\0\0\0", b"\0" * 8):
        return body.decode("utf-8", errors="replace").rstrip("\0")
    if comment.startswith(b"{"):  # mflux before 0.10 writes its JSON without the encoding's name
        return comment.decode("utf-8", errors="replace").rstrip("\0")
    return None


def _xmp_text(chunks: dict) -> str | None:
    """The image's XMP packet: a PNG's iTXt chunk, or what Pillow reads from a JPEG or WebP (bytes)."""
    xmp = chunks.get(XMP_KEY, chunks.get("xmp"))
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", errors="replace")
    return xmp.strip() if isinstance(xmp, str) and len(xmp) <= MAX_METADATA_CHARS else None
