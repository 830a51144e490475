"""Fill: inpaint inside a mask painted in the editor, or outpaint onto a padded canvas (FLUX.1-Fill, or a base model
keeping the image outside the mask: mflux_core/tools/fill.py)."""

import re
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.images.io import load_image, load_mask
from mflux_core.images.masks import grow_mask, invert_mask, mask_from_editor_layers, mask_to_pil
from mflux_core.image_batch import masks_for
from mflux_core.images.outpaint import outpaint_canvas, parse_padding
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import MASKED_CONTENTS, MAX_MASK_BLUR, ONLY_MASKED_PADDING
from mflux_core.tools.specs import MASKED_CONTENT, default_model_for
from webui.demo_examples import render_demo_examples
from webui.image_batch_ui import image_batch_controls, image_batch_requests, refuse_mixed_inputs
from webui.jobs import progress_html, safe_action
from webui.panels import Panel, editor_layers, input_image, mask_editor, result_column
from webui.presets_ui import render_presets
from webui.requests import RequestContext, read_upload, requests_from_settings
from webui.widgets import build_shared_controls, number_value, shared_settings, shared_values, token_side_of

TOOL = "fill"
INPAINT, OUTPAINT = "Inpaint", "Outpaint"
WHOLE_PICTURE, ONLY_MASKED = "Whole picture", "Only masked"  # A1111's inpaint areas
SIDES = ("top", "right", "bottom", "left")
UNITS = ("px", "%")
BRUSH_SIZE = 12


# ----- pure parts -----------------------------------------------------------------------------


def padding_text(values: dict) -> str | None:
    """"top,right,bottom,left" with the unit on each value (what parse_padding reads), or None when inpainting."""
    if values.get("mode") != OUTPAINT:
        return None
    unit = values.get("pad_unit") or "px"
    return ",".join(f"{_number(number_value(values, f'pad_{side}', 0, f'The {side} padding'))}{unit}"
                    for side in SIDES)


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else f"{value:g}"


_SIDE_VALUE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(px|%)?\s*$", re.IGNORECASE)


