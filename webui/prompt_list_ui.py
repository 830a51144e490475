"""The Generate panel's "Prompts from file or textbox" section (A1111's script): a list of prompts, or of each
line's settings, run as one job (mflux_core.prompt_lines), with the panel's settings for what a line leaves out."""

from pathlib import Path

import gradio as gr

from mflux_core.prompt_lines import PROMPT_POSITIONS, line_requests, read_prompt_file, read_prompt_lines
from mflux_core.request import GenerationRequest
from mflux_core.styles import request_styler
from webui.jobs import message_markdown, safe_action
from webui.requests import RequestContext, typed_base, with_tagged_loras

LINES_HELP = ('One prompt per line, or its settings: --prompt "a cat" --seed 5 --steps 4, or {"prompt": "a cat", '
              '"seed": 5}. The settings above fill in what a line leaves out; a line\'s prompt and negative prompt go '
              'beside those above, as in A1111 (clear the prompt above to run the lines alone).')


def prompt_list_controls(prefix: str) -> dict[str, gr.components.Component]:
    """The section (call inside the panel's layout); returns its inputs: the textbox, which an uploaded file fills,
    and where a line's prompt goes ("prompt_lines", "prompt_position")."""
    with gr.Accordion("Prompts from file or textbox", open=False, elem_id=f"{prefix}-prompt-list"):
        lines = gr.Textbox(label="Prompt list", info=LINES_HELP, lines=4, elem_id=f"{prefix}-prompt-lines")
        position = gr.Radio(list(PROMPT_POSITIONS), value=PROMPT_POSITIONS[0], label="Insert prompts at the",
                            elem_id=f"{prefix}-prompt-position")
        upload = gr.File(label="Load a prompt list (.txt or .jsonl)", file_types=[".txt", ".jsonl"], type="filepath",
                         elem_id=f"{prefix}-prompt-list-file")
        message = gr.Markdown("", elem_id=f"{prefix}-prompt-list-message")

    def load(path):
        if not path:
            return {}
        return {lines: read_prompt_file(Path(path)), upload: None, message: ""}

    upload.upload(safe_action(message, load, message_markdown), upload, [lines, upload, message],
                  show_progress="hidden", api_visibility="private")
    return {"prompt_lines": lines, "prompt_position": position}


def prompt_list_requests(base: GenerationRequest, settings: dict, text: str, position: str | None,
                         context: RequestContext) -> list[GenerationRequest]:
    """Every line's requests over `base` (the panel's first request, its seed drawn once when random), each validated
    before any runs; a line without a seed runs the panel's, with as many images as the panel asks; its prompts go
    at `position` beside the panel's (start when none is given), the panel's styles merged in after; a line's
    `<lora:...>` tags are LoRAs of the library."""
    requests = line_requests(typed_base(base, settings), read_prompt_lines(text), [base.seed],
                             settings.get("batch_count", 1), context.wildcards,
                             request_styler(settings.get("styles"), context.styles),
                             position=position or PROMPT_POSITIONS[0])
    return [with_tagged_loras(request, context).validated() for _, request in requests]
