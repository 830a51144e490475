"""ControlNet: follow a picture's Canny edges (from text, or from an input image: image-to-image), or upscale it
with the upscaler ControlNet (on FLUX.1-dev); a Union ControlNet also by its other control types (depth, tile,
gray, ...). In Canny mode, further units run more ControlNets at once, each with its own image (e.g. edges and a
depth map): mflux_core/controlnet_units.py."""

from pathlib import Path

import gradio as gr

from mflux_core.controlnet_units import IMAGE_KEY, MAX_UNITS
from mflux_core.demo.examples import UPSCALE_FACTOR
from mflux_core.errors import InvalidRequest
from mflux_core.hires import DEFAULT_UPSCALER
from mflux_core.images.canny import DEFAULT_HIGH, DEFAULT_LOW, canny_edges
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import HIRES_UPSCALERS, MAX_BATCH, UNION_CONTROL_TYPES
from mflux_core.tools.specs import TILE_HEIGHT, TILE_OVERLAP, TILE_SIZE, UPSCALER, UPSCALER_ONLY
from mflux_core.tools.upscale import upscaled_size
from webui.demo_examples import render_demo_examples
from webui.face_fix_ui import face_fix_controls, face_fix_settings, face_fix_values
from webui.hires_ui import hires_controls, hires_settings, hires_values, upscaler_picker
from webui.jobs import safe_action
from webui.panels import Panel, input_image, result_column
from webui.presets_ui import render_presets
from webui.requests import RequestContext, read_upload, requests_from_settings
from webui.widgets import (
    TOOL_DEFAULT, build_shared_controls, number_value, shared_settings, shared_values, side_model_choices,
)

TOOL = "controlnet"
CANNY, UPSCALE = "Canny edges", "Upscale"
MODE_TOOLS = {CANNY: "controlnet", UPSCALE: "upscale"}
DEFAULTS = {"controlnet_strength": 0.4, "canny_low": DEFAULT_LOW, "canny_high": DEFAULT_HIGH, "upscale_factor": 2.0,
            "image_strength": 0.4, "upscale_strength": 0, "tile_size": 0, "tile_height": 0,
            "tile_overlap": 0}
LABELS = {"controlnet_strength": "The ControlNet strength", "canny_low": "The Canny low threshold",
          "canny_high": "The Canny high threshold", "upscale_factor": "The upscale factor",
          "image_strength": "The image strength", "upscale_strength": "The image strength",
          "tile_size": "The tile size", "tile_height": "The tile height", "tile_overlap": "The tile overlap"}
CONTROLNET_UPSCALER = HIRES_UPSCALERS[1]
MODE_STRENGTHS = {CANNY: 0.4, UPSCALE: 0.6}  # the engine's defaults for each ControlNet
OWN_TYPE = ""  # the control type picker's value for "the mode's own" (canny for edges, tile for upscale)
CONTROL_TYPES = [("the mode's own", OWN_TYPE),
                 *((kind, kind) for kind in UNION_CONTROL_TYPES)]
UNITS = range(2, MAX_UNITS + 1)  # the further units' numbers (unit 1 is the controls above)


def unit_key(number: int, control: str) -> str:
    return f"unit{number}_{control}"


def unit_settings(values: dict) -> list[dict]:
    """The further units that have a control image, as request settings (their images are added by
    build_requests); a unit's weights and control type are left out when they are the defaults."""
    units = []
    for number in UNITS:
        if values.get(unit_key(number, "image")) is None:
            continue
        strength = number_value(values, unit_key(number, "strength"), DEFAULTS["controlnet_strength"],
                                f"ControlNet unit {number}'s strength")
        unit = {"controlnet_strength": strength}
        for control, key in (("weights", "controlnet_path"), ("mode", "controlnet_mode")):
            if values.get(unit_key(number, control)):
                unit[key] = values[unit_key(number, control)]
        units.append(unit)
    return units


