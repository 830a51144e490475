"""X/Y/Z plot: every combination of up to three axes over text-to-image settings (with the hires fix when it is on:
its upscale, steps and denoising strength are axes too), or image-to-image from an input image (A1111's plot in its
img2img tab: the image strength is an axis then).

Each cell is saved to the history like any result (its metadata restores it); the labelled grids
go to `<outputs>/grids/<date>/`, beside the history. Stop ends the plot after the current step and
grids the cells that finished. "Prompt matrix" makes the axes from the prompt instead (A1111's script:
`a cat|in red|at night`, every combination of the parts after the first, one seed).
"""

from contextlib import closing

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.request import GenerationRequest
from mflux_core.styles import picked_styles, read_styles
from mflux_core.weights.module_files import module_files
from mflux_core.xyz import (
    AXIS_KINDS, MAX_CELLS, NO_LORA, NO_STYLE, OWN_FILES, Axis, parse_axis, plot_cells, plot_grids, prompt_matrix,
    resolve_loras, resolve_styles, values_text,
)
from webui.gallery import save_grids, save_result
from webui.hires_ui import UPSCALER_NOTES, hires_controls, hires_settings, hires_values
from webui.jobs import follow, image_progress, page_job
from webui.panels import Panel, input_image, result_column
from webui.panels.generate import DEFAULT_IMAGE_STRENGTH
from webui.requests import RequestContext, cell_finisher, lora_files, requests_from_settings
from webui.widgets import build_shared_controls, number_value, shared_settings, shared_values

TOOL = "plot"
AXES = ("x", "y", "z")
NO_AXIS = ""
AXIS_CHOICES = [("none", NO_AXIS), *((kind.label, name) for name, kind in AXIS_KINDS.items())]


def settings_from_values(values: dict) -> dict:
    return {"tool": "generate", **shared_settings(values), **hires_settings(values),
            "image_strength": number_value(values, "image_strength", DEFAULT_IMAGE_STRENGTH, "Image strength")}


def values_from_settings(settings: dict) -> dict:
    values = {**shared_values(settings), **hires_values(settings)}
    if settings.get("image_strength") is not None:
        values["image_strength"] = settings["image_strength"]
    return values


def plot_axes(values: dict, base: GenerationRequest, context: RequestContext) -> tuple[GenerationRequest, list[Axis]]:
    """The plot's base request and axes: those chosen (LoRA names looked up in the library), or the prompt matrix's."""
    axes = [parse_axis(values[f"{name}_kind"], values.get(f"{name}_values") or "")
            for name in AXES if values.get(f"{name}_kind")]
    if values.get("prompt_matrix"):
        if axes:
            raise InvalidRequest("A prompt matrix makes its own axes: set the X, Y and Z axes to none.")
        prompt, axes = prompt_matrix(base.prompt, max_cells(values))
        return base.with_(prompt=prompt), axes
    if not axes:
        raise InvalidRequest("Choose at least one axis and type its values.")
    axes = resolve_styles(axes, read_styles(context.styles))
    return base, resolve_loras(axes, lambda name: lora_files([name], context.loras)[0])


def max_cells(values: dict) -> int:
    return max(1, int(number_value(values, "max_cells", MAX_CELLS, "The most cells")))


def plot_requests(values: dict, context: RequestContext) -> tuple[list[Axis], list]:
    """The plot's axes and cells (each validated); the A1111 styles merge into each cell after its axes, as A1111
    merges them after its scripts."""
    settings = settings_from_values(values)
    image = values.get("init_image")
    if image is None:
        settings["image_strength"] = None
    (base,) = requests_from_settings({**settings, "styles": [], "batch_count": 1}, context,
                                     image_path=context.inputs.save(image, "plot-init"))
    base, axes = plot_axes(values, base, context)
    return axes, plot_cells(base, axes, max_cells(values), picked_styles(settings.get("styles"), context.styles),
                            cell_finisher(context, base.seed),
                            tuple(bool(values.get(f"vary_seeds_{name}")) for name in AXES))


