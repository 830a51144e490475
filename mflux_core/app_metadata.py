"""The settings other FLUX.1 apps store in their images, beside A1111's text (presets.settings_from_a1111) and
ComfyUI's graph (comfy_workflow.py): SwarmUI's JSON (its "parameters" chunk, {"sui_image_params": {...}}), InvokeAI's
("invokeai_metadata"), Draw Things' (JSON inside the image's XMP) and mflux's (JSON in the EXIF UserComment, and its
--metadata file). Each reader returns the settings as found, under
the studio's names; presets.py clamps and validates them (found_settings). What an app names differently from the
studio (its model files, samplers the studio lacks) is left out.
"""

import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field

from mflux_core.lora.a1111 import LoraUse
from mflux_core.request import is_finite_number as is_number
from mflux_core.settings_schema import QUANTIZE_BITS
from mflux_core.weights.resolve import ALIASES, MFLUX_MODEL_NAMES

SIZE_TEXT = re.compile(r"([0-9]{1,18})x([0-9]{1,18})")  # "WxH", each side as request.whole_text reads it
SWARM_KEY = "sui_image_params"  # inside the JSON SwarmUI writes into the "parameters" chunk
INVOKE_KEY = "invokeai_metadata"  # the PNG text chunk InvokeAI writes
MFLUX_KEY = "mflux_version"  # in the JSON mflux writes beside an image and into its EXIF UserComment
# ComfyUI's sampler names (SwarmUI runs ComfyUI and keeps them) -> ours, where the method is the same
COMFY_SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "dpmpp_2m": "dpm++2m",
                  "dpmpp_2m_sde": "dpm++2m_sde", "uni_pc": "unipc"}
SCHEDULES = ("simple", "beta", "karras", "exponential")  # ComfyUI's names are ours
# InvokeAI's scheduler names -> (our sampler, our schedule); its "_k" variants use Karras sigmas
INVOKE_SCHEDULERS = {**{name: (ours, None) for name, ours in (("euler", "euler"), ("euler_a", "euler_a"),
                                                                 ("heun", "heun"), ("dpmpp_2m", "dpm++2m"),
                                                                 ("dpmpp_2m_sde", "dpm++2m_sde"), ("unipc", "unipc"))},
                     **{f"{name}_k": (ours, "karras") for name, ours in (("euler", "euler"), ("heun", "heun"),
                                                                          ("dpmpp_2m", "dpm++2m"),
                                                                          ("dpmpp_2m_sde", "dpm++2m_sde"),
                                                                          ("unipc", "unipc"))}}