def settings_from_values(values: dict) -> dict:
    """Canny thresholds or the upscale factor (the engine sizes the output from it) go in `extra`."""
    mode = values.get("mode") or CANNY
    start = {}
    if mode == UPSCALE:
        extra = {"upscale_factor": setting(values, "upscale_factor") or DEFAULTS["upscale_factor"],
                 **upscale_extra(values)}
        start = {"image_strength": setting(values, "upscale_strength") or None}  # 0: the engine's default
    else:
        extra = {"canny_low": int(setting(values, "canny_low")), "canny_high": int(setting(values, "canny_high"))}
        start = {"image_strength": setting(values, "image_strength")}
    if values.get("controlnet_weights"):
        extra["controlnet_path"] = values["controlnet_weights"]
    if values.get("controlnet_mode"):
        extra["controlnet_mode"] = values["controlnet_mode"]
    if mode == CANNY:
        extra.update(face_fix_settings(values))
    canny = {"controlnet_units": unit_settings(values), **hires_settings(values)} if mode == CANNY else {}
    return {"tool": MODE_TOOLS[mode], **shared_settings(values), "extra": extra,
            "controlnet_strength": setting(values, "controlnet_strength"), **start, **canny}


def upscale_extra(values: dict) -> dict:
    """The upscaler, when not the default, and with Tiles ticked the tile size (0: the model's own side), its height
    and the overlap (each left out at 0: the engine's default, a square tile and an eighth of the tile)."""
    extra = {}
    if values.get("upscaler", CONTROLNET_UPSCALER) != CONTROLNET_UPSCALER:
        extra[UPSCALER] = values["upscaler"]
    if values.get("upscaler_only"):
        extra[UPSCALER_ONLY] = True
    if values.get("tiles"):
        extra[TILE_SIZE] = int(setting(values, "tile_size"))
        for key in (TILE_HEIGHT, TILE_OVERLAP):
            if setting(values, key):
                extra[key] = int(setting(values, key))
    return extra


def setting(values: dict, key: str) -> float:
    return number_value(values, key, DEFAULTS[key], LABELS[key])


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    if settings.get("tool") != MODE_TOOLS[UPSCALE]:  # the hires fix is Canny mode's
        values.update(hires_values(settings))
    if settings.get("tool") in MODE_TOOLS.values():
        values["mode"] = UPSCALE if settings["tool"] == "upscale" else CANNY
    upscaling = settings.get("tool") == MODE_TOOLS[UPSCALE]
    for key in ("controlnet_strength",) if upscaling else ("controlnet_strength", "image_strength"):
        if settings.get(key) is not None:
            values[key] = settings[key]
    extra = settings.get("extra") or {}
    values.update({key: extra[key] for key in ("canny_low", "canny_high", "upscale_factor") if key in extra})
    if upscaling:
        values.update(upscale_values(settings, extra))
    else:
        values.update(face_fix_values(extra))
    if "extra" in settings:
        values["controlnet_weights"] = extra.get("controlnet_path", TOOL_DEFAULT)
        values["controlnet_mode"] = extra.get("controlnet_mode", OWN_TYPE)
    for number, unit in zip(UNITS, settings.get("controlnet_units") or []):
        values[unit_key(number, "strength")] = unit.get("controlnet_strength", DEFAULTS["controlnet_strength"])
        values[unit_key(number, "weights")] = unit.get("controlnet_path", TOOL_DEFAULT)
        values[unit_key(number, "mode")] = unit.get("controlnet_mode", OWN_TYPE)
    return values


def upscale_values(settings: dict, extra: dict) -> dict:
    return {"upscale_strength": settings.get("image_strength") or 0,
            "upscaler": extra.get(UPSCALER, CONTROLNET_UPSCALER), "upscaler_only": bool(extra.get(UPSCALER_ONLY)),
            "tiles": extra.get(TILE_SIZE) is not None, "tile_size": extra.get(TILE_SIZE) or 0,
            "tile_height": extra.get(TILE_HEIGHT) or 0, "tile_overlap": extra.get(TILE_OVERLAP) or 0}


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    image = values.get("control_image")
    settings = settings_from_values(values)
    if settings["tool"] == MODE_TOOLS[UPSCALE] and values.get("upscale_batch"):
        return batch_requests(settings, [image, *values["upscale_batch"]], context)
    if image is None:
        raise InvalidRequest("Upload the control image first.")
    start = values.get("init_image") if settings["tool"] == MODE_TOOLS[CANNY] else None
    if start is None and settings["tool"] == MODE_TOOLS[CANNY]:
        settings.pop("image_strength", None)
    images = [values.get(unit_key(number, "image")) for number in UNITS]
    images = [unit_image for unit_image in images if unit_image is not None]
    settings["controlnet_units"] = [{**unit, IMAGE_KEY: context.inputs.save(unit_image, "control")}
                                    for unit, unit_image in zip(settings.get("controlnet_units", []), images)]
    return requests_from_settings(settings, context, controlnet_image_path=context.inputs.save(image, "control"),
                                  image_path=context.inputs.save(start, "controlnet-init"))


