"""A1111's "X/Y/Z plot" script through its API: txt2img and img2img with `script_name` "X/Y/Z plot" and its
`script_args` as A1111 takes them, run by the studio's own plot (mflux_core/xyz.py).

    script_args: [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type, z_values,
                  z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
                  vary_seeds_x, vary_seeds_y, vary_seeds_z, ...]

(A1111 before its dropdowns: [x_type, x_values, y_type, y_values, z_type, z_values, draw_legend, ...]; after
no_fixed_seeds come vary_seeds_x, vary_seeds_y, vary_seeds_z, then margins and text modes, which change between
versions.) A type is an index into A1111's
axis list for txt2img or img2img (A1111_AXES), or the axis's label; values are the text A1111 reads ("1-5",
"0.5-1.0 (+0.25)", "1-10 [4]", "euler, DPM++ 2M"), or the dropdown's list when one is sent.

The answer is A1111's: the grid first (every Z value's grid side by side, each titled), then each Z value's grid with
include_sub_grids, then every cell with include_lone_images; `infotexts` alike, the grid's naming the script and
its axes as A1111 writes them ("Script: X/Y/Z plot, X Type: Steps, X Values: 1-3").
"""

import json
import random

from PIL import Image

from mflux_core.metadata import A1111_KEY
from mflux_core.request import MAX_SEED
from mflux_core.styles import Style
from mflux_core.xyz import OWN_FILES, Axis, Cell, parse_axis, resolve_styles
from mflux_core.xyz import values_text as xyz_values_text
from webui.a1111_wire import SdApiError

XYZ_PLOT = "x/y/z plot"  # as /sdapi/v1/scripts lists it
BOTH, TXT2IMG, IMG2IMG = "both", "txt2img", "img2img"
A1111_AXES = (  # A1111's axis list (scripts/xyz_grid.py) in its order; a tab lists those of both and its own
    ("Nothing", BOTH), ("Seed", BOTH), ("Var. seed", BOTH), ("Var. strength", BOTH), ("Steps", BOTH),
    ("Hires steps", TXT2IMG), ("CFG Scale", BOTH), ("Image CFG Scale", IMG2IMG), ("Prompt S/R", BOTH),
    ("Prompt order", BOTH), ("Sampler", TXT2IMG), ("Hires sampler", TXT2IMG), ("Sampler", IMG2IMG),
    ("Checkpoint name", BOTH), ("Negative Guidance minimum sigma", BOTH), ("Sigma Churn", BOTH), ("Sigma min", BOTH),
    ("Sigma max", BOTH), ("Sigma noise", BOTH), ("Schedule type", BOTH), ("Schedule min sigma", BOTH),
    ("Schedule max sigma", BOTH), ("Schedule rho", BOTH), ("Eta", BOTH), ("Clip skip", BOTH), ("Denoising", BOTH),
    ("Initial noise multiplier", BOTH), ("Extra noise", BOTH), ("Hires upscaler", TXT2IMG),
    ("Cond. Image Mask Weight", IMG2IMG), ("VAE", BOTH), ("Styles", BOTH), ("UniPC Order", BOTH),
    ("Face restore", BOTH), ("Token merging ratio", BOTH), ("Token merging ratio high-res", BOTH),
    ("Always discard next-to-last sigma", BOTH), ("SGM noise multiplier", BOTH), ("Refiner checkpoint", BOTH),
    ("Refiner switch at", BOTH), ("RNG source", BOTH),
)
# Forge's list (lllyasviel/stable-diffusion-webui-forge, scripts/xyz_grid.py): A1111's with Distilled CFG Scale after
# CFG Scale and the beta schedule's alpha and beta after Schedule rho, so its indices from 7 on are others
FORGE_AXES = tuple(
    item for entry in A1111_AXES for item in (
        (entry, ("Distilled CFG Scale", BOTH)) if entry == ("CFG Scale", BOTH) else
        (entry, ("Beta schedule alpha", BOTH), ("Beta schedule beta", BOTH)) if entry == ("Schedule rho", BOTH) else
        (entry,)))
