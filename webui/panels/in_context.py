"""In-context panels: In-Context LoRA, CatVTON try-on and IC-Edit (diptych Fill tools).

`PANELS` holds one panel per tool, each with TOOL and render(studio), the shape app.py's
PANEL_MODULES expects (add `*in_context.PANELS` there).
"""

from types import SimpleNamespace

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.lora.a1111 import lora_library_name
from mflux_core.request import GenerationRequest
from mflux_core.tools.in_context_lora import LORA_STYLES, PROMPT_MARKERS
from webui.demo_examples import render_demo_examples
from webui.panels import Panel, input_image, mask_editor, result_column
from webui.panels.fill import BRUSH_SIZE, editor_image, editor_mask, example_editor_value
from webui.presets_ui import render_presets
from webui.requests import RequestContext, lora_files, requests_from_settings
from webui.widgets import build_shared_controls, shared_settings, shared_values

NO_STYLE = "none"
OWN_IC_EDIT_LORA = "IC-Edit's own (RiverZ/normal-lora; the demo's on a demo model)"
MARKERS_HELP = ("The left panel is the reference, the right one is generated. Describe both, marking each "
                "panel with a pair: " + ", ".join(" / ".join(pair) for pair in PROMPT_MARKERS) + ".")
EXTRA_KEYS = {"in-context": ("lora_style", "save_full_image"), "catvton": ("save_full_image",),
              "ic-edit": ("instruction", "save_full_image", "ic_edit_lora")}


def settings_from_values(tool: str, values: dict) -> dict:
    extra = {"save_full_image": bool(values.get("save_full_image"))}
    if tool == "in-context" and values.get("lora_style") not in (None, NO_STYLE):
        extra["lora_style"] = values["lora_style"]
    if tool == "ic-edit":
        extra["instruction"] = (values.get("instruction") or "").strip()
        if values.get("ic_edit_lora") not in (None, "", OWN_IC_EDIT_LORA):
            extra["ic_edit_lora"] = values["ic_edit_lora"]  # a library name, its file found when the job is built
    own = {"keep_unmasked": bool(values.get("keep_unmasked"))} if tool == "catvton" else {}
    return {"tool": tool, **shared_settings(values), **own, "extra": extra}


def values_from_settings(tool: str, settings: dict) -> dict:
    values = shared_values(settings)
    if tool == "catvton" and "keep_unmasked" in settings:
        values["keep_unmasked"] = settings["keep_unmasked"]
    extra = settings.get("extra") or {}
    values.update({key: extra[key] for key in EXTRA_KEYS[tool] if key in extra})
    if tool == "in-context" and "lora_style" not in values and "extra" in settings:
        values["lora_style"] = NO_STYLE
    if tool == "ic-edit" and "extra" in settings:  # a result records the file: the picker shows its library name
        values["ic_edit_lora"] = lora_library_name(values.get("ic_edit_lora") or "") or OWN_IC_EDIT_LORA
    return values


def build_requests(tool: str, values: dict, context: RequestContext) -> list[GenerationRequest]:
    settings = settings_from_values(tool, values)
    if tool == "catvton":
        if values.get("garment") is None:
            raise InvalidRequest("Upload the garment image.")
        editor = values.get("editor")
        settings["extra"]["garment_image_path"] = context.inputs.save(values["garment"], "catvton-garment")
        return requests_from_settings(settings, context,
                                      image_path=context.inputs.save(editor_image(editor), "catvton-person"),
                                      masked_image_path=context.inputs.save(editor_mask(editor), "catvton-mask"))
    if values.get("reference") is None:
        raise InvalidRequest("Upload the reference image.")
    if "ic_edit_lora" in settings["extra"]:
        name = lora_library_name(settings["extra"]["ic_edit_lora"])
        settings["extra"]["ic_edit_lora"] = lora_files([name], context.loras)[0]
    return requests_from_settings(settings, context,
                                  image_path=context.inputs.save(values["reference"], f"{tool}-reference"))


def _render(studio, tool: str, title: str) -> Panel:
    with gr.Tab(title, id=tool, elem_id=f"tab-{tool}"):
        with gr.Row():
            with gr.Column(scale=5):
                inputs, own = {}, {}
                if tool == "catvton":
                    inputs["garment"] = input_image("Garment (left panel)", "catvton-garment")
                    inputs["editor"] = mask_editor("Person (paint where the garment goes)", "catvton-editor",
                                                   BRUSH_SIZE)
                else:
                    inputs["reference"] = input_image("Reference (left panel)", f"{tool}-reference")
                if tool == "in-context":
                    own["lora_style"] = gr.Dropdown([NO_STYLE, *LORA_STYLES], value=NO_STYLE, label="LoRA style",
                                                    elem_id="in-context-lora-style")
                    gr.Markdown(MARKERS_HELP, elem_id="in-context-markers")
                if tool == "catvton":
                    own["keep_unmasked"] = gr.Checkbox(True, label="Keep the person outside the mask (paste it "
                                                       "back, feathered)", elem_id="catvton-keep-unmasked")
                if tool == "ic-edit":
                    own["instruction"] = gr.Textbox(label="Instruction (e.g. 'make the sky pink')",
                                                    elem_id="ic-edit-instruction")
                    own["ic_edit_lora"] = gr.Dropdown(
                        [OWN_IC_EDIT_LORA, *sorted(studio.lora_library())], value=OWN_IC_EDIT_LORA,
                        label="IC-Edit LoRA (another from the LoRA library: one trained for IC-Edit's diptychs)",
                        allow_custom_value=True, elem_id="ic-edit-lora")
                own["save_full_image"] = gr.Checkbox(False, label="Keep the whole diptych",
                                                     elem_id=f"{tool}-save-full")
                prompt_label = {"catvton": "Prompt (empty: CatVTON's trained prompt)",
                                "ic-edit": "Full prompt (used when there is no instruction)"}.get(tool, "Prompt")
                shared = build_shared_controls(studio, tool, tool, prompt_label=prompt_label)
                if tool == "catvton":
                    render_demo_examples(studio, tool, shared.controls, {
                        inputs["garment"]: lambda e: str(e.images["garment"]), inputs["editor"]: example_editor_value},
                        {own["keep_unmasked"]: True})
                elif tool == "in-context":
                    render_demo_examples(studio, tool, shared.controls,
                                         {inputs["reference"]: lambda e: str(e.images["image"])},
                                         {own["lora_style"]: NO_STYLE})
                else:
                    render_demo_examples(studio, tool, shared.controls,
                                         {inputs["reference"]: lambda e: str(e.images["image"])},
                                         prompt=own["instruction"])
                controls = {**shared.controls, **own}
                panel = Panel(tool, (tool,), controls, lambda v: settings_from_values(tool, v),
                              lambda s: values_from_settings(tool, s),
                              send_target=inputs.get("reference", inputs.get("editor")))
                render_presets(studio, panel)
            with gr.Column(scale=4):
                view, run, stop = result_column(tool)
    panel.view = view
    panel.run_handler = studio.job(view)(lambda values, context: build_requests(tool, values, context))
    studio.wire_run(run, panel.run_handler, {**controls, **inputs}, view, api_name=tool.replace("-", "_"))
    studio.wire_stop(stop)
    return panel


PANELS = tuple(
    SimpleNamespace(TOOL=tool, render=lambda studio, tool=tool, title=title: _render(studio, tool, title))
    for tool, title in (("in-context", "In-Context"), ("catvton", "Try-on"), ("ic-edit", "IC-Edit"))
)