def batch_requests(settings: dict, images: list, context: RequestContext) -> list[GenerationRequest]:
    """Upscale mode's batch (A1111's extras batch): every image with the same settings, the control image first;
    each upload checked before any runs."""
    images = [image for image in images if image is not None]
    count = len(images) * max(1, int(settings.get("batch_count") or 1))
    if count > MAX_BATCH:
        raise InvalidRequest(f"{count} upscales in one run are more than {MAX_BATCH}: send fewer images, or fewer "
                             "images each.")
    decoded = [read_upload(image) for image in images]
    sizing = requests_from_settings(settings, context)[0]  # the output size, the same for each of an image's seeds
    for number, (image, upload) in enumerate(zip(decoded, images), start=1):
        try:  # every image's, before any runs
            upscaled_size(sizing, image)
        except InvalidRequest as error:
            name = Path(upload).name if isinstance(upload, str) else f"Image {number}"
            raise InvalidRequest(f"{name}: {error}") from None
    paths = [context.inputs.save(image, "upscale") for image in decoded]
    return [request for path in paths for request in requests_from_settings(settings, context, image_path=path)]


def edges_preview(image, low, high):
    """The edges of an uploaded control image at its own size, as the page shows them."""
    return None if image is None else canny_edges(read_upload(image), low, high)


def mode_controls(mode: str, kind: str) -> tuple:
    """The edges preview and Canny thresholds belong to Canny mode with Canny control (a Union ControlNet's other
    types see the image, or its depth map), image-to-image, further units, the hires fix and the face fix to Canny
    mode, the upscale settings (factor, upscaler, image strength, tiles) to Upscale mode."""
    canny = mode == CANNY
    edges = canny and kind in (OWN_TYPE, None, "canny")  # None: an example that sets the own type
    return (gr.update(visible=edges), gr.update(visible=edges), gr.update(visible=canny), gr.update(visible=canny),
            gr.update(visible=canny), gr.update(visible=canny), gr.update(visible=not canny))


def render_units(weight_choices: list) -> tuple[gr.Accordion, dict, dict]:
    """The further units' accordion, their settings' controls (what presets save) and their images."""
    controls, images = {}, {}
    with gr.Accordion(f"More ControlNets at once (units 2 to {MAX_UNITS})", open=False,
                      elem_id="controlnet-units") as accordion:
        gr.Markdown("Each unit with an image runs its own ControlNet beside the one above (e.g. Canny edges and a "
                    "depth map); their steering adds up. A unit's image is brought to the output size.")
        for number in UNITS:
            with gr.Row():
                images[unit_key(number, "image")] = input_image(f"Unit {number}: control image",
                                                                f"controlnet-unit{number}-image")
                with gr.Column():
                    controls[unit_key(number, "weights")] = gr.Dropdown(
                        weight_choices, value=TOOL_DEFAULT, label=f"Unit {number}: ControlNet weights",
                        elem_id=f"controlnet-unit{number}-weights")
                    controls[unit_key(number, "mode")] = gr.Dropdown(
                        CONTROL_TYPES, value=OWN_TYPE, label=f"Unit {number}: control type",
                        elem_id=f"controlnet-unit{number}-type")
                    controls[unit_key(number, "strength")] = gr.Slider(
                        0, 2, DEFAULTS["controlnet_strength"], step=0.05, label=f"Unit {number}: strength",
                        elem_id=f"controlnet-unit{number}-strength")
    return accordion, controls, images


