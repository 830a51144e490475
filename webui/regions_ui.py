"""The "Regional prompts" accordion of the Generate panel: up to four rows, each a prompt, a box (fractions of the
image), a mask painted in the page or an uploaded mask image (white = the region; either replaces the box), and
a weight; plus the strength.

Rows with an empty prompt are off. A painted mask is the strokes' shape, stretched from the canvas (or the picture
painted over) to the image; it wins over an uploaded one. Masks are input files: presets keep boxes only.
"""

import gradio as gr
from PIL import Image

from mflux_core.images.masks import mask_from_editor_layers, mask_to_pil
from mflux_core.regions import BOX_KEYS, DEFAULT_WEIGHT, MAX_REGION_WEIGHT, MAX_REGIONS
from webui.panels import editor_layers, input_image, mask_editor
from webui.widgets import number_value

DEFAULT_BOXES = ((0, 0, 0.5, 1), (0.5, 0, 0.5, 1), (0, 0, 1, 0.5), (0, 0.5, 1, 0.5))  # left, right, top, bottom
BOX_LABELS = {"x": "Left", "y": "Top", "w": "Width", "h": "Height"}
BRUSH_COLOURS = ("#e04040", "#4070e0", "#30a040", "#e09020")  # one per row, to tell regions apart while painting
BRUSH_SIZE = 64  # a region is read in 16-pixel tokens: broad strokes


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


def painted_mask(editor: dict | None) -> Image.Image | None:
    """The strokes painted in a row's editor as a mask ('L', white = the region); None when nothing is painted."""
    layers = editor_layers(editor)
    painted = mask_from_editor_layers(layers) if layers else None
    return mask_to_pil(painted) if painted is not None and painted.any() else None


def with_region_masks(settings: dict, values: dict, save) -> dict:
    """`settings` whose rows with a painted or uploaded mask use it instead of their box; `save(image or upload,
    kind)` -> its path."""
    regions, rows = [], [row for row in range(1, MAX_REGIONS + 1) if (values.get(_key(row, "prompt")) or "").strip()]
    for row, region in zip(rows, settings["regions"]):
        mask = painted_mask(values.get(_key(row, "paint"))) or values.get(_key(row, "mask"))
        mask_path = save(mask, f"region{row}")
        if mask_path:
            region = {"prompt": region["prompt"], "mask_path": mask_path, "weight": region["weight"]}
        regions.append(region)
    return {**settings, "regions": regions}


def region_controls(prefix: str) -> tuple[dict, dict]:
    """Render the accordion (inside a Blocks context) -> (setting controls, mask uploads), by value name."""
    controls, masks = {}, {}
    with gr.Accordion("Regional prompts", open=False, elem_id=f"{prefix}-regions"):
        gr.Markdown("Each region's prompt is read only by the image inside its box (fractions of the image) or "
                    "mask (painted, or uploaded: white = the region); the main prompt covers everything else. "
                    "Leave a prompt empty to turn its row off.")
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
                with gr.Accordion(f"Region {row} mask (optional, replaces the box)", open=False,
                                  elem_id=f"{prefix}-region-{row}-masks"):
                    masks[_key(row, "paint")] = mask_editor(
                        "Paint the region (on the blank canvas or over a picture; stretched to the image)",
                        f"{prefix}-region-{row}-paint", BRUSH_SIZE, BRUSH_COLOURS[row - 1])
                    masks[_key(row, "mask")] = input_image("Or upload a mask: white = the region",
                                                           f"{prefix}-region-{row}-mask")
        controls["region_strength"] = gr.Slider(
            0, 1, 1.0, step=0.05, label="Region strength", elem_id=f"{prefix}-region-strength",
            info="How strictly regions keep apart: 1 keeps each prompt in its region, 0 lets every prompt reach "
                 "the whole image.")
    return controls, masks
