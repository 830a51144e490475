"""Further ControlNet units: the ControlNet tool runs several ControlNets at once, each with its own control image,
ControlNet, control type and strength (diffusers' FluxMultiControlNetModel; the A1111 extension's units; ComfyUI's
chained Apply ControlNet nodes), e.g. Canny edges and a depth map together.

The request's own ControlNet settings are unit 1; `GenerationRequest.controlnet_units` holds the others, each an
object with the same settings by the same names as the request's (`controlnet_image_path`, `controlnet_strength`)
and its `extra` (`controlnet_path`, `controlnet_mode`, `controlnet_skip_canny`, `canny_low`, `canny_high`). A setting
a unit leaves out takes the tool's default, not unit 1's. The tool runs them in mflux_core/tools/controlnet.py.
"""

from mflux_core.errors import InvalidRequest
from mflux_core.settings_schema import Setting, fragment, number, problems, schema, switch, text

MAX_UNITS = 4  # in all, unit 1 included (A1111's extension shows three by default; Forge up to ten)
IMAGE_KEY = "controlnet_image_path"
UNIT_EXTRA_KEYS = ("controlnet_path", "controlnet_mode", "controlnet_skip_canny", "canny_low", "canny_high")
UNIT_SETTINGS: dict[str, Setting] = {
    IMAGE_KEY: text("control image path"),
    "controlnet_strength": number("ControlNet strength", 0, 2),
    "controlnet_path": text("ControlNet"),
    "controlnet_mode": text("control type", 40),  # checked where unit 1's is (tools/controlnet_conditioning.py)
    "controlnet_skip_canny": switch("skip-Canny switch"),
    "canny_low": number("Canny low threshold", 0, 65535),
    "canny_high": number("Canny high threshold", 0, 65535),
}
_UNIT_SCHEMA = schema("ControlNetUnit", UNIT_SETTINGS, dict.fromkeys(UNIT_SETTINGS))


def units_problem(units) -> str | None:
    """The phrase that refuses a request's further units (after "The further ControlNet units"), or None."""
    if len(units) > MAX_UNITS - 1:
        return f"are at most {MAX_UNITS - 1} (ControlNet units 2 to {MAX_UNITS}), not {len(units)}"
    for number_, unit in enumerate(units, 2):
        if not isinstance(unit, dict):
            return f"must be objects of settings; unit {number_} is {str(unit)[:40]}"
        found = problems(_UNIT_SCHEMA, unit, UNIT_SETTINGS, fragment)
        if found:
            return f"have a problem in unit {number_}: {found[0]}"
    return None


def unit_without_image(units) -> int | None:
    """The number (2, 3, ...) of the first unit that has no control image, or None."""
    return next((number_ for number_, unit in enumerate(units, 2) if not unit.get(IMAGE_KEY)), None)


FLAG_KEYS = {"strength": "controlnet_strength", "path": "controlnet_path", "mode": "controlnet_mode",
             "canny-low": "canny_low", "canny-high": "canny_high"}  # --controlnet-unit's key=value names
NUMBER_KEYS = ("controlnet_strength", "canny_low", "canny_high")
SKIP_CANNY = "skip-canny"
FLAG_FORM = "give it as IMAGE[,mode=TYPE][,strength=N][,path=CONTROLNET][,canny-low=N][,canny-high=N][,skip-canny]"


def unit_from_flag(text_: str) -> dict:
    """--controlnet-unit 'IMAGE[,mode=depth][,strength=0.5][,path=CONTROLNET][,canny-low=N][,canny-high=N]
    [,skip-canny]': one further unit. Options are read from the right, so an image path may hold commas."""
    path, options = text_, {}
    while "," in path:
        head, _, option = path.rpartition(",")
        key, equals, value = option.partition("=")
        key = key.strip().lower()
        if key == SKIP_CANNY and not equals:
            options["controlnet_skip_canny"] = True
        elif key in FLAG_KEYS and equals:
            options[FLAG_KEYS[key]] = value.strip()
        else:
            break
        path = head
    for flag_key, key in FLAG_KEYS.items():
        if key in NUMBER_KEYS and key in options:
            try:
                options[key] = float(options[key])
            except ValueError:
                raise InvalidRequest(f"The ControlNet unit {text_[:80]!r}: {flag_key} must be a number, not "
                                     f"{options[key][:40]!r}.") from None
    unit = {IMAGE_KEY: path, **options}
    found = problems(_UNIT_SCHEMA, unit, UNIT_SETTINGS, fragment)
    if not path or found:
        words = FLAG_FORM
        if found:
            words = found[0]
            for flag_key, key in FLAG_KEYS.items():
                words = words.replace(f"'{key}'", flag_key)
        raise InvalidRequest(f"The ControlNet unit {text_[:80]!r}: {words}.")
    return unit
