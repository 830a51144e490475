"""The controls every panel shares: model, prompt, seed and batch, steps, guidance, sampler and schedule, true CFG
(on the tools that have it), size, LoRAs, quantization, VAE tiling.

Widget values travel as a dict keyed by control name; `shared_settings` turns them into preset
settings (GenerationRequest field names) and `shared_values` turns settings back into values.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.images.resize_modes import DEFAULT_RESIZE_MODE, RESIZE_MODES
from mflux_core.lora.info import describe_lora_file, read_lora_info
from mflux_core.models.vae import FLUX_SIDE
from mflux_core.registry import BUILT_IN, FLUX_TOKEN_SIDE, ModelEntry
from mflux_core.request import MAX_SEED, MAX_SIDE, QUANTIZE_BITS, check_finite
from mflux_core.settings_schema import MAX_BATCH, MAX_LORA_SCALE, MAX_TRUE_CFG_SCALE, SAMPLER_LABELS, SCHEDULE_LABELS
from mflux_core.styles import read_styles
from mflux_core.tools.specs import TOOL_SPECS
from mflux_core.weights.module_files import module_files

ASPECT_RATIOS = {"1:1": (1, 1), "4:3": (4, 3), "3:4": (3, 4), "3:2": (3, 2), "2:3": (2, 3), "16:9": (16, 9),
                 "9:16": (9, 16), "21:9": (21, 9)}
MAX_LORAS = 3
QUANTIZE_OFF = "off"
QUANTIZE_CHOICES = [QUANTIZE_OFF] + [str(bits) for bits in sorted(QUANTIZE_BITS, reverse=True)]

CHOICE_ORDER = {"models folder": 0, BUILT_IN: 2}  # downloaded models list the user's own first, demos last
TOOL_DEFAULT = ""  # a side-model picker's value for "the tool's default weights"
NO_LORA = ""  # an empty LoRA slot
# What a Width / Height of 0 means on a tool sized by its input image
SIZE_FROM_INPUT = {None: "0: the input image's size",
                   "kontext": "0: the reference's size as read (Kontext's nearest resolution when larger)",
                   "fill": "0: the image's size; Only masked: the area's shape at the model's size"}


# ----- pure helpers (tested without a browser) ---------------------------------------------


def snap_to_16(value: float | None) -> int | None:
    """The nearest multiple of 16 within the engine's limits; None and 0 (the tool decides) stay as they are."""
    if not value:
        return value
    return int(max(16, min(MAX_SIDE, math.floor(float(value) / 16 + 0.5) * 16)))  # halves round up


def aspect_size(ratio: str, width: int | None, height: int | None) -> tuple[int, int]:
    """Width and height for an aspect ratio, keeping about the current area, snapped to 16."""
    across, down = ASPECT_RATIOS[ratio]
    area = (width or FLUX_SIDE) * (height or FLUX_SIDE)
    unit = math.sqrt(area / (across * down))
    return snap_to_16(across * unit), snap_to_16(down * unit)


