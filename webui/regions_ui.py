"""The "Regional prompts" accordion of the Generate panel: up to four rows, each a prompt, a box (fractions of the
image) or an uploaded mask image (white = the region; it replaces the box), and a weight; plus the strength.

Rows with an empty prompt are off. A row's mask is an input file: presets keep boxes only.
"""

import gradio as gr

from mflux_core.regions import BOX_KEYS, DEFAULT_WEIGHT, MAX_REGION_WEIGHT, MAX_REGIONS
from webui.panels import input_image
from webui.widgets import number_value

DEFAULT_BOXES = ((0, 0, 0.5, 1), (0.5, 0, 0.5, 1), (0, 0, 1, 0.5), (0, 0.5, 1, 0.5))  # left, right, top, bottom
BOX_LABELS = {"x": "Left", "y": "Top", "w": "Width", "h": "Height"}


def _key(row: int, name: str) -> str:
    return f"region_{row}_{name}"


def region_settings(values: dict) -> dict:
    """regions and region_strength from the accordion's values (rows with a prompt, as boxes)."""
    regions = []
    for row in range(1, MAX_REGIONS + 1):
        prompt = (values.get(_key(row, "prompt")) or "").strip()
        if not prompt:
            continue
        box = {key: number_value(values, _key(row, key), default, f"Region {row}'s {BOX_LABELS[key].lower()}")
               for key, default in zip(BOX_KEYS, DEFAULT_BOXES[row - 1])}
        weight = number_value(values, _key(row, "weight"), DEFAULT_WEIGHT, f"Region {row}'s weight")
        regions.append({"prompt": prompt, **box, "weight": weight})
    return {"regions": regions, "region_strength": number_value(values, "region_strength", 1.0, "Region strength")}


def region_values(settings: dict) -> dict:
    """The accordion's values from settings (box regions fill the rows in order; the rest are emptied)."""
    if "regions" not in settings and "region_strength" not in settings:
        return {}
    regions = [region for region in settings.get("regions") or [] if region.get("mask_path") is None]
    values = {"region_strength": settings.get("region_strength", 1.0)}
    for row in range(1, MAX_REGIONS + 1):
        region = regions[row - 1] if row <= len(regions) else {}
        values[_key(row, "prompt")] = region.get("prompt", "")
        values[_key(row, "weight")] = region.get("weight", DEFAULT_WEIGHT)
        for key, default in zip(BOX_KEYS, DEFAULT_BOXES[row - 1]):
            values[_key(row, key)] = region.get(key, default)
    return values


def with_region_masks(settings: dict, values: dict, save) -> dict:
    """`settings` whose rows with an uploaded mask use it instead of their box; `save(upload, kind)` -> its path."""
    regions, rows = [], [row for row in range(1, MAX_REGIONS + 1) if (values.get(_key(row, "prompt")) or "").strip()]
    for row, region in zip(rows, settings["regions"]):
        mask_path = save(values.get(_key(row, "mask")), f"region{row}")
        if mask_path:
            region = {"prompt": region["prompt"], "mask_path": mask_path, "weight": region["weight"]}
        regions.append(region)
    return {**settings, "regions": regions}


def region_controls(prefix: str) -> tuple[dict, dict]:
    """Render the accordion (inside a Blocks context) -> (setting controls, mask uploads), by value name."""
    controls, masks = {}, {}
    with gr.Accordion("Regional prompts", open=False, elem_id=f"{prefix}-regions"):
        gr.Markdown("Each region's prompt is read only by the image inside its box (fractions of the image) or "
                    "mask; the main prompt covers everything else. Leave a prompt empty to turn its row off.")
        for row in range(1, MAX_REGIONS + 1):
            with gr.Group():
                with gr.Row():
                    controls[_key(row, "prompt")] = gr.Textbox(label=f"Region {row} prompt", scale=4,
                                                               elem_id=f"{prefix}-region-{row}-prompt")
                    controls[_key(row, "weight")] = gr.Slider(
                        0, MAX_REGION_WEIGHT, DEFAULT_WEIGHT, step=0.05, label="Weight", scale=2,
                        elem_id=f"{prefix}-region-{row}-weight")
                with gr.Row():
                    for key, default in zip(BOX_KEYS, DEFAULT_BOXES[row - 1]):
                        controls[_key(row, key)] = gr.Slider(0, 1, default, step=0.01, label=BOX_LABELS[key],
                                                             elem_id=f"{prefix}-region-{row}-{key}")
                with gr.Accordion(f"Region {row} mask (optional, replaces the box)", open=False):
                    masks[_key(row, "mask")] = input_image("Mask: white = the region",
                                                           f"{prefix}-region-{row}-mask")
        controls["region_strength"] = gr.Slider(
            0, 1, 1.0, step=0.05, label="Region strength", elem_id=f"{prefix}-region-strength",
            info="How strictly regions keep apart: 1 keeps each prompt in its region, 0 lets every prompt reach "
                 "the whole image.")
    return controls, masks
