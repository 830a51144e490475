"""The ADetailer extension's part of an A1111 request, `alwayson_scripts: {"ADetailer": {"args": [enable,
skip_img2img, {unit}, ...]}}` (older clients send the units alone), as the studio's face fix (mflux_core/face_fix.py):
its first unit whose model finds faces (face_yolov8n.pt, mediapipe_face_full, ...) turns the face fix on with the
unit's prompt, denoising strength and inpaint padding. Faces are found by OpenCV's frontal-face detector here,
which `ignored` says; units of other models (hands, persons) are named there too."""

from mflux_core.settings_schema import MAX_FACE_FIX_PADDING, MAX_PROMPT_CHARS
from mflux_core.tools.specs import FACE_FIX, FACE_FIX_PADDING, FACE_FIX_PROMPT, FACE_FIX_STRENGTH
from webui.a1111_wire import SdApiError

SCRIPT = "adetailer"  # its key in alwayson_scripts (any case)


def adetailer_script(alwayson_scripts: dict) -> tuple[str, object] | None:
    return next(((name, value) for name, value in alwayson_scripts.items() if name.lower() == SCRIPT), None)


def face_fix_extra(alwayson_scripts: dict, ignored: list[str]) -> dict:
    """request.extra's face fix keys for the request's ADetailer args ({} when it asks for none)."""
    found = adetailer_script(alwayson_scripts)
    if found is None:
        return {}
    name, script = found
    args = script.get("args") if isinstance(script, dict) else None
    if not isinstance(args, list):
        raise SdApiError(422, f"alwayson_scripts.{name}.args must be a list: [enable, skip_img2img, unit, ...].",
                         kind="RequestValidationError")
    switches = [arg for arg in args[:2] if isinstance(arg, bool)]
    units = [arg for arg in args if isinstance(arg, dict) and str(arg.get("ad_model", "None")) != "None"]
    if (switches and not switches[0]) or not units:
        if not switches or switches[0]:
            ignored.append(f"alwayson_scripts.{name}")  # on, but no unit names a model
        return {}
    unit = next((unit for unit in units if "face" in str(unit["ad_model"]).lower()), None)
    for other in units:
        if other is not unit:
            ignored.append(f"alwayson_scripts.{name} unit with ad_model {str(other['ad_model'])[:60]!r} (the face fix "
                           "runs one face unit)")
    if unit is None:
        return {}
    ignored.append(f"alwayson_scripts.{name} ad_model {str(unit['ad_model'])[:60]!r} (faces are found by OpenCV's "
                   "frontal-face detector here)")
    extra = {FACE_FIX: True}
    prompt, strength, padding = (unit.get(key) for key in ("ad_prompt", "ad_denoising_strength",
                                                           "ad_inpaint_only_masked_padding"))
    if isinstance(prompt, str) and prompt.strip():
        extra[FACE_FIX_PROMPT] = prompt[:MAX_PROMPT_CHARS]
    if is_number(strength, 0, 1, low_included=False):
        extra[FACE_FIX_STRENGTH] = float(strength)
    elif strength is not None:
        ignored.append(f"alwayson_scripts.{name} ad_denoising_strength {str(strength)[:40]!r} (not above 0 and at "
                       "most 1: the face fix's own ran)")
    if is_number(padding, 0, MAX_FACE_FIX_PADDING):
        extra[FACE_FIX_PADDING] = int(padding)
    elif padding is not None:
        ignored.append(f"alwayson_scripts.{name} ad_inpaint_only_masked_padding {str(padding)[:40]!r} (not 0 to "
                       f"{MAX_FACE_FIX_PADDING}: the face fix's own ran)")
    return extra


def is_number(value, low: float, high: float, low_included: bool = True) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    return (low <= value if low_included else low < value) and value <= high
