"""A1111's LoRA prompt tags, `<lora:name:scale>`: written into a PNG's `parameters` text for each LoRA,
read back from one, and taken from a prompt as its LoRAs (every surface: A1111 clients and users write them).

A1111 spells them `<lora:name>`, `<lora:name:te>`, `<lora:name:te:unet>` or with named values
`<lora:name:unet=0.8:te=0.5>`: `te` scales the LoRA's text-encoder part, `unet` (default: `te`) the rest, the
transformer here. The LyCORIS extension's `<lyco:...>` reads the same.
"""

import math
import re
from pathlib import Path
from typing import NamedTuple, Sequence

LORA_TAG = re.compile(r"<(?:lora|lyco):([^:<>]+)((?::[^:<>]*)*)>")
UNTAGGABLE = re.compile(r"[:<>\n]")


def lora_library_name(path: str) -> str:
    """What a LoRA is called in the library: a .safetensors path by its file name, anything else as typed."""
    return Path(path).stem if path.endswith(".safetensors") else path


def lora_tags(paths: Sequence[str], scales: Sequence[float], text_encoder_scales: Sequence[float] = ()) -> str:
    """' <lora:watercolor:0.8> <lora:ink:0.5:1>' for these LoRAs (scales default to 1, text-encoder scales to the
    scales; a different one written first, as A1111's te), '' for none."""
    names = [lora_library_name(path) for path in paths]
    scales = scales or [1.0] * len(names)
    tags = []
    for name, scale, text_encoder in zip(names, scales, text_encoder_scales or scales):
        if not UNTAGGABLE.search(name):
            tags.append(f" <lora:{name}:{scale:g}>" if text_encoder == scale else
                        f" <lora:{name}:{text_encoder:g}:{scale:g}>")
    return "".join(tags)


def tagged_prompt(request) -> str:
    """A request's prompt as A1111 writes it (its infotext, `all_prompts`): followed by a tag for each LoRA."""
    return f"{request.prompt}{lora_tags(request.lora_paths, request.lora_scales, request.lora_text_encoder_scales)}"


class LoraUse(NamedTuple):
    """One LoRA as a tag (or a tool) asks for it."""

    name: str
    scale: float  # A1111's unet multiplier: the transformer's
    text_encoder_scale: float  # A1111's te multiplier


def tag_number(text: str | None, default: float) -> float:
    """A tag's number; `default` when there is none, 1 when it is not a finite number."""
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        return 1.0
    return value if math.isfinite(value) else 1.0


def tagged_lora(name: str, values: list[str]) -> LoraUse:
    """A1111's reading of a tag's values: positional te then unet (default: te), or named te= / unet=."""
    positional = [value for value in values if "=" not in value]
    named = dict(value.split("=", 1) for value in values if "=" in value)
    text_encoder = tag_number(named.get("te"), tag_number(positional[0] if positional else None, 1.0))
    unet = tag_number(named.get("unet"), tag_number(positional[1] if len(positional) > 1 else None, text_encoder))
    return LoraUse(name.strip(), unet, text_encoder)


def take_lora_tags(prompt: str) -> tuple[str, list[LoraUse]]:
    """(the prompt without its LoRA tags, its tagged LoRAs in order)."""
    found = [tagged_lora(match.group(1), [value.strip() for value in match.group(2).split(":")[1:]])
             for match in LORA_TAG.finditer(prompt)]
    untagged = re.sub(r"[ \t]+(?=[,.;]|$)", "", re.sub(r"[ \t]{2,}", " ", LORA_TAG.sub("", prompt)), flags=re.M)
    return untagged.strip(), found


def with_loras_added(request, added: Sequence[LoraUse]):
    """The request with `added` after the LoRAs it has; text-encoder scales kept aligned (listed only when one
    differs from its LoRA's scale)."""
    scales = list(request.lora_scales) or [1.0] * len(request.lora_paths)
    text_encoder = list(request.lora_text_encoder_scales)
    if text_encoder or any(lora.text_encoder_scale != lora.scale for lora in added):
        text_encoder = (text_encoder or scales) + [lora.text_encoder_scale for lora in added]
    return request.with_(lora_paths=(*request.lora_paths, *(lora.name for lora in added)),
                         lora_scales=(*scales, *(lora.scale for lora in added)),
                         lora_text_encoder_scales=tuple(text_encoder))


def with_prompt_loras(request):
    """The request (a GenerationRequest) with its prompt's LoRA tags taken out and added to its LoRAs by name,
    after those it already has; a prompt without tags leaves it as it is."""
    prompt, tagged = take_lora_tags(request.prompt)
    return with_loras_added(request.with_(prompt=prompt), tagged) if tagged else request