NOTHING = "Nothing"
KINDS = {  # A1111's axis label (Forge's Distilled CFG Scale, by label) -> the studio's axis kind
    "Seed": "seed", "Var. seed": "var-seed", "Var. strength": "var-strength", "Steps": "steps",
    "Hires steps": "hires-steps", "CFG Scale": "true-cfg", "Distilled CFG Scale": "guidance",
    "Prompt S/R": "prompt-sr", "Prompt order": "prompt-order", "Sampler": "sampler", "Schedule type": "schedule",
    "Checkpoint name": "model", "Denoising": "denoising", "VAE": "modules", "Styles": "styles", "Size": "size",
}
RANDOM_SEED = -1  # A1111's "random" in a Seed or Var. seed axis, fixed to one drawn seed per value
OWN_VAE = ("none", "automatic")  # A1111's VAE choices for the checkpoint's own


def is_xyz_plot(script_name: str | None) -> bool:
    return (script_name or "").strip().lower() == XYZ_PLOT


def axis_labels(img2img: bool, forge: bool = False) -> list[str]:
    """The axis labels in the order A1111's (or Forge's) txt2img or img2img tab lists them (what an x_type index
    points into)."""
    return [label for label, tab in (FORGE_AXES if forge else A1111_AXES)
            if tab in (BOTH, IMG2IMG if img2img else TXT2IMG)]


def axis_label(value, img2img: bool, name: str, forge: bool = False) -> str:
    """The A1111 label of an axis type: an index into the tab's list (Forge's for a Forge client), or a label."""
    labels = axis_labels(img2img, forge)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return labels[value]
    if isinstance(value, str):
        known = {label.lower(): label for label in [*labels, *KINDS]}
        if value.strip().lower() in known:
            return known[value.strip().lower()]
    raise SdApiError(422, f"The X/Y/Z plot's {name}_type {str(value)[:40]!r} is neither an index into A1111's "
                          f"{'img2img' if img2img else 'txt2img'} axis list (0 to {len(labels) - 1}) nor an axis "
                          "label such as 'Steps'.", kind="RequestValidationError")


def script_layout(args: list) -> dict:
    """The script's arguments by name, in the layout with dropdowns (and, since A1111 1.7, the Vary seeds boxes after
    no_fixed_seeds) or in A1111's older one without (where the third argument is y_type, a number)."""
    third = args[2] if len(args) > 2 else None
    older = isinstance(third, int) and not isinstance(third, bool)
    names = (["x_type", "x_values", "y_type", "y_values", "z_type", "z_values"] if older else
             ["x_type", "x_values", "x_dropdown", "y_type", "y_values", "y_dropdown", "z_type", "z_values",
              "z_dropdown"]) + ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds"] + \
        ([] if older else ["vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "margin_size"])
    defaults = {"x_type": 1, "y_type": 0, "z_type": 0, "draw_legend": True}  # A1111's: Seed across, nothing else
    return {name: args[i] if i < len(args) and args[i] is not None else defaults.get(name)
            for i, name in enumerate(names)}


def values_text(values, dropdown) -> str:
    """An axis's values as text: the dropdown's list when one is sent, else the text box's."""
    if isinstance(dropdown, list) and dropdown:
        return xyz_values_text(dropdown)  # quoted where a value holds a comma (a style's name)
    return "" if values is None else str(values)


def plot_axes(named: dict, img2img: bool, hires: bool, checkpoint, styles: dict[str, Style],
              forge: bool = False) -> tuple[list[Axis], list[tuple[str, str, str]]]:
    """The plot's X, Y and Z axes (Nothing: one cell that changes nothing) from the script's arguments by name and,
    for the grid's text, each set axis's (X/Y/Z, A1111 label, values as sent). `checkpoint(title)` names a
    checkpoint as the studio does (a refusal for one it does not have); `styles`: the styles folder's; `forge`: the
    types index Forge's list."""
    axes, described = [], []
    for name in ("x", "y", "z"):
        label = axis_label(named[f"{name}_type"], img2img, name, forge)
        if label == NOTHING:
            axes.append(Axis("seed", (None,)))  # as mflux_core.xyz pads a missing axis
            continue
        text = values_text(named[f"{name}_values"], named.get(f"{name}_dropdown"))
        axes.append(studio_axis(label, text, img2img, hires, checkpoint))
        described.append((name.upper(), label, text))
    if not described:
        raise SdApiError(422, "The X/Y/Z plot has no axis: give x_type (script_args[0]) an axis such as 1 (Seed).",
                         kind="RequestValidationError")
    return resolve_styles(axes, styles), described


