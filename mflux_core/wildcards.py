"""Wildcards in prompts, as A1111's Dynamic Prompts writes them: `{red|green|blue}` picks one alternative,
`__colour__` one line of `colour.txt` in the wildcards folder (`__animals/cats__` for a subfolder, `__animals/*__`
one line of any file there). Variants take Dynamic Prompts' options: weights (`{0.2::red|2::blue}`), several
distinct choices joined by ", " (`{2$$red|green|blue}`, a count range `{1-3$$...}`, `{-2$$...}`, `{2-$$...}`) or by
a separator of one's own (`{2$$ and $$red|green|blue}`).

Choices are drawn from the image's seed, so a seed replays the same prompt; the request records the
prompt as drawn. A chosen line may hold wildcards itself. Braces without a `|` are left as they are.
"""

import random
import re
from pathlib import Path

from mflux_core.errors import InvalidRequest

ALTERNATIVES = re.compile(r"\{([^{}|]*(?:\|[^{}|]*)+)\}")  # an innermost {a|b|...} (one way to split it: linear)
WILDCARD = re.compile(r"__([\w\-/ *]+?)__")
COUNT = re.compile(r"^\s*(\d*)\s*(-?)\s*(\d*)\s*$")  # a variant's "2", "1-3", "-2" or "2-" before its $$
WEIGHT = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)::(.*)$", re.S)  # an option's "0.5::" before its text
DEFAULT_SEPARATOR = ", "
MAX_DEPTH = 10  # nested expansions before a wildcard is taken to include itself
MAX_FILE_BYTES = 1_000_000


class PromptRefusal(InvalidRequest):
    """A wildcard the prompt cannot use: a refusal about the prompt (an API names its prompt parameter)."""

    def __init__(self, message: str):
        super().__init__(message, setting="prompt")


def has_wildcards(prompt: str) -> bool:
    return bool(ALTERNATIVES.search(prompt) or WILDCARD.search(prompt))


def wildcard_lines(folder: Path | None, name: str) -> list[str]:
    """The choices of `__name__`: the non-empty lines of `<folder>/<name>.txt` that are not # comments (with `*`
    in the name: of every file it matches)."""
    if folder is None:
        raise PromptRefusal(f"The prompt uses the wildcard __{name}__ but no wildcards folder is set.")
    root = Path(folder).resolve()
    if "*" not in name:
        return file_lines(root, name, (root / f"{name}.txt").resolve())
    paths = sorted(root.glob(f"{name}.txt"))
    if not paths:
        raise PromptRefusal(f"The wildcard __{name}__ matches no file in the wildcards folder {root}.")
    return [line for path in paths for line in file_lines(root, path.relative_to(root).with_suffix("").as_posix(),
                                                          path.resolve())]


def file_lines(root: Path, name: str, path: Path) -> list[str]:
    """The choices in one wildcard file, `path` (`name` as the prompt names it), refused outside `root`."""
    if not path.is_relative_to(root):
        raise PromptRefusal(f"The wildcard __{name}__ names a file outside the wildcards folder.")
    if not path.is_file():
        raise PromptRefusal(f"The wildcard __{name}__ has no file {name}.txt in the wildcards folder {root}.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise PromptRefusal(f"The wildcard file {name}.txt is larger than {MAX_FILE_BYTES:,} bytes.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptRefusal(f"Cannot read the wildcard file {name}.txt ({error}).") from None
    lines = [line.strip() for line in text.splitlines()]
    choices = [line for line in lines if line and not line.startswith("#")]
    if not choices:
        raise PromptRefusal(f"The wildcard file {name}.txt has no lines to choose from.")
    return choices


def expand_prompt(prompt: str, seed: int, folder: Path | None = None) -> str:
    """The prompt with every wildcard replaced by a choice drawn from `seed` (unchanged without wildcards)."""
    if not has_wildcards(prompt):
        return prompt
    rng = random.Random(seed)
    for _ in range(MAX_DEPTH):
        if not has_wildcards(prompt):
            return prompt
        prompt = ALTERNATIVES.sub(lambda match: chosen_variants(match.group(1), rng), prompt)
        prompt = WILDCARD.sub(lambda match: rng.choice(wildcard_lines(folder, match.group(1).strip())), prompt)
    raise PromptRefusal(f"The prompt's wildcards still expand after {MAX_DEPTH} rounds: does a wildcard file "
                         "name itself?")


def chosen_variants(body: str, rng: random.Random) -> str:
    """What a variant `{body}` becomes: one option (by weight), or as many distinct ones as its `N$$` asks, joined
    by its separator. A count that is not one is text, as Dynamic Prompts leaves it."""
    spec = _count_spec(body)
    if spec is None and not any(WEIGHT.match(option) for option in body.split("|")):
        return rng.choice(body.split("|"))  # the plain {a|b}: drawn as before weights were read, so seeds replay
    low, high, separator, body = spec or (1, 1, DEFAULT_SEPARATOR, body)
    options = [_weighted(option) for option in body.split("|")]
    most = min(high, len(options))
    count = rng.randint(min(low, most), most)
    picked = []
    while options and len(picked) < count:  # drawn without replacement, each by its weight
        weights = [weight for weight, _ in options]
        index = rng.choices(range(len(options)), weights=weights)[0] if any(weights) else rng.randrange(len(options))
        picked.append(options.pop(index)[1])
    return separator.join(picked)


def _count_spec(body: str) -> tuple[int, int, str, str] | None:
    """(fewest, most, separator, options) of a variant with Dynamic Prompts' `N$$` or `N$$separator$$`; None
    without one."""
    parts = body.split("$$")
    count = COUNT.match(parts[0]) if len(parts) in (2, 3) and parts[0].strip() not in ("", "-") else None
    if count is None:
        return None
    first, dash, last = count.groups()
    low = int(first) if first else 1
    high = int(last) if last else (10**6 if dash else low)
    separator, options = (parts[1], parts[2]) if len(parts) == 3 else (DEFAULT_SEPARATOR, parts[1])
    return min(low, high), max(low, high), separator, options


def _weighted(option: str) -> tuple[float, str]:
    """(weight, text) of a variant's option: Dynamic Prompts' `0.5::text`, else weight 1."""
    match = WEIGHT.match(option)
    return (float(match.group(1)), match.group(2)) if match else (1.0, option)

