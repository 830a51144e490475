"""A1111's GET /sdapi/v1/script-info: each script the studio runs, with its script_args in order as A1111's UI labels
them (label, default value, choices, range), so a client can build script_args by label instead of by position."""

from mflux_core.prompt_lines import PROMPT_POSITIONS
from webui.a1111_adetailer import SCRIPT as ADETAILER
from webui.a1111_controlnet import SCRIPT as CONTROLNET
from webui.a1111_prompt_list import PROMPTS_FROM_FILE
from webui.a1111_prompt_matrix import DELIMITERS, PROMPT_MATRIX, PROMPT_TYPES
from webui.a1111_scripts import DEFAULT_FACTOR, DEFAULT_OVERLAP, MAX_FACTOR, SD_UPSCALE
from webui.a1111_xyz import XYZ_PLOT, axis_labels


def arg(label: str, value=None, choices: list | None = None, minimum=None, maximum=None, step=None) -> dict:
    return {"label": label, "value": value, "minimum": minimum, "maximum": maximum, "step": step, "choices": choices}


def xyz_args(img2img: bool) -> list[dict]:
    labels = axis_labels(img2img)
    axes = []
    for axis, default in (("X", 1), ("Y", 0), ("Z", 0)):  # A1111's: Seed across, nothing else
        axes += [arg(f"{axis} type", default, labels), arg(f"{axis} values", ""), arg(f"{axis} values", [])]
    return [*axes, arg("Draw legend", True), arg("Include Sub Images", False), arg("Include Sub Grids", False),
            arg("Keep -1 for seeds", False), *(arg(f"Vary seeds for {axis}", False) for axis in "XYZ"),
            arg("Grid margins (px)", 0, minimum=0, maximum=500, step=2),
            arg("Use text inputs instead of dropdowns", False)]


def matrix_args() -> list[dict]:
    return [arg("Put variable parts at start of prompt", False), arg("Use different seed for each picture", False),
            arg("Select prompt", PROMPT_TYPES[0], list(PROMPT_TYPES)),
            arg("Select joining char", next(iter(DELIMITERS)), list(DELIMITERS)),
            arg("Grid margins (px)", 0, minimum=0, maximum=500, step=2)]


def prompt_list_args() -> list[dict]:
    return [arg("Iterate seed every line", False), arg("Use same random seed for all lines", False),
            arg("Insert prompts at the", PROMPT_POSITIONS[0], list(PROMPT_POSITIONS)), arg("List of prompt inputs", "")]


def sd_upscale_args(upscalers: list[str]) -> list[dict]:
    return [arg("Info", None), arg("Tile overlap", DEFAULT_OVERLAP, minimum=0, maximum=256, step=16),
            arg("Upscaler", upscalers[0] if upscalers else None, upscalers),
            arg("Scale Factor", DEFAULT_FACTOR, minimum=1.0, maximum=MAX_FACTOR, step=0.05)]


def script_info(upscalers: list[str]) -> list[dict]:
    """The listing: per tab, the selectable scripts (with their args) and the always-on ones (ControlNet's and
    ADetailer's args are their units, not positions)."""
    listing = []
    for img2img in (False, True):
        own = [(SD_UPSCALE, sd_upscale_args(upscalers))] if img2img else []
        scripts = [(XYZ_PLOT, xyz_args(img2img)), (PROMPT_MATRIX, matrix_args()),
                   (PROMPTS_FROM_FILE, prompt_list_args()), *own]
        listing += [{"name": name, "is_alwayson": False, "is_img2img": img2img, "args": args} for name, args in scripts]
        listing += [{"name": name, "is_alwayson": True, "is_img2img": img2img, "args": []}
                    for name in (CONTROLNET, ADETAILER)]
    return listing