def upscale_controls(models_dir) -> tuple[gr.Column, dict, gr.File]:
    """Upscale mode's settings (the factor, the upscaler, the image strength and the tiles: A1111's SD upscale) and
    its batch of further images."""
    with gr.Column(visible=False, elem_id="controlnet-upscale-settings") as column:
        with gr.Row():
            factor = gr.Slider(1, 4, DEFAULTS["upscale_factor"], step=0.5, label="Upscale factor (when width and "
                               "height are 0)", elem_id="controlnet-upscale-factor")
            upscaler = upscaler_picker(list(HIRES_UPSCALERS[::-1]), CONTROLNET_UPSCALER, models_dir,
                                       label="Upscaler", elem_id="controlnet-upscaler",
                                       info="ControlNet upscaler: the ControlNet steers; Lanczos: the resampled image "
                                            "regenerated image-to-image only; an upscaler model of the models "
                                            "folder's upscalers/ (ESRGAN, 4x-UltraSharp, ...): the same from its "
                                            "upscale")
            only = gr.Checkbox(False, label="Upscaler only (A1111's Extras)", info="the upscaler's image itself: no "
                               "FLUX.1 pass, no model loaded (an upscaler model or Lanczos)",
                               elem_id="controlnet-upscaler-only")
        strength = gr.Slider(0, 0.99, DEFAULTS["upscale_strength"], step=0.01, label="Image strength (how much of "
                             "the resampled image is kept)", info="0: the default, none with the ControlNet upscaler "
                             "in one piece, else 0.65", elem_id="controlnet-upscale-strength")
        batch = gr.File(file_count="multiple", file_types=["image"], type="filepath",
                        label="Batch: more images to upscale with these settings (after the control image, if any)",
                        elem_id="controlnet-upscale-batch")
        tiles = gr.Checkbox(False, label="Tiles (A1111's SD upscale)", info="regenerate a tile at a time and "
                            "blend them: outputs larger than one pass fits in memory", elem_id="controlnet-tiles")
        with gr.Row():
            tile_size = gr.Slider(0, 2048, DEFAULTS["tile_size"], step=16, label="Tile size (0: the model's own)",
                                  elem_id="controlnet-tile-size")
            tile_height = gr.Slider(0, 2048, DEFAULTS["tile_height"], step=16, label="Tile height (0: as wide)",
                                    elem_id="controlnet-tile-height")
            overlap = gr.Slider(0, 512, DEFAULTS["tile_overlap"], step=8, label="Tile overlap (0: an eighth of "
                                "the tile)", elem_id="controlnet-tile-overlap")
    controls = {"upscale_factor": factor, "upscaler": upscaler, "upscaler_only": only, "upscale_strength": strength,
                "tiles": tiles, "tile_size": tile_size, "tile_height": tile_height, "tile_overlap": overlap}
    return column, controls, batch


