"""A1111's attention syntax: which words of a prompt weigh more.

    (word)        x 1.1 (nested: x 1.1 each)      (word:1.5)  x 1.5 (below 1: less)
    \\( \\)         the characters themselves

as A1111's prompt_parser.parse_prompt_attention reads parentheses (an unclosed one weighs to the end of the prompt;
BREAK, A1111's chunk separator, is dropped: FLUX.1's T5 reads one sequence). Forge reads FLUX.1 prompts the same
way: T5 sees the words without the brackets, its token embeddings multiplied by their weights and rescaled to
the unweighted mean (A1111's "Original" emphasis); CLIP's pooled vector takes the words without the brackets.

Square brackets stay as typed, as ComfyUI keeps them (A1111 reads [word] as x 1/1.1): FLUX.1's In-Context LoRAs mark
their panels with [IMAGE1] / [IMAGE2]; prompt editing's brackets ([a:b:0.5], [a|b]) are resolved before this.
"""

import re

ROUND = 1.1
MAX_WEIGHT = 100.0  # a weight is kept within +-this (hundreds of nested brackets would overflow float32)
_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|:([+-]?[.\d]+)\)|\)|[^\\():]+|:")
_BREAK = re.compile(r"(?<!\s)\s*\bBREAK\b\s*")  # from a run's first space only: linear in long runs


def weighted_chunks(prompt: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] in order, neighbours of equal weight merged; [(prompt, 1.0)] for a plain prompt."""
    chunks: list[list] = []
    rounds: list[int] = []

    def weigh_from(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= factor

    for match in _TOKEN.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\") and len(token) == 2:
            chunks.append([token[1], 1.0])
        elif token == "(":
            rounds.append(len(chunks))
        elif weight is not None and rounds:
            weigh_from(rounds.pop(), _number(weight))
        elif token == ")" and rounds:
            weigh_from(rounds.pop(), ROUND)
        else:
            chunks.append([_BREAK.sub(" ", token), 1.0])
    _weigh_unclosed(chunks, rounds, ROUND)
    merged: list[tuple[str, float]] = []
    for text, weight in ((text, max(-MAX_WEIGHT, min(MAX_WEIGHT, weight))) for text, weight in chunks):
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + text, weight)
        elif text:
            merged.append((text, weight))
    return merged or [("", 1.0)]


def _weigh_unclosed(chunks: list[list], starts: list[int], factor: float) -> None:
    """Each bracket left open weighs from where it opened to the end: in one pass (a prompt may open thousands)."""
    opened = 0
    for index, chunk in enumerate(chunks):
        while opened < len(starts) and starts[opened] <= index:
            opened += 1
        chunk[1] *= factor ** opened


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # a weight that is no number ("1.2.3") weighs as a plain bracket
        return ROUND


def plain_text(chunks: list[tuple[str, float]]) -> str:
    return "".join(text for text, _ in chunks)


def is_weighted(chunks: list[tuple[str, float]]) -> bool:
    return any(weight != 1.0 for _, weight in chunks)
