"""The "Face fix (ADetailer)" accordion of the panels that make an image from text or an image (Generate, ControlNet):
each face found is inpainted again at the model's size after the run (mflux_core/face_fix.py)."""

import gradio as gr

from mflux_core.presets import MAX_EXTRA_TEXT
from mflux_core.settings_schema import DEFAULT_FACE_FIX_STRENGTH, MAX_FACE_FIX_PADDING, ONLY_MASKED_PADDING
from mflux_core.tools.specs import FACE_FIX, FACE_FIX_PADDING, FACE_FIX_PROMPT, FACE_FIX_STRENGTH
from webui.widgets import number_value


def face_fix_settings(values: dict) -> dict:
    """request.extra's face fix keys when its box is ticked (merged into the panel's other extra settings)."""
    if not values.get("face_fix"):
        return {}
    return {FACE_FIX: True, FACE_FIX_PROMPT: values.get("face_fix_prompt") or "",
            FACE_FIX_STRENGTH: number_value(values, "face_fix_strength", DEFAULT_FACE_FIX_STRENGTH,
                                            "Face fix denoising strength"),
            FACE_FIX_PADDING: int(number_value(values, "face_fix_padding", ONLY_MASKED_PADDING, "Face fix padding"))}


def face_fix_values(extra: dict) -> dict:
    """The accordion's values for a request's extra settings (the box unticked when they hold no face fix)."""
    if not extra.get(FACE_FIX):
        return {"face_fix": False}
    return {"face_fix": True, "face_fix_prompt": extra.get(FACE_FIX_PROMPT) or "",
            "face_fix_strength": extra.get(FACE_FIX_STRENGTH, DEFAULT_FACE_FIX_STRENGTH),
            "face_fix_padding": extra.get(FACE_FIX_PADDING, ONLY_MASKED_PADDING)}


def face_fix_controls(tool: str) -> tuple[gr.Accordion, dict]:
    """The accordion and its controls (element ids `<tool>-face-fix-...`)."""
    with gr.Accordion("Face fix (ADetailer)", open=False, elem_id=f"{tool}-face-fix") as accordion:
        controls = {"face_fix": gr.Checkbox(
            False, label="Then inpaint each face again at the model's size", elem_id=f"{tool}-face-fix-on",
            info="Faces are found by OpenCV's frontal-face detector (upright faces of at least a 16th of the "
                 "shorter side), each repainted as Fill's 'Only masked' does")}
        with gr.Row():
            controls["face_fix_strength"] = gr.Slider(0.01, 1, DEFAULT_FACE_FIX_STRENGTH, step=0.01,
                                                      label="Denoising strength", elem_id=f"{tool}-face-fix-strength")
            controls["face_fix_padding"] = gr.Slider(0, MAX_FACE_FIX_PADDING, ONLY_MASKED_PADDING, step=4,
                                                     label="Padding around each face (px)",
                                                     elem_id=f"{tool}-face-fix-padding")
        controls["face_fix_prompt"] = gr.Textbox(label="Face prompt (empty: the prompt)", lines=2,
                                                 max_length=MAX_EXTRA_TEXT, elem_id=f"{tool}-face-fix-prompt")
    return accordion, controls
