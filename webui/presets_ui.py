"""Per-panel presets row: load / save / delete, export and import JSON, restore settings from a dropped PNG.

User presets are files in the studio's user presets folder (default `<outputs>/presets`); shipped
ones come from the project's `presets/` folder and cannot be deleted. Everything read from a
file is validated by mflux_core.presets before it reaches a control.
"""

from pathlib import Path

import gradio as gr

from mflux_core.app_metadata import is_mflux_metadata, read_mflux_metadata
from mflux_core.presets import (
    MAX_PRESET_BYTES, Preset, PresetError, delete_preset, found_settings, list_presets, read_preset_file, save_preset,
    settings_from_png,
)
from mflux_core.settings_schema import HIRES_UPSCALERS
from mflux_core.upscaler_files import has_upscaler, missing_upscaler_note
from mflux_core.weights.module_files import listed_name
from webui.jobs import safe_action, message_markdown
from webui.widgets import MAX_LORAS, NO_LORA

USER, SHIPPED = "user", "shipped"


def panel_presets(studio, panel) -> list[Preset]:
    presets, _ = list_presets([(studio.folders.shipped_presets, SHIPPED), (studio.folders.user_presets, USER)])
    return [p for p in presets if p.tool in panel.tools]


def preset_key(preset: Preset) -> str:
    return f"{preset.source}:{preset.name}"


def preset_choices(studio, panel) -> list[tuple[str, str]]:
    return [(p.label, preset_key(p)) for p in panel_presets(studio, panel)]


def find_preset(studio, panel, key: str | None) -> Preset:
    for preset in panel_presets(studio, panel):
        if preset_key(preset) == key:
            return preset
    raise PresetError("Choose a preset first.")


def apply_settings(studio, panel, settings: dict) -> tuple[dict, list[str]]:
    """Control updates for the panel from validated settings, and notes on what could not be applied."""
    values = panel.values_from_settings(settings)
    notes = []
    tool = settings.get("tool")
    if tool and tool not in panel.tools:
        notes.append(f"These settings were made for the {tool} tool; the ones this panel has were applied.")
    model = values.get("model")
    if model is None:
        values.pop("model", None)
    elif model not in studio.model_names():
        notes.append(f"The model {model!r} is not known here, so the model was left unchanged.")
        del values["model"]
    if values.get("modules"):
        listed = [listed_name(name, studio.manager.models_dir) for name in values["modules"]]
        notes += [f"The VAE / text encoder file {name!r} is not in the models folder; it was left out."
                  for name, found in zip(values["modules"], listed) if found is None]
        values["modules"] = [found for found in listed if found is not None]
    upscaler = values.get("hires_upscaler")
    if upscaler and not has_upscaler(upscaler, studio.manager.models_dir):
        notes.append(missing_upscaler_note(upscaler))
        values["hires_upscaler"] = HIRES_UPSCALERS[0]
    library = studio.lora_library()
    for i in range(1, MAX_LORAS + 1):
        name = values.get(f"lora_{i}")
        if name and name not in library:
            notes.append(f"The LoRA {name!r} is not in the LoRA library; it was left out.")
            values[f"lora_{i}"] = NO_LORA
    return {panel.controls[k]: v for k, v in values.items() if k in panel.controls}, notes


KEPT_ON_RESTORE = ("model", "prompt", "seed")  # an image that does not state one leaves the panel's as it is


def unstated_defaults(panel) -> dict:
    """The panel's own defaults, for what an image's settings do not state: as A1111's paste, a restored image runs
    without the negative prompt, true CFG, sampler, LoRAs... of the settings before it."""
    initial = panel.settings_from_values({key: control.value for key, control in panel.controls.items()})
    return {key: value for key, value in initial.items() if key not in KEPT_ON_RESTORE}