def render(studio) -> Panel:
    with gr.Tab("ControlNet", id=TOOL, elem_id="tab-controlnet"):
        with gr.Row():
            with gr.Column(scale=5):
                mode = gr.Radio([CANNY, UPSCALE], value=CANNY, label="Mode", elem_id="controlnet-mode")
                with gr.Row():
                    control_image = input_image("Control image", "controlnet-image")
                    edges = gr.Image(label="Canny edges (a preview: a run takes them at the output size)",
                                     interactive=False, elem_id="controlnet-edges", height=320, format="png")
                with gr.Row() as canny_thresholds:
                    canny_low = gr.Slider(0, 1020, DEFAULTS["canny_low"], step=1, label="Canny low threshold",
                                          elem_id="controlnet-canny-low")
                    canny_high = gr.Slider(0, 1020, DEFAULTS["canny_high"], step=1, label="Canny high threshold",
                                           elem_id="controlnet-canny-high")
                strength = gr.Slider(0, 2, DEFAULTS["controlnet_strength"], step=0.05,
                                     label="ControlNet strength", elem_id="controlnet-strength")
                upscale, upscale_fields, upscale_batch = upscale_controls(studio.manager.models_dir)
                with gr.Accordion("Image to image", open=False, elem_id="controlnet-img2img") as img2img:
                    init_image = input_image("Input image (optional: start from it, steered by the edges)",
                                             "controlnet-init-image")
                    image_strength = gr.Slider(0, 0.99, DEFAULTS["image_strength"], step=0.01,
                                               label="Image strength (how much of the input is kept)",
                                               elem_id="controlnet-image-strength")
                weight_choices = side_model_choices(studio.manager.list_models(), "controlnet",
                                                    "default: canny for Canny edges (demo-canny on a demo model), "
                                                    "upscaler for Upscale (demo-upscaler on a demo model)")
                with gr.Row():
                    weights = gr.Dropdown(weight_choices, value=TOOL_DEFAULT, label="ControlNet weights",
                                          elem_id="controlnet-weights", scale=3)
                    union_type = gr.Dropdown(CONTROL_TYPES, value=OWN_TYPE, label="Control type (Union ControlNets)",
                                             info="own: canny (Upscale: tile); depth: the photo's depth map; "
                                                  "gray: the photo made gray; the rest: the image as it is",
                                             elem_id="controlnet-union-type", scale=2)
                units, unit_controls, unit_images = render_units(weight_choices)
                hires, hires_fields = hires_controls(TOOL, {DEFAULT_UPSCALER: "resampled; the ControlNets steer the "
                                                            "second pass too, their images at its size"},
                                                     studio.manager.models_dir)
                face_fix, face_fix_fields = face_fix_controls(TOOL)
                shared = build_shared_controls(studio, TOOL, TOOL)
                example_image = {control_image: lambda e: str(e.images["image"])}
                render_demo_examples(studio, TOOL, shared.controls, example_image,
                                     {mode: CANNY, weights: TOOL_DEFAULT, union_type: OWN_TYPE,
                                      strength: MODE_STRENGTHS[CANNY],
                                      canny_low: DEFAULTS["canny_low"], canny_high: DEFAULTS["canny_high"]}, kind=CANNY,
                                     emptied=tuple(unit_images.values()))
                render_demo_examples(studio, MODE_TOOLS[UPSCALE], shared.controls, example_image,
                                     {mode: UPSCALE, weights: TOOL_DEFAULT, union_type: OWN_TYPE,
                                      strength: MODE_STRENGTHS[UPSCALE],
                                      upscale_fields["upscale_factor"]: UPSCALE_FACTOR}, kind=UPSCALE)
                controls = {**shared.controls, "mode": mode, "controlnet_strength": strength, "canny_low": canny_low,
                            "canny_high": canny_high, **upscale_fields, "controlnet_weights": weights,
                            "controlnet_mode": union_type, "image_strength": image_strength, **unit_controls,
                            **hires_fields, **face_fix_fields}
                panel = Panel(TOOL, tuple(MODE_TOOLS.values()), controls, settings_from_values, values_from_settings,
                              send_target=control_image)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL, compare=True)

    def show_edges(image, low, high):
        return {edges: edges_preview(image, low, high), view.status: ""}

    preview = dict(fn=safe_action(view.status, show_edges, clears=(edges,)),
                   inputs_kwargs={"image": control_image, "low": canny_low, "high": canny_high},
                   outputs=[edges, view.status], show_progress="hidden", trigger_mode="always_last")
    control_image.change(**preview, api_name="canny_preview")
    canny_low.release(**preview, api_name="canny_preview_low", api_visibility="private")
    canny_high.release(**preview, api_name="canny_preview_high", api_visibility="private")
    mode.input(MODE_STRENGTHS.get, mode, strength, queue=False, api_visibility="private")
    for picker in (mode, union_type):  # .change: a preset that sets them shows its controls too
        picker.change(mode_controls, [mode, union_type], [edges, canny_thresholds, img2img, units, hires,
                                                          face_fix, upscale],
                      queue=False, api_visibility="private")
    panel.view, panel.run_handler = view, studio.job(view)(build_requests)
    studio.wire_run(run, panel.run_handler,
                    {**controls, "control_image": control_image, "init_image": init_image, **unit_images,
                     "upscale_batch": upscale_batch},
                    view, api_name="controlnet")
    studio.wire_stop(stop)
    return panel
