"""The A1111 ControlNet extension's infotext items, written and read: `ControlNet 0: "Module: canny, Model: ...,
Weight: 0.4, ..."`, one per unit. A1111 and Forge fill a unit's settings from them when an image's parameters are
pasted; the studio writes them from what its ControlNet runs recorded (tools/controlnet_conditioning.unit_record)
and reads the first one into the ControlNet tool's settings (the control image is never in the text).

The extension writes "Field: value" pairs joined by ", " and drops a unit whose values hold "," or ":", so names
are cleaned of both.
"""

import re
from pathlib import PurePath

from mflux_core.images.resize_modes import RESIZE_MODES

UNIT_PREFIX = "ControlNet "
# What made a unit's image, ours -> the extension's preprocessor ("module") names
MODULES = {"canny": "canny", "depth": "depth_anything_v2", "gray": "recolor_luminance", None: "none"}
# The extension's preprocessor name prefixes -> our control types (a Union ControlNet's modes)
MODULE_TYPES = (("canny", "canny"), ("depth", "depth"), ("tile", "tile"), ("blur", "blur"), ("openpose", "pose"),
                ("dw_openpose", "pose"), ("recolor", "gray"))
MAX_THRESHOLD = 65535.0  # the studio's Canny thresholds' range (the extension's sliders stop at 255)
RESIZE_LABELS = {mode: mode.title().replace(" And ", " and ") for mode in RESIZE_MODES}  # "Crop and Resize"


def infotext_items(records: list[dict], resize_mode: str, width: int, height: int) -> list[tuple[str, str]]:
    """("ControlNet N", its text) for each ControlNet a run recorded."""
    return [(f"{UNIT_PREFIX}{index}", unit_text(record, resize_mode, min(width, height)))
            for index, record in enumerate(records)]


def unit_text(record: dict, resize_mode: str, processor_resolution: int) -> str:
    preprocessor = record.get("preprocessor")
    fields = [("Module", MODULES.get(preprocessor, "none")), ("Model", model_label(record.get("controlnet", ""))),
              ("Weight", f"{record.get('strength') or 0:g}"), ("Resize Mode", RESIZE_LABELS.get(resize_mode, ""))]
    if preprocessor is not None:
        fields.append(("Processor Res", processor_resolution))  # the studio prepares it at the output's size
    if preprocessor == "canny":
        fields += [("Threshold A", f"{record['canny_low']:g}"), ("Threshold B", f"{record['canny_high']:g}")]
    fields += [("Guidance Start", "0.0"), ("Guidance End", "1.0"), ("Pixel Perfect", "False"),
               ("Control Mode", "Balanced")]  # the studio's ControlNets steer every step, as given
    return ", ".join(f"{field}: {value}" for field, value in fields)


def model_label(name: str) -> str:
    """A ControlNet's name as the extension shows a model: the file or folder name, without "," or ":"."""
    stem = PurePath(str(name).rstrip("/\\")).name.removesuffix(".safetensors")
    return re.sub(r"[,:\"]", "_", stem) or "none"


def unit_fields(text: str) -> dict[str, str]:
    """A unit's "Field: value" pairs (as the extension reads them)."""
    pairs = (item.strip().partition(": ") for item in text.split(","))
    return {key: value.strip() for key, sep, value in pairs if sep}


def controlnet_settings(values: dict[str, str]) -> dict:
    """The ControlNet tool's settings from the first unit among A1111 parameter items (`values`: name -> text), or
    {} when there is none or its preprocessor is one the studio's ControlNets do not take."""
    text = values.get(f"{UNIT_PREFIX}0")
    if not text:
        return {}
    unit = unit_fields(text)
    module = unit.get("Module", "none").lower()
    control_type = next((kind for prefix, kind in MODULE_TYPES if module.startswith(prefix)), None)
    if control_type is None and module != "none":
        return {}
    extra: dict = {}
    if module == "none":
        extra["controlnet_skip_canny"] = True  # the image as given, as the extension used it
    elif control_type != "canny":
        extra["controlnet_mode"] = control_type
    else:
        extra.update({key: min(MAX_THRESHOLD, max(0.0, number)) for key, field in (("canny_low", "Threshold A"),
                                                                                     ("canny_high", "Threshold B"))
                      if (number := finite_number(unit.get(field))) is not None})
    settings = {"tool": "controlnet", "extra": extra}
    weight = finite_number(unit.get("Weight"))
    if weight is not None:
        settings["controlnet_strength"] = min(2.0, max(0.0, weight))
    mode = next((ours for ours, label in RESIZE_LABELS.items() if label == unit.get("Resize Mode")), None)
    return {**settings, **({"resize_mode": mode} if mode else {})}


def finite_number(text: str | None) -> float | None:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None