def studio_axis(label: str, text: str, img2img: bool, hires: bool, checkpoint) -> Axis:
    """A1111's axis as the studio's: seeds of -1 drawn, Denoising in txt2img the hires fix's, checkpoints and VAEs by
    the studio's names."""
    if label not in KINDS:
        raise SdApiError(422, f"The X/Y/Z plot's axis {label!r} has no counterpart in FLUX.1 here: plot "
                              f"{', '.join(KINDS)}.", kind="RequestValidationError")
    kind = KINDS[label]
    if label == "Denoising" and not img2img:
        kind = "hires-strength"  # txt2img's denoising strength is the hires fix's
        if not hires:
            raise SdApiError(422, "The X/Y/Z plot's Denoising axis needs enable_hr in txt2img (the hires fix's "
                                  "denoising), or img2img.", kind="RequestValidationError")
    axis = parse_axis(kind, text)
    values = axis.values
    if kind in ("seed", "var-seed"):
        values = tuple(random.randrange(MAX_SEED + 1) if value == RANDOM_SEED else value for value in values)
    elif kind == "model":
        values = tuple(checkpoint(value) for value in values)
    elif kind == "modules":
        values = tuple(OWN_FILES if value.lower() in OWN_VAE else value for value in values)
    return Axis(kind, values)


def own_seeds(cells: list[Cell], axes: list[Axis]) -> list[Cell]:
    """A1111's "Keep -1 for seeds" with a seed of -1: a random seed for each cell (unless an axis sets the seeds)."""
    if any(axis.kind == "seed" and axis.values != (None,) for axis in axes):
        return cells
    return [Cell(cell.request.with_(seed=random.randrange(MAX_SEED + 1)), cell.position) for cell in cells]


def in_a1111_order(cells: list[Cell], results: list) -> tuple[list[Cell], list]:
    """The finished cells and their results in the order A1111 answers them: X fastest, then Y, then Z (the studio
    runs them model by model)."""
    done = sorted(zip(cells, results), key=lambda pair: pair[0].position[::-1])
    return [cell for cell, _ in done], [result for _, result in done]


def grid_text(cell_text: str, described: list[tuple[str, str, str]]) -> str:
    """A cell's A1111 text with the script's items, as A1111 writes them on its grid."""
    items = [("Script", "X/Y/Z plot")]
    for axis, label, values in described:
        items += [(f"{axis} Type", label), (f"{axis} Values", values)]
    return cell_text + ", " + ", ".join(f"{key}: {quoted(value)}" for key, value in items)


def quoted(value: str) -> str:
    """An infotext value as A1111 writes it: JSON-quoted when it holds a comma, a colon or a line break."""
    return json.dumps(value, ensure_ascii=False) if any(mark in value for mark in ",:\n") else value


def side_by_side(grids: list[Image.Image]) -> Image.Image:
    """The Z values' grids in a row (A1111's main grid), each at its own size; past the image limits a picture may
    have, as a grid may be (its size was checked against the grid limit before the cells ran)."""
    if len(grids) == 1:
        return grids[0]
    row = Image.new("RGB", (sum(grid.width for grid in grids), max(grid.height for grid in grids)), "white")
    left = 0
    for grid in grids:
        row.paste(grid, (left, 0))
        left += grid.width
    return row


def plot_pictures(grids: list[Image.Image], results: list, named: dict,
                  described: list[tuple[str, str, str]]) -> list[tuple[Image.Image, dict]]:
    """(image, PNG text chunks) of the answer in A1111's order: the main grid (the Z values' `grids` side by side),
    each Z value's grid (include_sub_grids), the cells' `results` (include_lone_images); a grid carries its first
    cell's settings with the script's items. No cell finished: none."""
    if not results:
        return []
    first = results[0].text_chunks
    chunks = {**first, A1111_KEY: grid_text(first[A1111_KEY], described)}
    pictures = [(side_by_side(grids), chunks)]
    if named["include_sub_grids"] and len(grids) > 1:
        pictures += [(grid, chunks) for grid in grids]
    if named["include_lone_images"]:
        pictures += [(result.image, result.text_chunks) for result in results]
    return pictures