def render_presets(studio, panel) -> None:
    """The presets accordion of a panel (call inside the panel's layout)."""
    prefix = panel.tab_id
    with gr.Accordion("Presets and restore", open=False, elem_id=f"{prefix}-presets"):
        with gr.Row():
            chosen = gr.Dropdown(preset_choices(studio, panel), value=None, label="Preset",
                                 elem_id=f"{prefix}-preset-choice", scale=3)
            load = gr.Button("Load", elem_id=f"{prefix}-preset-load", scale=1, min_width=60)
            delete = gr.Button("Delete", elem_id=f"{prefix}-preset-delete", scale=1, min_width=60)
        with gr.Row():
            name = gr.Textbox(label="Save current settings as", elem_id=f"{prefix}-preset-name", scale=3)
            save = gr.Button("Save", elem_id=f"{prefix}-preset-save", scale=1, min_width=60)
            export = gr.Button("Export JSON", elem_id=f"{prefix}-preset-export", scale=1, min_width=60)
        with gr.Row():
            exported = gr.File(label="Exported preset", interactive=False, elem_id=f"{prefix}-preset-exported")
            imported = gr.File(label="Import a preset (.json)", file_types=[".json"], type="filepath",
                               elem_id=f"{prefix}-preset-import")
            png = gr.File(label="Drop an image (PNG, JPEG, WebP) to restore its settings",
                          file_types=[".png", ".jpg", ".jpeg", ".webp"], type="filepath",
                          elem_id=f"{prefix}-restore-png")
        message = gr.Markdown("", elem_id=f"{prefix}-preset-message")

    controls = panel.controls
    refreshed = lambda: gr.Dropdown(choices=preset_choices(studio, panel))  # noqa: E731

    def applied(settings: dict, what: str) -> dict:
        updates, notes = apply_settings(studio, panel, settings)
        return {**updates, message: " ".join([f"{what}."] + notes)}

    def load_preset(key):
        preset = find_preset(studio, panel, key)
        return applied(preset.settings, f"Loaded the preset {preset.name!r}")

    def save_current(preset_name, **values):
        preset = Preset(name=preset_name or "", settings=panel.settings_from_values(values))
        path = save_preset(studio.folders.user_presets, preset)
        return {chosen: gr.Dropdown(choices=preset_choices(studio, panel), value=preset_key(read_preset_file(path))),
                message: f"Saved the preset {preset.name!r} to {path}."}

    def delete_chosen(key):
        preset = find_preset(studio, panel, key)
        if preset.source != USER:
            raise PresetError(f"{preset.name!r} is a shipped preset; only your own presets can be deleted.")
        delete_preset(studio.folders.user_presets, preset.name)
        return {chosen: gr.Dropdown(choices=preset_choices(studio, panel), value=None),
                message: f"Deleted the preset {preset.name!r}."}

    def export_current(preset_name, **values):
        preset = Preset(name=preset_name or f"{panel.tab_id} settings", settings=panel.settings_from_values(values))
        path = save_preset(studio.folders.exports, preset)
        return {exported: str(path), message: f"Exported to {path.name}: download it below."}

    def import_file(path):
        if not path:
            return {}
        text = Path(path).read_text(encoding="utf-8", errors="replace")[:MAX_PRESET_BYTES]
        if is_mflux_metadata(text):  # mflux's --metadata JSON: restored as its image would be
            settings = found_settings(read_mflux_metadata, text, "mflux settings")
            return {**applied({**unstated_defaults(panel), **settings}, "Restored the settings of mflux's metadata"),
                    imported: None}
        preset = read_preset_file(path, USER)
        saved = save_preset(studio.folders.user_presets, preset)
        updates = applied(preset.settings, f"Imported and saved the preset {preset.name!r}")
        return {**updates, imported: None, chosen: gr.Dropdown(choices=preset_choices(studio, panel),
                                                               value=preset_key(read_preset_file(saved)))}

    def restore_png(path):
        if not path:
            return {}
        stated = settings_from_png(path)
        return {**applied({**unstated_defaults(panel), **stated}, "Restored the settings stored in the image"),
                png: None}

    every = [chosen, message, exported, imported, png, *controls.values()]
    private = {"outputs": every, "api_visibility": "private", "show_progress": "hidden"}

    def action(run):
        return safe_action(message, run, message_markdown)

    load.click(action(load_preset), chosen, **private)
    delete.click(action(delete_chosen), chosen, **private)
    save.click(action(save_current), [name], inputs_kwargs=controls, **private)
    export.click(action(export_current), [name], inputs_kwargs=controls, **private)
    imported.upload(action(import_file), imported, **private)
    png.upload(action(restore_png), png, **private)
    chosen.focus(refreshed, outputs=chosen, queue=False, api_visibility="private")
