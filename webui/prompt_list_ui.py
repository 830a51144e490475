"""The Generate panel's "Prompts from file or textbox" section (A1111's script): a list of prompts, or of each
line's settings, run as one job (mflux_core.prompt_lines), with the panel's settings for what a line leaves out."""

from pathlib import Path

import gradio as gr

from mflux_core.prompt_lines import line_requests, read_prompt_file, read_prompt_lines
from mflux_core.request import GenerationRequest
from webui.jobs import message_markdown, safe_action
from webui.requests import RequestContext, prompt_styler_of, typed_base, with_tagged_loras

LINES_HELP = ('One prompt per line, or its settings: --prompt "a cat" --seed 5 --steps 4, or {"prompt": "a cat", '
              '"seed": 5}. The settings above fill in what a line leaves out. Empty: the prompt above.')


def prompt_list_controls(prefix: str) -> gr.Textbox:
    """The section (call inside the panel's layout); returns the textbox, which an uploaded file fills."""
    with gr.Accordion("Prompts from file or textbox", open=False, elem_id=f"{prefix}-prompt-list"):
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
    return lines


def prompt_list_requests(base: GenerationRequest, settings: dict, text: str,
                         context: RequestContext) -> list[GenerationRequest]:
    """Every line's requests over `base` (the panel's first request, its seed drawn once when random), each validated
    before any runs; a line without a seed runs the panel's, with as many images as the panel asks; a line's
    `<lora:...>` tags are LoRAs of the library."""
    requests = line_requests(typed_base(base, settings), read_prompt_lines(text), [base.seed],
                             settings.get("batch_count", 1), context.wildcards, prompt_styler_of(settings, context))
    return [with_tagged_loras(request, context).validated() for _, request in requests]
