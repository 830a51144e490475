"""The "Hires fix" accordion (a second, image-to-image pass at a larger size) and its settings, on the panels that
make an image from text: Generate, the X/Y/Z plot, and ControlNet (whose ControlNets steer the second pass too)."""

import gradio as gr

from mflux_core.hires import DEFAULT_STRENGTH, DEFAULT_UPSCALER
from mflux_core.request import MAX_STEPS
from mflux_core.settings_schema import HIRES_UPSCALERS, MAX_HIRES_SCALE
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
            "hires_strength": number_value(values, "hires_strength", DEFAULT_STRENGTH, "Hires denoising strength"),
            "hires_upscaler": values.get("hires_upscaler") or DEFAULT_UPSCALER,
            "hires_prompt": values.get("hires_prompt") or ""}


def hires_values(settings: dict) -> dict:
    """The accordion's values for these settings (the box ticked when they have a hires scale)."""
    if settings.get("hires_scale") is None:
        return {"hires": False}
    return {"hires": True, "hires_scale": settings["hires_scale"], "hires_steps": settings.get("hires_steps") or 0,
            "hires_strength": settings.get("hires_strength") or DEFAULT_STRENGTH,
            "hires_upscaler": settings.get("hires_upscaler") or DEFAULT_UPSCALER,
            "hires_prompt": settings.get("hires_prompt") or ""}


def hires_controls(tool: str, upscalers: dict[str, str]) -> tuple[gr.Accordion, dict]:
    """The accordion and its controls (element ids `<tool>-hires-...`); `upscalers`: name -> what it does (the
    picker's choices and their note)."""
    with gr.Accordion("Hires fix", open=False, elem_id=f"{tool}-hires") as accordion:
        controls = {"hires": gr.Checkbox(False, label="Upscale, then refine with a second pass at the larger size",
                                         elem_id=f"{tool}-hires-on")}
        with gr.Row():
            controls["hires_scale"] = gr.Slider(1, MAX_HIRES_SCALE, DEFAULT_HIRES_SCALE, step=0.25,
                                                label="Upscale by", elem_id=f"{tool}-hires-scale")
            controls["hires_upscaler"] = gr.Dropdown(list(upscalers), value=DEFAULT_UPSCALER, label="Upscaler",
                                                     elem_id=f"{tool}-hires-upscaler",
                                                     info="; ".join(f"{name}: {note}" for name, note in
                                                                    upscalers.items()))
        with gr.Row():
            controls["hires_steps"] = gr.Number(0, label="Hires steps (0: the same)", precision=0, minimum=0,
                                                maximum=MAX_STEPS, elem_id=f"{tool}-hires-steps")
            controls["hires_strength"] = gr.Slider(0.01, 1, DEFAULT_STRENGTH, step=0.01,
                                                   label="Denoising strength (how much the second pass changes)",
                                                   elem_id=f"{tool}-hires-strength")
        controls["hires_prompt"] = gr.Textbox(label="Hires prompt (empty: the prompt)", lines=2,
                                              elem_id=f"{tool}-hires-prompt")
    return accordion, controls