XMP_KEY = "XML:com.adobe.xmp"  # the PNG text chunk of an image's XMP (Pillow also reads JPEG's and WebP's as "xmp")
DRAW_THINGS = "Draw Things"  # its XMP names it as the CreatorTool
XMP_NAMESPACES = {"exif": "http://ns.adobe.com/exif/1.0/", "xmp": "http://ns.adobe.com/xap/1.0/",
                  "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
# Draw Things' sampler names -> (our sampler, our schedule). "Trailing" spaces the steps as FLUX.1's schedule does;
# DDIM without noise on a flow model takes Euler's step (both move along the predicted velocity)
DRAW_THINGS_SAMPLERS = {"Euler Ancestral": ("euler_a", None), "Euler A Trailing": ("euler_a", None),
                        "DPM++ 2M Karras": ("dpm++2m", "karras"), "DPM++ 2M Trailing": ("dpm++2m", None),
                        "UniPC Trailing": ("unipc", None), "DDIM Trailing": ("euler", None)}
DRAW_THINGS_LORA_SUFFIX = re.compile(r"(_lora_(f16|q8p))?(\.ckpt)?$", re.IGNORECASE)  # after file_stem: its imports


class NotTheirSettings(ValueError):
    """The chunk is not settings the reader understands (the message says why)."""


@dataclass
class FoundSettings:
    settings: dict = field(default_factory=dict)  # request settings as found, before clamping
    loras: list[LoraUse] = field(default_factory=list)


def is_whole(value) -> bool:
    return is_number(value) and float(value).is_integer() and value >= 0


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: JSONDecodeError, or a number past 4,300 digits
        raise NotTheirSettings("it is not valid JSON") from None
    if not isinstance(value, dict):
        raise NotTheirSettings("it is not a JSON object")
    return value


def _name_in(value, names) -> bool:
    """Whether `value` is one of the app's names we map (a value of another kind is not)."""
    return isinstance(value, str) and value in names


def _number_of(value) -> float | None:
    """A number, or a number written as text (SwarmUI writes list values as text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    return float(value) if is_number(value) else None


def _common(params: dict, names: dict[str, str]) -> dict:
    """Prompt, negative prompt, seed, steps and size under the app's `names` (ours -> theirs)."""
    found = {}
    for ours in ("prompt", "negative_prompt"):
        if isinstance(params.get(names[ours]), str):
            found[ours] = params[names[ours]]
    for ours in ("seed", "steps", "width", "height"):
        if is_whole(params.get(names[ours])):
            found[ours] = int(params[names[ours]])
    if "width" in found and "height" not in found or "height" in found and "width" not in found:
        found.pop("width", None), found.pop("height", None)
    return found


def _with_true_cfg(found: dict, cfg) -> dict:
    """A negative prompt counts with CFG above 1 (true CFG); else neither is kept."""
    if found.get("negative_prompt") and is_number(cfg) and cfg > 1:
        return {**found, "true_cfg_scale": float(cfg)}
    found.pop("negative_prompt", None)
    return found


def is_swarm_parameters(text: str) -> bool:
    return text.lstrip().startswith("{") and SWARM_KEY in text


def read_swarm_parameters(text: str) -> FoundSettings:
    """SwarmUI's "parameters" JSON: its sui_image_params, ComfyUI's sampler and scheduler names, FLUX guidance as
    fluxguidancescale, LoRAs as two lists (names, weights as text), an init image's creativity (denoising)."""
    params = json_object(text).get(SWARM_KEY)
    if not isinstance(params, dict):
        raise NotTheirSettings(f"it has no {SWARM_KEY}")
    found = _common(params, {"prompt": "prompt", "negative_prompt": "negativeprompt", "seed": "seed",
                             "steps": "steps", "width": "width", "height": "height"})
    found = _with_true_cfg(found, params.get("cfgscale"))
    if _name_in(params.get("sampler"), COMFY_SAMPLERS):
        found["sampler"] = COMFY_SAMPLERS[params["sampler"]]
    if _name_in(params.get("scheduler"), SCHEDULES):
        found["schedule"] = params["scheduler"]
    if is_number(params.get("fluxguidancescale")):
        found["guidance"] = float(params["fluxguidancescale"])
    creativity = _number_of(params.get("initimagecreativity"))
    if creativity is not None and 0 < creativity < 1:
        found["image_strength"] = round(1 - creativity, 6)
    return FoundSettings(found, listed_loras(params.get("loras"), params.get("loraweights")))


def listed_loras(names, weights) -> list[LoraUse]:
    """LoRAs kept as two lists, files and weights (a weight as text too; a missing one is 1)."""
    if not isinstance(names, list):
        return []
    weights = weights if isinstance(weights, list) else []
    loras = []
    for index, name in enumerate(names):
        weight = _number_of(weights[index]) if index < len(weights) else None
        if isinstance(name, str) and name:
            loras.append(LoraUse(file_stem(name), 1.0 if weight is None else weight, 1.0 if weight is None else weight))
    return loras


def read_invoke_metadata(text: str) -> FoundSettings:
    """InvokeAI's invokeai_metadata: its core metadata (positive_prompt, guidance for FLUX.1, a scheduler that names
    sampler and sigmas together, LoRAs as {"model": {"name"}, "weight"}, an img2img's strength)."""
    params = json_object(text)
    found = _common(params, {"prompt": "positive_prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                             "steps": "steps", "width": "width", "height": "height"})
    found = _with_true_cfg(found, params.get("cfg_scale"))
    if _name_in(params.get("scheduler"), INVOKE_SCHEDULERS):
        sampler, schedule = INVOKE_SCHEDULERS[params["scheduler"]]
        found.update(sampler=sampler, **({"schedule": schedule} if schedule else {}))
    if is_number(params.get("guidance")):
        found["guidance"] = float(params["guidance"])
    strength = params.get("strength")
    if "img2img" in str(params.get("generation_mode", "")) and is_number(strength) and 0 < strength < 1:
        found["image_strength"] = round(1 - strength, 6)
    loras, entries = [], params.get("loras")
    for entry in entries if isinstance(entries, list) else []:
        model = entry.get("model") if isinstance(entry, dict) else None
        name = (model or {}).get("name") if isinstance(model, dict) else None
        weight = entry.get("weight") if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            weight = float(weight) if is_number(weight) else 1.0
            loras.append(LoraUse(file_stem(name), weight, weight))
    return FoundSettings(found, loras)


def is_draw_things_xmp(text: str) -> bool:
    return DRAW_THINGS in text and "UserComment" in text


def _xmp_property(description: ElementTree.Element, name: str) -> str | None:
    """An XMP property of rdf:Description, written either as an attribute or as an element (its text, or its
    rdf:Alt's first item's)."""
    prefix, local = name.split(":")
    qualified = f"{{{XMP_NAMESPACES[prefix]}}}{local}"
    if qualified in description.attrib:
        return description.attrib[qualified]
    element = description.find(qualified)
    return None if element is None else "".join(element.itertext()).strip()


def read_draw_things_xmp(text: str) -> FoundSettings:
    """Draw Things' settings: the JSON it writes into the XMP's exif:UserComment ("c" and "uc" the prompts, "scale"
    its text guidance, "size" as "WxH", "strength" the denoising, LoRAs in "lora" or in the full config "v2").
    FLUX.1's guidance is the text guidance while "speed up with guidance embed" is on (Draw Things' default); with it
    off, the guidance embed is FLUX.1's guidance and the text guidance true CFG."""
    if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():  # XMP never has a DTD: no entities to expand
        raise NotTheirSettings("its XMP declares a DTD")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        raise NotTheirSettings("its XMP is not valid XML") from None
    comments = [_xmp_property(description, "exif:UserComment")
                for description in root.iter(f"{{{XMP_NAMESPACES['rdf']}}}Description")]
    comment = next((found for found in comments if found), None)
    if comment is None:
        raise NotTheirSettings("its XMP has no exif:UserComment")
    params = json_object(comment)
    config = params.get("v2") if isinstance(params.get("v2"), dict) else {}
    size = SIZE_TEXT.fullmatch(params["size"]) if isinstance(params.get("size"), str) else None
    sizes = {"width": int(size[1]), "height": int(size[2])} if size else \
        {"width": config.get("width"), "height": config.get("height")}
    found = _common({**params, **sizes}, {"prompt": "c", "negative_prompt": "uc", "seed": "seed", "steps": "steps",
                                          "width": "width", "height": "height"})
    scale = params.get("scale", config.get("guidanceScale"))
    if config.get("speedUpWithGuidanceEmbed") is False:
        found = _with_true_cfg(found, scale)
        scale = config.get("guidanceEmbed")
    else:
        found.pop("negative_prompt", None)  # the speed-up runs without CFG, so the negative prompt had no effect
    if is_number(scale):
        found["guidance"] = float(scale)
    if _name_in(params.get("sampler"), DRAW_THINGS_SAMPLERS):
        sampler, schedule = DRAW_THINGS_SAMPLERS[params["sampler"]]
        found.update(sampler=sampler, **({"schedule": schedule} if schedule else {}))
    strength = params.get("strength")
    if is_number(strength) and 0 < strength < 1:
        found["image_strength"] = round(1 - strength, 6)
    return FoundSettings(found, _draw_things_loras(params.get("lora") if isinstance(params.get("lora"), list)
                                                   else config.get("loras")))


def _draw_things_loras(entries) -> list[LoraUse]:
    """Its LoRAs, {"file" (or "model"): "ink_lora_f16.ckpt", "weight": 0.8} each, by library name."""
    loras = []
    for entry in entries if isinstance(entries, list) else []:
        name = (entry.get("file") or entry.get("model")) if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            weight = float(entry["weight"]) if is_number(entry.get("weight")) else 1.0
            loras.append(LoraUse(DRAW_THINGS_LORA_SUFFIX.sub("", file_stem(name)), weight, weight))
    return loras


def file_stem(name: str) -> str:
    """A LoRA named by a file in the app's folder ("flux/ink.safetensors") as the studio's library names it."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name


def is_mflux_metadata(text: str) -> bool:
    return text.lstrip().startswith("{") and f'"{MFLUX_KEY}"' in text


def read_mflux_metadata(text: str) -> FoundSettings:
    """mflux's metadata: the JSON its --metadata writes beside an image, and into the image's EXIF UserComment.
    Its image strength is ours (the studio's flag is mflux's); its model, a repo id or a path, is left out as
    other apps' model files are; its LoRAs are taken by file name."""
    params = json_object(text)
    if MFLUX_KEY not in params:
        raise NotTheirSettings(f"it has no {MFLUX_KEY}")
    found = _common(params, {"prompt": "prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                             "steps": "steps", "width": "width", "height": "height"})
    if is_number(params.get("guidance")):
        found["guidance"] = float(params["guidance"])
    if is_number(params.get("image_strength")) and 0 < params["image_strength"] < 1:
        found["image_strength"] = float(params["image_strength"])
    if params.get("quantize") in QUANTIZE_BITS:  # it changes the image: restored on the page too
        found["quantize"] = params["quantize"]
    return FoundSettings(found, listed_loras(params.get("lora_paths"), params.get("lora_scales")))


def mflux_command_fields(text: str) -> dict:
    """What mflux's -C restores beside the settings the page takes: the model (ours where its repo or name is one of
    ours, else its local path) and the input images (paths on this machine) with their strengths."""
    params = json_object(text)
    fields = {}
    repos = {repo: alias for alias, repo in ALIASES.items()}
    model, path = params.get("model"), params.get("model_path")
    if isinstance(path, str) and path:
        fields["model"] = path
    elif isinstance(model, str) and (model in repos or model in ALIASES or model in MFLUX_MODEL_NAMES):
        fields["model"] = repos.get(model, model)
    for key in ("image_path", "masked_image_path", "depth_image_path", "controlnet_image_path"):
        if isinstance(params.get(key), str) and params[key]:
            fields[key] = params[key]
    if is_number(params.get("controlnet_strength")):
        fields["controlnet_strength"] = float(params["controlnet_strength"])
    paths, strengths = params.get("redux_image_paths"), params.get("redux_image_strengths")
    if isinstance(paths, list) and all(isinstance(path, str) for path in paths):
        fields["redux_image_paths"] = tuple(paths)
        if isinstance(strengths, list) and all(is_number(value) for value in strengths):
            fields["redux_image_strengths"] = tuple(float(value) for value in strengths)
    return fields
