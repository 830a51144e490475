"""A1111's prompt editing and alternation: which prompt each denoise step sees.

    [from:to:when]   `from` up to step `when`, then `to` (`when` with a decimal point: a fraction of the steps)
    [to:when]        nothing, then `to`;   [from::when]: `from`, then nothing
    [a|b|c]          a, b, c, a, ... one per step

They nest, and may sit inside parentheses (A1111's emphasis, which stays in the text as typed, as do `[word]`,
backslash escapes, stray brackets and colons, and a bracket whose step is not a number). The steps follow A1111's
prompt_parser (get_learned_conditioning_prompt_schedules): a switch "at step when" keeps the first prompt through
the step of index `when` (0-based).

A hand-written reader: A1111 uses a lark grammar; this is the same grammar in a few dozen lines, without a parser
library the rest of the studio does not need.
"""

import re
from dataclasses import dataclass

_NUMBER = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*$")
MAX_DEPTH = 64  # brackets nested deeper are text (no one writes them; the reader recurses once a level)


@dataclass(frozen=True)
class _Scheduled:
    before: tuple
    after: tuple
    when: str  # as typed: "0.5" (a fraction of the steps) or "10" (a step)


@dataclass(frozen=True)
class _Alternate:
    options: tuple


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step index, text), ...]: step i (0-based) sees the text of the first entry with i <= its index; the
    last entry's index is `steps`. Consecutive equal texts are merged; a prompt without editing is [(steps, prompt)]."""
    nodes = _edits(prompt)
    if nodes is None:
        return [(steps, prompt)]
    schedule: list[tuple[int, str]] = []
    for step in sorted(_switch_steps(nodes, steps) | {steps}):
        text = _render(nodes, step, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (step, text)
        else:
            schedule.append((step, text))
    return schedule


def for_the_second_pass(prompt: str, first_steps: int) -> str:
    """The prompt a hires fix's second pass schedules over its own steps, as A1111 counts edits across both passes:
    a step number counts on from the first pass's steps and a fraction from 1.0 (after 10 first steps, [a:b:15] and
    [a:b:1.5] switch halfway through a 10-step second pass); an edit that switched within the first pass is its
    "to" text; alternations are kept as typed, for the second pass's own steps."""
    nodes = _edits(prompt)
    return prompt if nodes is None else _second_pass(nodes, first_steps)


def _second_pass(nodes, first_steps: int) -> str:
    pieces = []
    for node in nodes:
        if isinstance(node, _Scheduled):
            after = _second_pass(node.after, first_steps)
            when = _when_in_the_second_pass(node.when, first_steps)
            pieces.append(after if when is None else f"[{_second_pass(node.before, first_steps)}:{after}:{when}]")
        elif isinstance(node, _Alternate):
            pieces.append("[" + "|".join(_second_pass(option, first_steps) for option in node.options) + "]")
        else:
            pieces.append(node)
    return "".join(pieces)


def _when_in_the_second_pass(when: str, first_steps: int) -> str | None:
    """An edit's `when` counted from the second pass's start (A1111's offsets: the first pass's steps, or 1.0 for a
    fraction); None when it switched within the first pass."""
    if "." in when:
        rest = float(when) - 1.0
        return f"{rest:.17f}".rstrip("0") if rest > 0 else None  # keeps its decimal point: still a fraction
    rest = int(when) - first_steps
    return str(rest) if rest > 0 else None


def prompt_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text step `step` (0-based) sees."""
    return next((text for last, text in schedule if step <= last), schedule[-1][1])


# ----- reading --------------------------------------------------------------------------------


def _edits(prompt: str) -> list | None:
    """The prompt read into text and edits; None when it has no edit (it is used as typed)."""
    nodes, _ = _sequence(prompt, 0, "")
    return None if all(isinstance(node, str) for node in _walk(nodes)) else nodes


def _sequence(text: str, i: int, stops: str, depth: int = 0) -> tuple[list, int]:
    """Nodes from text[i:] up to (not including) an unbracketed character of `stops`, and where it stopped. Stray
    closing brackets, bars and colons are text (A1111's grammar keeps them: "smiley :)")."""
    nodes: list = []
    while i < len(text) and text[i] not in stops:
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nodes.append(text[i:i + 2])
            i += 2
        elif char in "[(" and depth >= MAX_DEPTH:
            nodes.append(char)
            i += 1
        elif char == "[":
            node, i = _bracket(text, i + 1, depth + 1)
            nodes.extend(node)
        elif char == "(":
            inner, i = _sequence(text, i + 1, ")", depth + 1)
            closed = i < len(text)
            nodes.extend(["(", *inner, *([")"] if closed else [])])
            i += closed
        else:
            nodes.append(char)
            i += 1
    return _joined(nodes), i


def _joined(nodes: list) -> list:
    """Runs of text as one string each."""
    joined: list = []
    for node in nodes:
        if isinstance(node, str) and joined and isinstance(joined[-1], str):
            joined[-1] += node
        else:
            joined.append(node)
    return joined


def _bracket(text: str, i: int, depth: int) -> tuple[list, int]:
    """What follows an opening '[' (as nodes) and where it ends: a schedule, an alternation, or text as typed
    (A1111's [word] emphasis, an unclosed bracket, a schedule whose step is not a number)."""
    parts, separators = [], []
    while True:
        part, i = _sequence(text, i, ":|]", depth)
        parts.append(part)
        if i >= len(text) or text[i] == "]":
            break
        separators.append(text[i])
        i += 1
    closed = i < len(text)
    end = i + closed
    if closed and separators and set(separators) == {"|"}:
        return [_Alternate(tuple(tuple(part) for part in parts))], end
    last = parts[-1]
    when = _NUMBER.match(last[0]) if len(last) == 1 and isinstance(last[0], str) else None
    if closed and set(separators) == {":"} and len(parts) in (2, 3) and when:
        before, after = ((), tuple(parts[0])) if len(parts) == 2 else (tuple(parts[0]), tuple(parts[1]))
        return [_Scheduled(before, after, when.group(1))], end
    typed = ["["]
    for part, separator in zip(parts, [*separators, "]" if closed else ""]):
        typed.extend([*part, separator])
    return _joined(typed), end


# ----- steps ----------------------------------------------------------------------------------


def _walk(nodes):
    for node in nodes:
        yield node
        if isinstance(node, _Scheduled):
            yield from _walk(node.before)
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)


def _switch_step(when: str, steps: int) -> int:
    value = float(when) * steps if "." in when else float(when)
    return min(steps, int(value))


def _switch_steps(nodes, steps: int) -> set[int]:
    found = set()
    for node in _walk(nodes):
        if isinstance(node, _Scheduled) and _switch_step(node.when, steps) >= 1:
            found.add(_switch_step(node.when, steps))
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
    return found


def _render(nodes, step: int, steps: int) -> str:
    pieces = []
    for node in nodes:
        if isinstance(node, _Scheduled):
            pieces.append(_render(node.before if step <= _switch_step(node.when, steps) else node.after, step, steps))
        elif isinstance(node, _Alternate):
            pieces.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
        else:
            pieces.append(node)
    return "".join(pieces)