def padding_values(text: str | None) -> dict:
    """The mode, per-side numbers and unit for a padding text (the unit of the first side with one)."""
    if not text:
        return {"mode": INPAINT}
    parts = [part.strip() for part in text.split(",")]
    if len(parts) == 3:
        parts.append(parts[1])
    parts = (parts * (4 // len(parts)))[:4] if len(parts) in (1, 2, 4) else ["0"] * 4  # CSS shorthand
    matches = [_SIDE_VALUE.match(part) for part in parts]
    units = [m.group(2).lower() for m in matches if m and m.group(2)]
    values = {"mode": OUTPAINT, "pad_unit": units[0] if units else "px"}
    for side, match in zip(SIDES, matches):
        values[f"pad_{side}"] = float(match.group(1)) if match else 0.0
    return values


def editor_mask(editor: dict, invert: bool = False, grow_px: int = 0,
                uploaded: str | Image.Image | None = None) -> Image.Image:
    """The painted strokes, or an uploaded mask in their place (white = regenerate, as A1111's "Inpaint upload";
    stretched to the image's size), as a mask ('L', white = regenerate), inverted and grown as asked (the tool
    blurs it: the request's mask_blur)."""
    if uploaded is not None:
        return resized_mask(uploaded, editor_image(editor).size, invert, grow_px)
    return finished_mask(mask_from_editor_layers(editor_layers(editor)), invert, grow_px)


def resized_mask(uploaded: str | Image.Image, size: tuple[int, int], invert: bool = False,
                 grow_px: int = 0) -> Image.Image:
    """An uploaded mask stretched to an image's `size`, inverted and grown as asked."""
    mask = np.asarray(read_upload(uploaded, load_mask).resize(size, Image.Resampling.NEAREST)) > 127
    return finished_mask(mask, invert, grow_px)


def finished_mask(mask: np.ndarray, invert: bool, grow_px: int) -> Image.Image:
    if invert:
        mask = invert_mask(mask)
    if not mask.any():
        raise InvalidRequest("The mask is empty: paint the area to regenerate.")
    if grow_px:
        mask = grow_mask(mask, int(grow_px))
    return mask_to_pil(mask)


def editor_image(editor: dict | None) -> Image.Image:
    background = (editor or {}).get("background")
    if background is None:
        raise InvalidRequest("Upload an image to fill first.")
    return read_upload(background)


def only_masked_padding(values: dict) -> int | None:
    """The padding around the mask when only the masked area is inpainted; None for the whole picture."""
    if values.get("inpaint_area") != ONLY_MASKED:
        return None
    return int(number_value(values, "only_masked_padding", ONLY_MASKED_PADDING, "Only masked padding"))


def settings_from_values(values: dict) -> dict:
    return {"tool": TOOL, **shared_settings(values), "keep_unmasked": bool(values.get("keep_unmasked")),
            "outpaint_padding": padding_text(values), "only_masked_padding": only_masked_padding(values),
            "mask_blur": int(number_value(values, "mask_blur_px", 0, "Mask blur")),
            "image_strength": number_value(values, "image_strength", 0, "Image strength") or None,  # 0: from noise
            "extra": {"mask_invert": bool(values.get("mask_invert")),
                      "mask_grow_px": int(number_value(values, "mask_grow_px", 0, "Grow mask")),
                      MASKED_CONTENT: values.get(MASKED_CONTENT) or MASKED_CONTENTS[0]}}


def values_from_settings(settings: dict) -> dict:
    values = shared_values(settings)
    if "keep_unmasked" in settings:
        values["keep_unmasked"] = settings["keep_unmasked"]
    if "outpaint_padding" in settings:
        values.update(padding_values(settings["outpaint_padding"]))
    if "only_masked_padding" in settings:
        padding = settings["only_masked_padding"]
        values["inpaint_area"] = WHOLE_PICTURE if padding is None else ONLY_MASKED
        if padding is not None:
            values["only_masked_padding"] = padding
    if "image_strength" in settings:
        values["image_strength"] = settings["image_strength"] or 0
    extra = settings.get("extra") or {}
    for key in ("mask_invert", "mask_grow_px", MASKED_CONTENT):
        if key in extra:
            values[key] = extra[key]
    if "mask_blur" in settings:
        values["mask_blur_px"] = settings["mask_blur"]
    return values


def build_requests(values: dict, context: RequestContext) -> list[GenerationRequest]:
    settings = settings_from_values(values)
    editor = values.get("editor")
    if values.get("batch_images"):
        return batch_requests(values, settings, context)
    inputs = {"image_path": context.inputs.save(editor_image(editor), "fill-image")}
    if settings["outpaint_padding"] is None:
        extra = settings["extra"]
        mask = editor_mask(editor, extra["mask_invert"], extra["mask_grow_px"], values.get("mask_upload"))
        inputs["masked_image_path"] = context.inputs.save(mask, "fill-mask")
    return requests_from_settings(settings, context, **inputs)


def batch_requests(values: dict, settings: dict, context: RequestContext) -> list[GenerationRequest]:
    """Fill on each batch image (A1111's inpaint batch): inside its own mask (found by its name, or the one mask for
    every image), inverted and grown as the panel asks; outpainting needs none."""
    background = (values.get("editor") or {}).get("background")
    refuse_mixed_inputs("an image in the editor" if background is not None else None)
    uploads, masks = values["batch_images"], values.get("batch_masks") or []
    inpainting = settings["outpaint_padding"] is None
    if inpainting and not masks:
        raise InvalidRequest("An inpaint batch needs masks: upload them beside the images (each found by its image's "
                             "name, or one mask for every image), or outpaint.")
    mask_of = dict(zip(uploads, masks_for(uploads, masks, "The uploaded masks"))) if inpainting else {}
    extra = settings["extra"]

    def inputs_of(upload: str) -> dict:
        image_path = context.inputs.save(upload, "fill-image")
        if not inpainting:
            return {"image_path": image_path}
        with Image.open(image_path) as image:
            try:
                mask = resized_mask(mask_of[upload], image.size, extra["mask_invert"], extra["mask_grow_px"])
            except InvalidRequest as error:
                raise InvalidRequest(f"{Path(upload).name}: {error}") from None
        return {"image_path": image_path, "masked_image_path": context.inputs.save(mask, "fill-mask")}

    first = requests_from_settings(settings, context)[0]
    return image_batch_requests(first, settings, uploads, values.get("batch_png_info"), context, inputs_of)


EXAMPLE_MASK_ALPHA = 150  # an example's mask is painted translucent, so the shape it recolours shows through


def example_editor_value(example) -> dict:
    """The editor holding a demo example's picture with its mask painted on (any alpha > 0 is masked)."""
    image = load_image(example.images["image"]).convert("RGBA")
    painted = np.asarray(load_mask(example.images["mask"])) > 127
    layer = np.zeros((*painted.shape, 4), np.uint8)
    layer[painted] = (255, 255, 255, EXAMPLE_MASK_ALPHA)
    strokes = Image.fromarray(layer, "RGBA")
    return {"background": image, "layers": [strokes], "composite": Image.alpha_composite(image, strokes)}


def outpaint_preview(values: dict, token_side: int) -> tuple[Image.Image, Image.Image]:
    """The canvas and mask the engine will build for these padding values, on a model of `token_side` px tokens."""
    image = editor_image(values.get("editor"))
    text = padding_text({**values, "mode": OUTPAINT})
    return outpaint_canvas(image, parse_padding(text, image.width, image.height), token_side)


# ----- the panel ------------------------------------------------------------------------------


def render(studio) -> Panel:
    with gr.Tab("Fill", id=TOOL, elem_id="tab-fill"):
        with gr.Row():
            with gr.Column(scale=5):
                editor = mask_editor("Image and mask (paint the area to regenerate)", "fill-editor", BRUSH_SIZE)
                mode = gr.Radio([INPAINT, OUTPAINT], value=INPAINT, label="Mode", elem_id="fill-mode")
                with gr.Row():
                    keep_unmasked = gr.Checkbox(True, label="Keep the unmasked area exactly",
                                                elem_id="fill-keep-unmasked")
                    mask_invert = gr.Checkbox(False, label="Invert mask", elem_id="fill-mask-invert")
                    mask_grow_px = gr.Slider(-32, 64, 0, step=1, label="Grow mask (px)", elem_id="fill-mask-grow")
                    mask_blur_px = gr.Slider(0, MAX_MASK_BLUR, 0, step=1, label="Mask blur (px)",
                                             elem_id="fill-mask-blur")
                with gr.Row():
                    image_strength = gr.Slider(
                        0, 0.99, 0, step=0.01, label="Image strength (0: the masked area starts from noise)",
                        info="Above 0 it starts from the image, keeping this much of it (A1111's denoising "
                             "strength is 1 minus this)", elem_id="fill-image-strength")
                    masked_content = gr.Radio(
                        list(MASKED_CONTENTS), value=MASKED_CONTENTS[0], label="Masked content",
                        info="With an image strength: the masked area as it is, or painted from the colours around "
                             "it (A1111's)", elem_id="fill-masked-content")
                with gr.Accordion("Upload a mask instead of painting", open=False, elem_id="fill-mask-upload-box"):
                    mask_upload = input_image("Mask image (white = regenerate; used in place of the strokes)",
                                              "fill-mask-upload")
                with gr.Row():
                    inpaint_area = gr.Radio(
                        [WHOLE_PICTURE, ONLY_MASKED], value=WHOLE_PICTURE, label="Inpaint area",
                        info="Only masked: the area around the mask is inpainted at Width x Height (0: its shape at "
                             "the model's size) and pasted back; the image keeps its size", elem_id="fill-inpaint-area")
                    padding = gr.Slider(0, 256, ONLY_MASKED_PADDING, step=4, label="Only masked padding (px)",
                                        elem_id="fill-only-masked-padding")
                with gr.Accordion("Batch (several images, each with its mask)", open=False, elem_id="fill-batch"):
                    batch = image_batch_controls(TOOL, "images to fill", masks=True)
                with gr.Accordion("Outpaint padding", open=False, elem_id="fill-outpaint"):
                    with gr.Row():
                        pads = {f"pad_{side}": gr.Number(0, label=side.capitalize(), minimum=0,
                                                         elem_id=f"fill-pad-{side}") for side in SIDES}
                        pad_unit = gr.Radio(list(UNITS), value="px", label="Unit", elem_id="fill-pad-unit")
                    preview_canvas = gr.Button("Preview canvas and mask", elem_id="fill-outpaint-preview")
                    with gr.Row():
                        canvas_image = gr.Image(label="Canvas", interactive=False, elem_id="fill-canvas", height=200,
                                                format="png")
                        mask_image = gr.Image(label="Mask", interactive=False, elem_id="fill-canvas-mask", height=200,
                                              format="png")
                shared = build_shared_controls(studio, TOOL, TOOL)
                render_demo_examples(studio, TOOL, shared.controls, {editor: example_editor_value}, {
                    mode: INPAINT, keep_unmasked: True, mask_invert: False, mask_grow_px: 0, mask_blur_px: 0,
                    inpaint_area: WHOLE_PICTURE, image_strength: 0, masked_content: MASKED_CONTENTS[0]})
                controls = {**shared.controls, "mode": mode, "keep_unmasked": keep_unmasked,
                            "mask_invert": mask_invert, "mask_grow_px": mask_grow_px, "mask_blur_px": mask_blur_px,
                            "inpaint_area": inpaint_area, "only_masked_padding": padding,
                            "image_strength": image_strength, MASKED_CONTENT: masked_content,
                            **pads, "pad_unit": pad_unit}
                panel = Panel(TOOL, (TOOL,), controls, settings_from_values, values_from_settings,
                              send_target=editor)
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL, compare=True)

    def show_canvas(**values):
        model = values.get("model") or default_model_for(TOOL, studio.manager.models_dir)
        canvas, mask = outpaint_preview(values, token_side_of(studio.manager.list_models(), model))
        return {canvas_image: canvas, mask_image: mask, view.status: progress_html(
            f"Outpaint canvas {canvas.width}x{canvas.height}: white in the mask is generated.")}

    preview_canvas.click(safe_action(view.status, show_canvas, clears=(canvas_image, mask_image)),
                         inputs_kwargs={"editor": editor, "mode": mode, **pads, "pad_unit": pad_unit,
                                        "model": shared.controls["model"]},
                         outputs=[canvas_image, mask_image, view.status], api_name="outpaint_preview")
    panel.view, panel.run_handler = view, studio.job(view)(build_requests)
    studio.wire_run(run, panel.run_handler, {**controls, "editor": editor, "mask_upload": mask_upload, **batch}, view,
                    api_name="fill")
    studio.wire_stop(stop)
    return panel