def run_plot(studio, view, values: dict, session: str):
    """The Run handler: the cells in turn (progress across all of them), then the grids."""
    saved: list[tuple[str, str]] = []

    def work(cancel):
        axes, cells = plot_requests(values, studio.request_context())
        images, first = {}, None
        try:
            with closing(studio.batch([cell.request for cell in cells], cancel.is_set)) as runs:  # fan-out
                for index, (cell, run) in enumerate(zip(cells, runs), start=1):
                    result = yield from follow(run, cancel, image_progress(view, index, len(cells)))
                    path = save_result(studio.folders.outputs, result)
                    images[cell.position] = result.image
                    first = first or result.text_chunks
                    saved.append((str(path), f"cell {index} of {len(cells)}"))
                    yield {view.preview: str(path)}
        finally:
            saved[:0] = save_grids(studio.folders.outputs, plot_grids(axes, images), first)
        cells_text = f"{len(cells)} cell{'s' if len(cells) != 1 else ''}"
        return f"Done: {cells_text} and their grid saved to {studio.folders.outputs}."

    def final() -> dict:
        grids = [path for path, caption in saved if caption.startswith("grid")]
        return {view.results: saved, **({view.preview: grids[0]} if grids else {})}

    yield from page_job(studio, session, view.status, work, final=final,
                        stopped=lambda stop: f"{stop} The cells that finished are saved, with their grid.")


def library_values(studio):
    """On choosing the LoRA axis, its values become 'none' and every LoRA in the library; on choosing the VAE / Text
    Encoder axis, 'none' and every such file of the models folder; on choosing the Styles axis, 'none' and every
    style of the styles folder: to cut down."""
    def values(kind: str):
        if kind == "lora":
            return values_text([NO_LORA, *sorted(studio.lora_library())])
        if kind == "modules":
            return values_text([OWN_FILES, *module_files(studio.manager.models_dir)])
        if kind == "styles":
            return values_text([NO_STYLE, *read_styles(studio.folders.styles)])
        return gr.update()

    return values


def render(studio) -> Panel:
    with gr.Tab("X/Y/Z plot", id=TOOL, elem_id="tab-plot"):
        with gr.Row():
            with gr.Column(scale=5):
                axis_controls = {}
                for name in AXES:
                    with gr.Row():
                        axis_controls[f"{name}_kind"] = gr.Dropdown(AXIS_CHOICES, value=NO_AXIS,
                                                                    label=f"{name.upper()} axis", scale=1,
                                                                    elem_id=f"plot-{name}-kind")
                        axis_controls[f"{name}_values"] = gr.Textbox(
                            "", label="Values", scale=3, elem_id=f"plot-{name}-values",
                            placeholder="2.5, 3.5 · 1-5 · 0.5-1.0 (+0.25) · 1-10 [4] · Prompt S/R: red, blue · "
                            "Sampler: Euler, DPM++ 2M · LoRA: none, watercolor")
                    axis_controls[f"{name}_kind"].change(library_values(studio), axis_controls[f"{name}_kind"],
                                                         axis_controls[f"{name}_values"], show_progress="hidden",
                                                         api_visibility="private")
                with gr.Row():
                    for name in AXES:
                        axis_controls[f"vary_seeds_{name}"] = gr.Checkbox(
                            False, label=f"Vary seeds for {name.upper()}", elem_id=f"plot-vary-seeds-{name}")
                axis_controls["prompt_matrix"] = gr.Checkbox(
                    False, label="Prompt matrix instead of axes: 'a cat|in red|at night' makes every combination of "
                    "the parts after the first, at one seed", elem_id="plot-prompt-matrix")
                axis_controls["max_cells"] = gr.Number(MAX_CELLS, label="Most cells", precision=0, minimum=1,
                                                       elem_id="plot-max-cells")
                with gr.Accordion("Image to image", open=False, elem_id="plot-img2img"):
                    init_image = input_image("Input image (optional: every cell starts from it)", "plot-init-image")
                    image_strength = gr.Slider(0, 0.99, DEFAULT_IMAGE_STRENGTH, step=0.01,
                                               label="Image strength (how much of the input is kept; also an axis)",
                                               elem_id="plot-image-strength")
                _, hires = hires_controls(TOOL, UPSCALER_NOTES, studio.manager.models_dir)
                shared = build_shared_controls(studio, "generate", TOOL, offer_resize_mode=False)
                panel = Panel(TOOL, (), {**shared.controls, "image_strength": image_strength, **hires},
                              settings_from_values, values_from_settings)
            with gr.Column(scale=4):
                view, run, stop = result_column(TOOL)

    def handler(request: gr.Request, **values):
        yield from run_plot(studio, view, values, request.session_hash if request else "")

    panel.view, panel.run_handler = view, handler
    studio.wire_run(run, handler, {**panel.controls, **axis_controls, "init_image": init_image}, view,
                    api_name="plot")
    studio.wire_stop(stop)
    return panel
