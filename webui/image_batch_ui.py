"""A panel's batch of input images (A1111's img2img "Batch": Generate's image-to-image, Fill's inpainting with a
mask per image): each image run with the panel's settings and one seed for all, as one job
(mflux_core.image_batch); optionally each image's own prompt and settings from its PNG info."""

from collections.abc import Callable
from pathlib import Path

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.image_batch import batch_requests
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import PNG_INFO_FIELDS
from mflux_core.styles import request_styler
from webui.requests import RequestContext, typed_base, with_tagged_loras

PNG_INFO_HELP = ("The image's prompts are added after the prompts above; an image without PNG info (a photo, a "
                 "video frame) runs with the settings above.")


def image_batch_controls(prefix: str, what: str, masks: bool = False) -> dict[str, gr.components.Component]:
    """The batch's uploads (with `masks`: their masks too) and its PNG info choice, under the names the panel's
    values use (call inside the panel's layout)."""
    controls = {"batch_images": gr.File(label=f"Batch: several {what} (each one run with these settings, one seed "
                                              "for all)", file_count="multiple", file_types=["image"],
                                        type="filepath", elem_id=f"{prefix}-batch-images")}
    if masks:
        controls["batch_masks"] = gr.File(label="Their masks (white = regenerate): each found by its image's name, or "
                                                "one mask for every image; outpainting needs none",
                                          file_count="multiple", file_types=["image"], type="filepath",
                                          elem_id=f"{prefix}-batch-masks")
    controls["batch_png_info"] = gr.CheckboxGroup(list(PNG_INFO_FIELDS), value=[],
                                                  label="Take from each batch image's PNG info", info=PNG_INFO_HELP,
                                                  elem_id=f"{prefix}-batch-png-info")
    return controls


def image_batch_requests(base: GenerationRequest, settings: dict, uploads: list[str], png_info: list[str],
                         context: RequestContext, inputs_of: Callable[[str], dict]) -> list[GenerationRequest]:
    """Every image's requests over `base` (the panel's first request, its seed drawn once when random), in the
    order of the files' names; `inputs_of(upload)`: its request's input fields, each upload read, checked and kept
    in the inputs folder before any runs; an image's `<lora:...>` tags (its prompt's, its PNG info's) are LoRAs of
    the library."""
    uploads = sorted(uploads, key=lambda upload: Path(upload).name)
    images = [(Path(upload).name, Path(upload), inputs_of(upload)) for upload in uploads]
    requests = batch_requests(typed_base(base, settings), images, tuple(png_info or ()),
                              [base.seed], settings.get("batch_count", 1), context.wildcards,
                              request_styler(settings.get("styles"), context.styles))
    return [with_tagged_loras(request, context).validated() for _, request in requests]


def refuse_mixed_inputs(single: str | None, prompt_lines: str | None = None) -> None:
    """A batch replaces the tab's one input image (`single`: what it is called, when one is given) and its prompt
    list: asking for two of them is refused, not guessed."""
    if single:
        raise InvalidRequest(f"Give {single} or a batch of images, not both: clear the one you do not want.")
    if (prompt_lines or "").strip():
        raise InvalidRequest("A batch of images runs the prompt above on each image: clear the prompt list, or the "
                             "batch.")
