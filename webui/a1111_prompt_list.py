"""A1111's "Prompts from file or textbox" script through its API: txt2img and img2img with that `script_name` and
its `script_args` [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt] (before A1111 added
prompt_position: the two boxes and prompt_txt), run as the studio's prompt list (mflux_core/prompt_lines.py): a line
is a prompt, or its settings (--prompt "a cat" --steps 4, or a JSON object), every line checked before the first
runs.

As A1111 does: a line's prompt goes before the request's ("start", its default) or after it ("end"), and so does its
negative prompt; "Iterate seed every line" moves the seed on by the request's images after each line, "Use same
random seed for all lines" keeps one; with neither, a request with a random seed draws one per line.
"""

import random
from collections.abc import Callable

from mflux_core.prompt_lines import PROMPT_POSITIONS, line_requests, read_prompt_lines, seeded_lines
from mflux_core.request import MAX_SEED, GenerationRequest
from mflux_core.xyz import MAX_CELLS
from webui.a1111_wire import SdApiError

PROMPTS_FROM_FILE = "prompts from file or textbox"  # as /sdapi/v1/scripts lists it
MAX_ANSWERED = MAX_CELLS  # images one answer holds, all in memory until it is sent: an X/Y/Z plot's limit


def is_prompts_from_file(script_name: str | None) -> bool:
    return (script_name or "").strip().lower() == PROMPTS_FROM_FILE


def script_arguments(args: list) -> tuple[bool, bool, str, str]:
    """(iterate the seed every line, one seed for all lines, where a line's prompt goes, the lines)."""
    older = len(args) == 3  # no prompt_position yet
    position = "start" if older or len(args) < 3 or args[2] is None else args[2]
    text = args[2 if older else 3] if len(args) > (2 if older else 3) else None
    if position not in PROMPT_POSITIONS:
        raise SdApiError(422, f"Prompts from file's prompt_position (script_args[2]) is 'start' or 'end', not "
                              f"{str(position)[:40]!r}.", kind="RequestValidationError")
    if not isinstance(text, str):
        raise SdApiError(422, f"Prompts from file's prompt_txt (script_args[{2 if older else 3}]) must be the lines "
                              "as one text.", kind="RequestValidationError")
    return bool(args[0]) if args else False, bool(args[1]) if len(args) > 1 else False, position, text


def prompt_list_requests(base: GenerationRequest, random_seed: bool, images: int, args: list, wildcards,
                         styled: Callable[[GenerationRequest], GenerationRequest],
                         ignored: list[str]) -> list[GenerationRequest]:
    """Every line's validated requests over `base` (the call's first request, unstyled), `images` per
    line unless the line says otherwise, `styled` (the request's styles merged) once its prompts are put together;
    `random_seed`: the call asked for seed -1. What a line sets that the studio leaves out goes into `ignored`."""
    iterate, same_seed, position, text = script_arguments(args)
    drawn = (lambda: random.randrange(MAX_SEED + 1)) if random_seed else None
    lines = seeded_lines(read_prompt_lines(text), base.seed, images, iterate, same_seed, drawn)
    ignored += [f"script_args line {line.number}: {item}" for line in lines for item in line.ignored]
    requests = [request for _, request in line_requests(base, lines, [base.seed], images, wildcards, styled,
                                                        position=position)]
    if len(requests) > MAX_ANSWERED:
        raise SdApiError(400, f"The prompt list asks for {len(requests):,} images; one answer holds at most "
                              f"{MAX_ANSWERED}: send its lines over several requests.")
    return requests
