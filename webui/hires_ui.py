"""The "Hires fix" accordion (a second, image-to-image pass at a larger size) and its settings, on the panels that
make an image from text: Generate, the X/Y/Z plot, and ControlNet (whose ControlNets steer the second pass too)."""

import gradio as gr

from mflux_core.hires import DEFAULT_UPSCALER
from mflux_core.request import MAX_STEPS
from mflux_core.settings_schema import DEFAULT_HIRES_STRENGTH, HIRES_UPSCALERS, MAX_HIRES_SCALE
from mflux_core.upscaler_files import upscaler_files
from webui.widgets import number_value

DEFAULT_HIRES_SCALE = 2.0
UPSCALER_NOTES = {HIRES_UPSCALERS[0]: "resampled", HIRES_UPSCALERS[1]: "Lanczos, then jasperai's Upscaler ControlNet "
                  "steers the second pass (it must be on disk)"}  # text-to-image's upscalers


def hires_settings(values: dict) -> dict:
    """The hires fix's settings when its box is ticked (hires steps 0: the first pass's)."""
    if not values.get("hires"):
        return {}
    return {"hires_scale": number_value(values, "hires_scale", DEFAULT_HIRES_SCALE, "Hires upscale"),
            "hires_steps": int(number_value(values, "hires_steps", 0, "Hires steps")) or None,
            "hires_strength": number_value(values, "hires_strength", DEFAULT_HIRES_STRENGTH, "Hires denoising strength"),
            "hires_upscaler": values.get("hires_upscaler") or DEFAULT_UPSCALER,
            "hires_prompt": values.get("hires_prompt") or ""}


def hires_values(settings: dict) -> dict:
    """The accordion's values for these settings (the box ticked when they have a hires scale)."""
    if settings.get("hires_scale") is None:
        return {"hires": False}
    return {"hires": True, "hires_scale": settings["hires_scale"], "hires_steps": settings.get("hires_steps") or 0,
            "hires_strength": settings.get("hires_strength") or DEFAULT_HIRES_STRENGTH,
            "hires_upscaler": settings.get("hires_upscaler") or DEFAULT_UPSCALER,
            "hires_prompt": settings.get("hires_prompt") or ""}


def with_upscaler_models(built_in: list[str], models_dir) -> list[str]:
    """The upscaler picker's choices: the built-in ones, then the upscaler models of the models folder."""
    return [*built_in, *upscaler_files(models_dir)]


def upscaler_picker(built_in: list[str], value: str, models_dir, **dropdown) -> gr.Dropdown:
    """A dropdown of the built-in upscalers and the models folder's upscaler models, with a rescan button."""
    rescan = gr.Button("↻ rescan", elem_id=f"{dropdown['elem_id']}-refresh", size="sm", render=False)
    picker = gr.Dropdown(with_upscaler_models(built_in, models_dir), value=value, buttons=[rescan],
                         allow_custom_value=True, **dropdown)  # a preset's model not here: refused by name when run
    rescan.click(lambda: gr.Dropdown(choices=with_upscaler_models(built_in, models_dir)), outputs=picker,
                 queue=False, api_visibility="private")
    return picker


def hires_controls(tool: str, upscalers: dict[str, str], models_dir) -> tuple[gr.Accordion, dict]:
    """The accordion and its controls (element ids `<tool>-hires-...`); `upscalers`: name -> what it does (the
    picker's built-in choices and their note; the models folder's upscaler models follow them)."""
    with gr.Accordion("Hires fix", open=False, elem_id=f"{tool}-hires") as accordion:
        controls = {"hires": gr.Checkbox(False, label="Upscale, then refine with a second pass at the larger size",
                                         elem_id=f"{tool}-hires-on")}
        with gr.Row():
            controls["hires_scale"] = gr.Slider(1, MAX_HIRES_SCALE, DEFAULT_HIRES_SCALE, step=0.25,
                                                label="Upscale by", elem_id=f"{tool}-hires-scale")
            notes = "; ".join(f"{name}: {note}" for name, note in upscalers.items())
            controls["hires_upscaler"] = upscaler_picker(
                list(upscalers), DEFAULT_UPSCALER, models_dir, label="Upscaler", elem_id=f"{tool}-hires-upscaler",
                info=f"{notes}; then the upscaler models (ESRGAN, 4x-UltraSharp, ...) in the models folder's "
                     "upscalers/")
        with gr.Row():
            controls["hires_steps"] = gr.Number(0, label="Hires steps (0: the same)", precision=0, minimum=0,
                                                maximum=MAX_STEPS, elem_id=f"{tool}-hires-steps")
            controls["hires_strength"] = gr.Slider(0.01, 1, DEFAULT_HIRES_STRENGTH, step=0.01,
                                                   label="Denoising strength (how much the second pass changes)",
                                                   elem_id=f"{tool}-hires-strength")
        controls["hires_prompt"] = gr.Textbox(label="Hires prompt (empty: the prompt)", lines=2,
                                              elem_id=f"{tool}-hires-prompt")
    return accordion, controls
