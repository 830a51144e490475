"""A1111's "Prompt matrix" script through its API: txt2img and img2img with that `script_name` and its
`script_args` [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size] over a prompt
`base|part|part...`: every combination of the optional parts, as the studio's prompt matrix lays them out
(mflux_core.xyz.prompt_matrix: the first half of the parts across, the rest down).

As A1111 does: the chosen parts follow the base (before it with put_at_start), joined by ", " (a space with
variations_delimiter "space"); prompt_type "negative" takes the matrix from the negative prompt; different_seeds gives
combination i the seed plus i. The answer is the labelled grid, then every combination's image.
"""

from typing import Callable

from PIL import Image

from mflux_core.request import MAX_SEED, GenerationRequest
from mflux_core.xyz import Axis, Cell, prompt_matrix
from webui.a1111_wire import SdApiError

PROMPT_MATRIX = "prompt matrix"  # as /sdapi/v1/scripts lists it
DELIMITERS = {"comma": ", ", "space": " "}
PROMPT_TYPES = ("positive", "negative")


def is_prompt_matrix(script_name: str | None) -> bool:
    return (script_name or "").strip().lower() == PROMPT_MATRIX


def matrix_arguments(args: list) -> tuple[bool, bool, bool, str]:
    """(put_at_start, different_seeds, the negative prompt's matrix, the delimiter), A1111's defaults for what is
    not sent."""
    named = dict(zip(("put_at_start", "different_seeds", "prompt_type", "variations_delimiter"), args))
    prompt_type = named.get("prompt_type") or "positive"
    delimiter = named.get("variations_delimiter") or "comma"
    if prompt_type not in PROMPT_TYPES:
        raise SdApiError(422, f"Prompt matrix's prompt_type (script_args[2]) is 'positive' or 'negative', not "
                              f"{str(prompt_type)[:40]!r}.", kind="RequestValidationError")
    if delimiter not in DELIMITERS:
        raise SdApiError(422, f"Prompt matrix's variations_delimiter (script_args[3]) is 'comma' or 'space', not "
                              f"{str(delimiter)[:40]!r}.", kind="RequestValidationError")
    return (bool(named.get("put_at_start")), bool(named.get("different_seeds")), prompt_type == "negative",
            DELIMITERS[delimiter])


def matrix_cells(base: GenerationRequest, args: list,
                 finish: Callable[[GenerationRequest], GenerationRequest]) -> tuple[list[Axis], list[Cell]]:
    """The matrix's axes (for the grid's labels) and every combination's validated request (`finish`ed: A1111's
    styles merge after the script), combination i at grid position (its bits for the parts across, those for the
    parts down)."""
    put_at_start, different_seeds, negative, delimiter = matrix_arguments(args)
    first, axes = prompt_matrix(base.negative_prompt if negative else base.prompt)
    across = axes[0].parts
    optional = [part for axis in axes for part in axis.parts]
    cells = []
    for number in range(2 ** len(optional)):
        chosen = [part for bit, part in enumerate(optional) if number >> bit & 1]
        text = delimiter.join([*chosen, first] if put_at_start else [first, *chosen])
        seed = (base.seed + number) % (MAX_SEED + 1) if different_seeds else base.seed
        request = finish(base.with_(**{"negative_prompt" if negative else "prompt": text}, seed=seed)).validated()
        cells.append(Cell(request, (number % 2 ** len(across), number >> len(across), 0)))
    return axes, cells


def matrix_pictures(grids: list[Image.Image], results: list) -> list[tuple[Image.Image, dict]]:
    """(image, PNG text chunks) of the answer: the grid (with the first image's settings, as A1111 gives it), then
    every combination's image; none when no combination finished."""
    if not results:
        return []
    return [(grids[0], results[0].text_chunks), *((result.image, result.text_chunks) for result in results)]
