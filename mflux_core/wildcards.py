"""Wildcards in prompts, as A1111's Dynamic Prompts writes them: `{red|green|blue}` picks one alternative,
`__colour__` one line of `colour.txt` in the wildcards folder (`__animals/cats__` for a subfolder).

Choices are drawn from the image's seed, so a seed replays the same prompt; the request records the
prompt as drawn. A chosen line may hold wildcards itself. Braces without a `|` are left as they are.
"""

import random
import re
from pathlib import Path

from mflux_core.errors import InvalidRequest

ALTERNATIVES = re.compile(r"\{([^{}]*\|[^{}]*)\}")  # an innermost {a|b|...}
WILDCARD = re.compile(r"__([\w\-/ ]+?)__")
MAX_DEPTH = 10  # nested expansions before a wildcard is taken to include itself
MAX_FILE_BYTES = 1_000_000


def has_wildcards(prompt: str) -> bool:
    return bool(ALTERNATIVES.search(prompt) or WILDCARD.search(prompt))


def wildcard_lines(folder: Path | None, name: str) -> list[str]:
    """The choices of `__name__`: the non-empty lines of `<folder>/<name>.txt` that are not # comments."""
    if folder is None:
        raise InvalidRequest(f"The prompt uses the wildcard __{name}__ but no wildcards folder is set.")
    root = Path(folder).resolve()
    path = (root / f"{name}.txt").resolve()
    if not path.is_relative_to(root):
        raise InvalidRequest(f"The wildcard __{name}__ names a file outside the wildcards folder.")
    if not path.is_file():
        raise InvalidRequest(f"The wildcard __{name}__ has no file {name}.txt in the wildcards folder {root}.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InvalidRequest(f"The wildcard file {name}.txt is larger than {MAX_FILE_BYTES:,} bytes.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidRequest(f"Cannot read the wildcard file {name}.txt ({error}).") from None
    lines = [line.strip() for line in text.splitlines()]
    choices = [line for line in lines if line and not line.startswith("#")]
    if not choices:
        raise InvalidRequest(f"The wildcard file {name}.txt has no lines to choose from.")
    return choices


def expand_prompt(prompt: str, seed: int, folder: Path | None = None) -> str:
    """The prompt with every wildcard replaced by a choice drawn from `seed` (unchanged without wildcards)."""
    if not has_wildcards(prompt):
        return prompt
    rng = random.Random(seed)
    for _ in range(MAX_DEPTH):
        if not has_wildcards(prompt):
            return prompt
        prompt = ALTERNATIVES.sub(lambda match: rng.choice(match.group(1).split("|")), prompt)
        prompt = WILDCARD.sub(lambda match: rng.choice(wildcard_lines(folder, match.group(1).strip())), prompt)
    raise InvalidRequest(f"The prompt's wildcards still expand after {MAX_DEPTH} rounds: does a wildcard file "
                         "name itself?")
