"""The Generate panel's "Prompts from file or textbox" section (A1111's script): a list of prompts, or of each
line's settings, run as one job (mflux_core.prompt_lines), with the panel's settings for what a line leaves out."""

from pathlib import Path

import gradio as gr

from mflux_core.prompt_lines import PROMPT_POSITIONS, line_requests, read_prompt_file, read_prompt_lines, seeded_lines
from mflux_core.request import GenerationRequest
from mflux_core.styles import request_styler
from webui.jobs import message_markdown, safe_action
from webui.requests import RequestContext, typed_base, with_tagged_loras

LINES_HELP = ('One prompt per line, or its settings: --prompt "a cat" --seed 5 --steps 4, or {"prompt": "a cat", '
              '"seed": 5}. The settings above fill in what a line leaves out; a line\'s prompt and negative prompt go '
              'beside those above, as in A1111 (clear the prompt above to run the lines alone). With a random seed, '
              'each line draws its own unless one of the boxes says otherwise.')


def prompt_list_controls(prefix: str) -> dict[str, gr.components.Component]:
    """The section (call inside the panel's layout) as A1111's script lays it out; returns its inputs by name: the
    lines (which an uploaded file fills), A1111's two seed boxes and where a line's prompt goes."""
    with gr.Accordion("Prompts from file or textbox", open=False, elem_id=f"{prefix}-prompt-list"):
        with gr.Row():
            iterate = gr.Checkbox(False, label="Iterate seed every line", elem_id=f"{prefix}-prompt-iterate-seed")
            same_seed = gr.Checkbox(False, label="Use same random seed for all lines",
                                    elem_id=f"{prefix}-prompt-same-seed")
            position = gr.Radio(list(PROMPT_POSITIONS), value=PROMPT_POSITIONS[0], label="Insert prompts at the",
                                elem_id=f"{prefix}-prompt-position")
        lines = gr.Textbox(label="Prompt list", info=LINES_HELP, lines=4, elem_id=f"{prefix}-prompt-lines")
        upload = gr.File(label="Load a prompt list (.txt or .jsonl)", file_types=[".txt", ".jsonl"], type="filepath",
                         elem_id=f"{prefix}-prompt-list-file")
        message = gr.Markdown("", elem_id=f"{prefix}-prompt-list-message")

    def load(path):
        if not path:
            return {}
        return {lines: read_prompt_file(Path(path)), upload: None, message: ""}

    upload.upload(safe_action(message, load, message_markdown), upload, [lines, upload, message],
                  show_progress="hidden", api_visibility="private")
    return {"prompt_lines": lines, "prompt_iterate_seed": iterate, "prompt_same_seed": same_seed,
            "prompt_position": position}


def prompt_list_requests(base: GenerationRequest, settings: dict, values: dict,
                         context: RequestContext) -> list[GenerationRequest]:
    """Every line's requests over `base` (the panel's first request) from the section's `values`, each validated
    before any runs: a line without a seed of its own runs the panel's (seeded_lines: moved on after each line, or
    one drawn per line when the panel's is random), with as many images as the panel asks; its prompts go beside the
    panel's (start when no position is given), the panel's styles merged in after; a line's `<lora:...>` tags are
    LoRAs of the library."""
    images = settings.get("batch_count", 1)
    lines = seeded_lines(read_prompt_lines(values["prompt_lines"]), base.seed, images,
                         bool(values.get("prompt_iterate_seed")), bool(values.get("prompt_same_seed")),
                         context.draw_seed if settings.get("seed") is None else None)
    requests = line_requests(typed_base(base, settings), lines, [base.seed], images, context.wildcards,
                             request_styler(settings.get("styles"), context.styles),
                             position=values.get("prompt_position") or PROMPT_POSITIONS[0])
    return [with_tagged_loras(request, context).validated() for _, request in requests]
