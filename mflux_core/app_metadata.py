"""The settings other FLUX.1 apps store in their PNGs, beside A1111's text (presets.settings_from_a1111) and ComfyUI's
graph (comfy_workflow.py): SwarmUI's JSON (its "parameters" chunk, {"sui_image_params": {...}}) and InvokeAI's
("invokeai_metadata"). Each reader returns the settings as found, under the studio's names; presets.py clamps and
validates them (found_settings). What an app names differently from the studio (its model files, samplers the
studio lacks) is left out.
"""

import json
from dataclasses import dataclass, field

from mflux_core.lora.a1111 import LoraUse
from mflux_core.request import is_finite_number as is_number

SWARM_KEY = "sui_image_params"  # inside the JSON SwarmUI writes into the "parameters" chunk
INVOKE_KEY = "invokeai_metadata"  # the PNG text chunk InvokeAI writes
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
    except (json.JSONDecodeError, RecursionError):
        raise NotTheirSettings("it is not valid JSON") from None
    if not isinstance(value, dict):
        raise NotTheirSettings("it is not a JSON object")
    return value


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
    if params.get("sampler") in COMFY_SAMPLERS:
        found["sampler"] = COMFY_SAMPLERS[params["sampler"]]
    if params.get("scheduler") in SCHEDULES:
        found["schedule"] = params["scheduler"]
    if is_number(params.get("fluxguidancescale")):
        found["guidance"] = float(params["fluxguidancescale"])
    creativity = _number_of(params.get("initimagecreativity"))
    if creativity is not None and 0 < creativity < 1:
        found["image_strength"] = round(1 - creativity, 6)
    names, weights = params.get("loras"), params.get("loraweights")
    loras = []
    if isinstance(names, list):
        weights = weights if isinstance(weights, list) else []
        for index, name in enumerate(names):
            weight = _number_of(weights[index]) if index < len(weights) else None
            if isinstance(name, str) and name:
                loras.append(LoraUse(file_stem(name), 1.0 if weight is None else weight,
                                     1.0 if weight is None else weight))
    return FoundSettings(found, loras)


def read_invoke_metadata(text: str) -> FoundSettings:
    """InvokeAI's invokeai_metadata: its core metadata (positive_prompt, guidance for FLUX.1, a scheduler that names
    sampler and sigmas together, LoRAs as {"model": {"name"}, "weight"}, an img2img's strength)."""
    params = json_object(text)
    found = _common(params, {"prompt": "positive_prompt", "negative_prompt": "negative_prompt", "seed": "seed",
                             "steps": "steps", "width": "width", "height": "height"})
    found = _with_true_cfg(found, params.get("cfg_scale"))
    if params.get("scheduler") in INVOKE_SCHEDULERS:
        sampler, schedule = INVOKE_SCHEDULERS[params["scheduler"]]
        found.update(sampler=sampler, **({"schedule": schedule} if schedule else {}))
    if is_number(params.get("guidance")):
        found["guidance"] = float(params["guidance"])
    strength = params.get("strength")
    if "img2img" in str(params.get("generation_mode", "")) and is_number(strength) and 0 < strength < 1:
        found["image_strength"] = round(1 - strength, 6)
    loras = []
    for entry in params.get("loras") or []:
        model = entry.get("model") if isinstance(entry, dict) else None
        name = (model or {}).get("name") if isinstance(model, dict) else None
        weight = entry.get("weight") if isinstance(entry, dict) else None
        if isinstance(name, str) and name:
            weight = float(weight) if is_number(weight) else 1.0
            loras.append(LoraUse(file_stem(name), weight, weight))
    return FoundSettings(found, loras)


def file_stem(name: str) -> str:
    """A LoRA named by a file in the app's folder ("flux/ink.safetensors") as the studio's library names it."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    return name[: -len(".safetensors")] if name.lower().endswith(".safetensors") else name