def model_choices(entries: list[ModelEntry], tool: str | None = None,
                  kinds: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(label, name) for the models of the tool's kinds: downloaded ones first, then aliases to download; after
    them, the others it runs on (base models: Depth with BFL's Depth LoRA, Fill keeping the unmasked latents)."""
    own = kinds or TOOL_SPECS[tool].model_kinds
    kinds = own + (() if kinds else TOOL_SPECS[tool].also_kinds)
    usable = [e for e in entries if e.kind in kinds]
    usable.sort(key=lambda e: (e.kind not in own, not e.available, CHOICE_ORDER.get(e.where, 1), e.name.lower()))
    choices, seen = [], set()
    for e in usable:  # a models-folder copy named like an alias shadows the alias
        if e.name not in seen:
            seen.add(e.name)
            choices.append((f"{e.name}  ·  {e.where}" if e.available else f"{e.name}  ·  not downloaded", e.name))
    return choices


def default_model(entries: list[ModelEntry], tool: str) -> str:
    """The tool's FLUX.1 model if downloaded, else the first other downloaded model that fits the tool, else
    the tool's demo model, else its FLUX.1 alias (downloaded on first use)."""
    downloaded = {e.name for e in entries if e.available and e.where != BUILT_IN}
    flux, demo = TOOL_SPECS[tool].model, TOOL_SPECS[tool].demo_model
    if flux in downloaded:
        return flux
    for _, name in model_choices(entries, kinds=TOOL_SPECS[tool].model_kinds):
        if name in downloaded:
            return name
    return demo if any(e.name == demo and e.available for e in entries) else flux


def native_side_of(entries: list[ModelEntry], name: str) -> int:
    """The default image side for a model: its own (64 for the demo models), FLUX.1's 1024 if unknown."""
    return next((e.native_side for e in entries if e.name == name), FLUX_SIDE)


def token_side_of(entries: list[ModelEntry], name: str) -> int:
    """Pixels along a side of one of the model's latent tokens (16 for FLUX.1's VAE, or if unknown)."""
    return next((e.token_side for e in entries if e.name == name), FLUX_TOKEN_SIDE)


def side_model_choices(entries: list[ModelEntry], kind: str, default_label: str) -> list[tuple[str, str]]:
    """Choices for a side model (ControlNet or Redux weights), led by the tool's default."""
    return [(default_label, TOOL_DEFAULT), *model_choices(entries, kinds=(kind,))]


def _number_or_none(value, what: str) -> float | None:
    """A number from a text box or number field; empty means None (the default)."""
    if value is None or str(value).strip() == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{what} must be a number or empty (the default), not {str(value)[:40]!r}.") from None
    return check_finite(number, what)


def number_value(values: dict, key: str, default: float, what: str) -> float:
    """A slider's or number field's value (`default` when it is empty); NaN and infinities are refused by name."""
    value = values.get(key)
    return float(default) if value is None or value == "" else check_finite(value, what)


def _int_or_none(value, what: str) -> int | None:
    number = _number_or_none(value, what)
    if number is not None and not number.is_integer():
        raise InvalidRequest(f"{what} must be a whole number or empty (the default), not {value!r}.")
    return None if number is None else int(number)


def _size_or_none(value, what: str) -> int | None:
    return _int_or_none(value, what) or None  # 0: from the input image (or the tool's default)


def shared_settings(values: dict) -> dict:
    """Preset settings from the shared controls' values."""
    loras = [(values.get(f"lora_{i}"), number_value(values, f"lora_scale_{i}", 1.0, f"The scale of LoRA {i}"),
              _number_or_none(values.get(f"lora_te_scale_{i}"), f"The text encoder scale of LoRA {i}"))
             for i in range(1, MAX_LORAS + 1)]
    loras = [(name, scale, scale if encoder is None else encoder) for name, scale, encoder in loras if name]
    differing = any(encoder != scale for _, scale, encoder in loras)
    quantize = values.get("quantize") or QUANTIZE_OFF
    return {
        "model": values.get("model") or None,
        "prompt": values.get("prompt") or "",
        "seed": None if values.get("random_seed") else _int_or_none(values.get("seed"), "The seed") or 0,
        **variation_settings(values),
        "batch_count": max(1, min(MAX_BATCH, _int_or_none(values.get("batch_count"), "Images") or 1)),
        "steps": _int_or_none(values.get("steps"), "Steps"),
        "guidance": _number_or_none(values.get("guidance"), "Guidance"),
        "width": _size_or_none(values.get("width"), "Width"),
        "height": _size_or_none(values.get("height"), "Height"),
        "lora_paths": [name for name, *_ in loras],
        "lora_scales": [scale for _, scale, _ in loras],
        **({"lora_text_encoder_scales": [encoder for *_, encoder in loras]} if differing else {}),
        "modules": list(values.get("modules") or []),
        "quantize": None if quantize == QUANTIZE_OFF else int(quantize),
        "vae_tiling": bool(values.get("vae_tiling")),
        **true_cfg_settings(values),
        "sampler": values.get("sampler") or "euler",
        "schedule": values.get("schedule") or "simple",
        **({"resize_mode": values.get("resize_mode") or DEFAULT_RESIZE_MODE} if "resize_mode" in values else {}),
        **({"styles": list(values["styles"])} if values.get("styles") else {}),
    }


def variation_settings(values: dict) -> dict:
    """A1111's variation seed (None when -1 or empty: a random one) and its strength; neither at strength 0."""
    strength = number_value(values, "variation_strength", 0.0, "The variation strength")
    if not strength:
        return {}
    seed = _int_or_none(values.get("variation_seed"), "The variation seed")
    return {"variation_seed": None if seed is None or seed < 0 else seed, "variation_strength": strength}


def true_cfg_settings(values: dict) -> dict:
    """The negative prompt and true CFG scale, from the panels that have their controls (the tools with true CFG)."""
    if "true_cfg_scale" not in values:
        return {}
    return {"negative_prompt": values.get("negative_prompt") or "",
            "true_cfg_scale": number_value(values, "true_cfg_scale", 1.0, "The true CFG scale")}


def shared_values(settings: dict) -> dict:
    """Values for the shared controls from (possibly partial) settings; keys not in settings are left out, except
    the styles: settings with a prompt set the picker to their styles, or empty it (a history image's prompt has
    its styles merged in already); and the variation seed, which comes (or goes: strength 0) with a seed."""
    values = {}
    for key in ("model", "prompt", "batch_count", "negative_prompt", "true_cfg_scale", "sampler", "schedule",
                "resize_mode"):
        if key in settings:
            values[key] = settings[key]
    if "prompt" in settings:
        values["styles"] = list(settings.get("styles") or [])
    for key in ("steps", "guidance"):  # text boxes: empty means the default
        if key in settings:
            values[key] = "" if settings[key] is None else f"{settings[key]:g}"
    for key in ("width", "height"):
        if key in settings:
            values[key] = settings[key] or 0
    if "seed" in settings:
        values["random_seed"] = settings["seed"] is None
        if settings["seed"] is not None:
            values["seed"] = settings["seed"]
        variation = settings.get("variation_seed")
        values["variation_seed"] = -1 if variation is None else variation
        values["variation_strength"] = settings.get("variation_strength") or 0.0
    if "lora_paths" in settings:
        scales = settings.get("lora_scales") or [1.0] * len(settings["lora_paths"])
        encoders = settings.get("lora_text_encoder_scales") or scales
        for i in range(1, MAX_LORAS + 1):
            present = i <= len(settings["lora_paths"])
            values[f"lora_{i}"] = settings["lora_paths"][i - 1] if present else NO_LORA
            values[f"lora_scale_{i}"] = scales[i - 1] if present else 1.0
            same = not present or encoders[i - 1] == scales[i - 1]
            values[f"lora_te_scale_{i}"] = "" if same else f"{encoders[i - 1]:g}"  # empty: the scale
    if "quantize" in settings:
        values["quantize"] = QUANTIZE_OFF if settings["quantize"] is None else str(settings["quantize"])
    if "vae_tiling" in settings:
        values["vae_tiling"] = settings["vae_tiling"]
    if "modules" in settings:
        values["modules"] = list(settings["modules"] or [])
    return values


# ----- the widgets --------------------------------------------------------------------------


def true_cfg_controls(prefix: str) -> dict:
    """The true CFG scale and the negative prompt, shown once the scale is above 1 (where it does something)."""
    scale = gr.Slider(1, MAX_TRUE_CFG_SCALE, 1.0, step=0.1, label="True CFG scale", elem_id=f"{prefix}-true-cfg",
                      info="1: off. Above 1, each step also runs on the negative prompt (twice the time).")
    negative = gr.Textbox(label="Negative prompt", lines=2, visible=False, elem_id=f"{prefix}-negative-prompt")
    scale.change(lambda value: gr.Textbox(visible=(value or 1) > 1), scale, negative, queue=False,
                 api_visibility="private")
    return {"true_cfg_scale": scale, "negative_prompt": negative}


def sampling_controls(prefix: str) -> dict:
    """The sampler and the sigma schedule (A1111's names shown, ours sent)."""
    with gr.Row():
        sampler = gr.Dropdown([(label, name) for name, label in SAMPLER_LABELS.items()], value="euler",
                              label="Sampler", elem_id=f"{prefix}-sampler",
                              info="Euler a, DPM++ 2M SDE: fresh noise each step (from the seed). Heun: two "
                                   "transformer passes a step (one on the last), about twice the time.")
        schedule = gr.Dropdown([(label, name) for name, label in SCHEDULE_LABELS.items()], value="simple",
                               label="Schedule", elem_id=f"{prefix}-schedule",
                               info="How the noise levels are spaced; each keeps FLUX's resolution shift.")
    return {"sampler": sampler, "schedule": schedule}


def resizes_inputs(tool: str) -> bool:
    """Whether the tool brings an input image to the output size (and so offers the resize modes)."""
    return any(flag.name == "resize_mode" for flag in TOOL_SPECS[tool].flags)


def lora_choices(studio) -> list[tuple[str, str]]:
    """A LoRA picker's choices: none, then the library's names."""
    return [("none", NO_LORA), *((name, name) for name in sorted(studio.lora_library()))]


def lora_info_line(studio, picker: gr.Dropdown, scale: gr.Slider, elem_id: str) -> gr.Markdown:
    """A line under a LoRA picker: the picked file's family, base model, activation text and trigger words, from its
    metadata and the user's notes beside it; picking a LoRA with a preferred weight (A1111's) sets its scale."""
    line = gr.Markdown("", elem_id=elem_id)
    picker.change(lambda name: describe_lora_file(studio.lora_library().get(name) if name else None), picker, line,
                  queue=False, show_progress="hidden", api_visibility="private")
    picker.input(lambda name: preferred_scale(studio.lora_library().get(name) if name else None), picker, scale,
                 queue=False, show_progress="hidden", api_visibility="private")  # a person's pick, not a restore
    return line


def preferred_scale(path: Path | None):
    """The scale slider's new value for a picked LoRA: its preferred weight, or unchanged."""
    info = read_lora_info(path) if path is not None else None
    return info.preferred_weight if info is not None and info.preferred_weight is not None else gr.skip()


@dataclass
class SharedControls:
    controls: dict  # control name -> component; the names shared_settings reads
    model_refresh: gr.Button


def refresh_model_pickers(studio, event) -> None:
    """After `event` (a page load, a model saved or deleted on the Models tab), every panel's Model dropdown lists
    the models as they are on disk now (a panel's list is otherwise read when the page is built)."""
    def updates() -> dict:
        entries = studio.manager.list_models()
        return {picker: gr.Dropdown(choices=model_choices(entries, tool)) for tool, picker in studio.model_pickers}

    event(updates, outputs=[picker for _, picker in studio.model_pickers], queue=False, api_visibility="private")


def build_shared_controls(studio, tool: str, prefix: str, prompt_label: str = "Prompt",
                          offer_true_cfg: bool = True, offer_resize_mode: bool = True) -> SharedControls:
    """Render the shared controls (call inside a Blocks context) and wire their small helpers.

    A tool sized by its input image starts width and height at 0 (meaning: the image's size). The true CFG
    controls appear on the tools that have them, unless `offer_true_cfg` is False; the resize modes on the tools
    that resize an input image, unless `offer_resize_mode` is False (a panel without one).
    """
    image_sized = TOOL_SPECS[tool].sized_by_input
    entries = studio.manager.list_models()
    model_refresh = gr.Button("↻ rescan", elem_id=f"{prefix}-model-refresh", size="sm", render=False)
    chosen = default_model(entries, tool)
    model = gr.Dropdown(model_choices(entries, tool), value=chosen, label="Model",
                        info="Aliases download on first use; models folder and HF cache entries are on disk.",
                        elem_id=f"{prefix}-model", buttons=[model_refresh])
    studio.model_pickers.append((tool, model))
    # Gradio's info text makes __name__ bold even in a code span and takes no escapes: the syntax is said in words
    prompt = gr.Textbox(label=prompt_label, lines=3, elem_id=f"{prefix}-prompt",
                        info="`{red|blue}` picks one per image, a file's name between double underscores a line of "
                             "that .txt file in the wildcards folder; as in A1111, `(word:1.3)` weighs a word, "
                             "`[cat:dog:0.5]` switches halfway through the steps, `[cat|dog]` alternates")
    styles_refresh = gr.Button("↻ rescan", elem_id=f"{prefix}-styles-refresh", size="sm", render=False)
    styles = gr.Dropdown(style_names(studio), value=[], multiselect=True, label="Styles",
                         info="A1111 styles from the styles folder's .csv files, merged into the prompts in order",
                         elem_id=f"{prefix}-styles", buttons=[styles_refresh])
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id=f"{prefix}-seed")
        random_seed = gr.Checkbox(False, label="Random seed", elem_id=f"{prefix}-random-seed")
        batch_count = gr.Slider(1, MAX_BATCH, 1, step=1, label="Images (seed, seed+1, ...)",
                                elem_id=f"{prefix}-batch")
    with gr.Accordion("Variation seed", open=False, elem_id=f"{prefix}-variation"):
        with gr.Row():
            variation_seed = gr.Number(-1, label="Variation seed", precision=0, minimum=-1, maximum=MAX_SEED,
                                       info="-1: a random one", elem_id=f"{prefix}-variation-seed")
            variation_strength = gr.Slider(
                0, 1, 0.0, step=0.01, label="Variation strength", elem_id=f"{prefix}-variation-strength",
                info="How much of the variation seed's noise is blended into the seed's, as A1111's: small values "
                     "give pictures close to the seed's; with several images the seed stays and the variation seed "
                     "counts up")
    with gr.Row():
        steps = gr.Textbox("", label="Steps", placeholder="model default", elem_id=f"{prefix}-steps")
        guidance = gr.Textbox("", label="Guidance", placeholder="tool default", elem_id=f"{prefix}-guidance")
    controls = sampling_controls(prefix)
    if offer_true_cfg and TOOL_SPECS[tool].true_cfg:
        controls.update(true_cfg_controls(prefix))
    side = 0 if image_sized else native_side_of(entries, chosen)
    size_info = SIZE_FROM_INPUT.get(tool, SIZE_FROM_INPUT[None]) if image_sized else \
        "Picking a model sets its native size."
    with gr.Row():
        width = gr.Number(side, label="Width", precision=0, step=16, minimum=0, maximum=MAX_SIDE, info=size_info,
                          elem_id=f"{prefix}-width")
        height = gr.Number(side, label="Height", precision=0, step=16, minimum=0, maximum=MAX_SIDE, info=size_info,
                           elem_id=f"{prefix}-height")
        aspect = gr.Dropdown(list(ASPECT_RATIOS), value=None, label="Aspect", elem_id=f"{prefix}-aspect")
    if offer_resize_mode and resizes_inputs(tool):
        controls["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=DEFAULT_RESIZE_MODE, label="Resize mode",
                                           elem_id=f"{prefix}-resize-mode",
                                           info="An input image of another size than the output: crop and resize "
                                                "keeps its proportions and cuts the overflow; just resize stretches; "
                                                "resize and fill fits it and stretches its edges into the rest.")
    controls.update({"model": model, "prompt": prompt, "styles": styles, "seed": seed, "random_seed": random_seed,
                     "variation_seed": variation_seed, "variation_strength": variation_strength,
                     "batch_count": batch_count, "steps": steps, "guidance": guidance, "width": width,
                     "height": height})
    with gr.Accordion("LoRAs, quantization and memory", open=False, elem_id=f"{prefix}-loras"):
        # the library as it is now: files added (or extracted in the Models tab) since the page was built
        lora_refresh = gr.Button("↻ rescan", elem_id=f"{prefix}-lora-refresh", size="sm", render=False)
        for i in range(1, MAX_LORAS + 1):
            with gr.Row():
                controls[f"lora_{i}"] = gr.Dropdown(lora_choices(studio), value=NO_LORA, label=f"LoRA {i}",
                                                    elem_id=f"{prefix}-lora-{i}", scale=3,
                                                    buttons=[lora_refresh] if i == 1 else None)
                controls[f"lora_scale_{i}"] = gr.Slider(-MAX_LORA_SCALE, MAX_LORA_SCALE, 1.0, step=0.05, label="Scale",
                                                        elem_id=f"{prefix}-lora-scale-{i}", scale=2)
                # a text box: a number field shows (and sends) 0 when empty, which would turn the part off
                controls[f"lora_te_scale_{i}"] = gr.Textbox("", label="Text encoders", placeholder="the scale",
                                                            scale=1, info="empty: the scale",
                                                            elem_id=f"{prefix}-lora-te-{i}")
            lora_info_line(studio, controls[f"lora_{i}"], controls[f"lora_scale_{i}"], f"{prefix}-lora-info-{i}")
        module_refresh = gr.Button("↻ rescan", elem_id=f"{prefix}-modules-refresh", size="sm", render=False)
        controls["modules"] = gr.Dropdown(
            module_choices(studio), value=[], multiselect=True, label="VAE / Text Encoder",
            elem_id=f"{prefix}-modules", buttons=[module_refresh],
            info="As Forge's: ae, clip_l or t5xxl files of the models folder, each used instead of the model's own of "
                 "its kind. None: the model's own (for a lone transformer file, the largest of each kind in the models "
                 "folder). An FP8 file stays FP8 once loaded: half the memory of FP16.")
        controls["quantize"] = gr.Radio(QUANTIZE_CHOICES, value=QUANTIZE_OFF, label="Quantize (bits)",
                                        elem_id=f"{prefix}-quantize")
        controls["vae_tiling"] = gr.Checkbox(False, label="VAE tiling", elem_id=f"{prefix}-vae-tiling",
                                             info="Decode and encode in tiles to save memory (colours may shift "
                                                  "slightly). Sizes beyond the memory budget are tiled anyway.")

    aspect.input(lambda ratio, w, h: aspect_size(ratio, w, h) if ratio else (gr.skip(), gr.skip()),
                 [aspect, width, height], [width, height], queue=False, api_visibility="private")
    for box in (width, height):
        box.blur(snap_to_16, box, box, queue=False, api_visibility="private")
    if not image_sized:
        model.input(lambda name: (native_side_of(studio.manager.list_models(), name),) * 2, model, [width, height],
                    queue=False, api_visibility="private")
    model_refresh.click(lambda: gr.Dropdown(choices=model_choices(studio.manager.list_models(), tool)),
                        outputs=model, queue=False, api_visibility="private")
    pickers = [controls[f"lora_{i}"] for i in range(1, MAX_LORAS + 1)]
    lora_refresh.click(lambda: [gr.Dropdown(choices=lora_choices(studio))] * len(pickers), outputs=pickers,
                       queue=False, api_visibility="private")
    module_refresh.click(lambda: gr.Dropdown(choices=module_choices(studio)), outputs=controls["modules"],
                         queue=False, api_visibility="private")
    styles_refresh.click(lambda: gr.Dropdown(choices=style_names(studio)), outputs=styles, queue=False,
                         api_visibility="private")
    return SharedControls(controls=controls, model_refresh=model_refresh)


def module_choices(studio) -> list[str]:
    """The VAE and text encoder files of the models folder, by their place there."""
    return list(module_files(studio.manager.models_dir))


def style_names(studio) -> list[str]:
    """The styles folder's style names; none while a file there cannot be read (a run names the problem)."""
    try:
        return sorted(read_styles(studio.folders.styles))
    except InvalidRequest:
        return []
