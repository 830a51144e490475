"""The Generate panel's image-to-image batch (A1111's img2img "Batch"): several input images, each run with the
panel's settings and one seed for all, as one job (mflux_core.image_batch); optionally each image's own prompt
and settings from its PNG info."""

from pathlib import Path

import gradio as gr

from mflux_core.errors import InvalidRequest
from mflux_core.image_batch import batch_requests
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import PNG_INFO_FIELDS
from webui.requests import RequestContext, prompt_styler_of

PNG_INFO_HELP = ("The image's prompts are added after the prompts above; an image without PNG info (a photo, a "
                 "video frame) runs with the settings above.")


def image_batch_controls(prefix: str) -> tuple[gr.File, gr.CheckboxGroup]:
    """The batch's uploads and its PNG info choice (call inside the panel's layout)."""
    images = gr.File(label="Batch: several input images (each one run with these settings, one seed for all)",
                     file_count="multiple", file_types=["image"], type="filepath", elem_id=f"{prefix}-batch-images")
    png_info = gr.CheckboxGroup(list(PNG_INFO_FIELDS), value=[], label="Take from each batch image's PNG info",
                                info=PNG_INFO_HELP, elem_id=f"{prefix}-batch-png-info")
    return images, png_info


def image_batch_requests(base: GenerationRequest, settings: dict, uploads: list[str], png_info: list[str],
                         context: RequestContext) -> list[GenerationRequest]:
    """Every image's requests over `base` (the panel's first request, its seed drawn once when random), in the
    order of the files' names; each upload is read, checked and kept in the inputs folder before any runs."""
    uploads = sorted(uploads, key=lambda upload: Path(upload).name)
    images = [(Path(upload).name, Path(upload), context.inputs.save(upload, "img2img")) for upload in uploads]
    requests = batch_requests(base.with_(prompt=settings.get("prompt", "")), images, tuple(png_info or ()),
                              [base.seed], settings.get("batch_count", 1), context.wildcards,
                              prompt_styler_of(settings, context))
    return [request for _, request in requests]


def refuse_mixed_inputs(values: dict) -> None:
    """A batch replaces the one input image and the prompt list: asking for two of them is refused, not guessed."""
    if values.get("init_image") is not None:
        raise InvalidRequest("Give one input image or a batch of images, not both: clear the one you do not want.")
    if (values.get("prompt_lines") or "").strip():
        raise InvalidRequest("A batch of images runs the prompt above on each image: clear the prompt list, or the "
                             "batch.")
