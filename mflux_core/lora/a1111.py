"""A1111's LoRA prompt tags, `<lora:name:scale>`: written into a PNG's `parameters` text for each LoRA,
read back from one, and taken from a prompt as its LoRAs (every surface: A1111 clients and users write them).

A1111 spells them `<lora:name>`, `<lora:name:te>` or `<lora:name:te:unet>`; here one scale serves the transformer
and the text encoders alike (diffusers' way), so the unet scale wins when both are given. The LyCORIS extension's
`<lyco:...>` reads the same.
"""

import math
import re
from pathlib import Path
from typing import Sequence

LORA_TAG = re.compile(r"<(?:lora|lyco):([^:<>]+)((?::[^:<>]*)*)>")
UNTAGGABLE = re.compile(r"[:<>\n]")


def lora_library_name(path: str) -> str:
    """What a LoRA is called in the library: a .safetensors path by its file name, anything else as typed."""
    return Path(path).stem if path.endswith(".safetensors") else path


def lora_tags(paths: Sequence[str], scales: Sequence[float]) -> str:
    """' <lora:watercolor:0.8> <lora:ink:1>' for these LoRAs (scales default to 1), '' for none."""
    names = [lora_library_name(path) for path in paths]
    return "".join(f" <lora:{name}:{scale:g}>"
                   for name, scale in zip(names, scales or [1.0] * len(names)) if not UNTAGGABLE.search(name))


def tagged_prompt(request) -> str:
    """A request's prompt as A1111 writes it (its infotext, `all_prompts`): followed by a tag for each LoRA."""
    return f"{request.prompt}{lora_tags(request.lora_paths, request.lora_scales)}"


def take_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """(the prompt without its LoRA tags, [(name, scale)] in order); a scale that is not a finite number reads 1."""
    found = []
    for match in LORA_TAG.finditer(prompt):
        numbers = match.group(2).split(":")[1:3]
        try:
            scale = float(numbers[-1]) if numbers else 1.0
        except ValueError:
            scale = 1.0
        found.append((match.group(1).strip(), scale if math.isfinite(scale) else 1.0))
    untagged = re.sub(r"[ \t]+(?=[,.;]|$)", "", re.sub(r"[ \t]{2,}", " ", LORA_TAG.sub("", prompt)), flags=re.M)
    return untagged.strip(), found


def with_prompt_loras(request):
    """The request (a GenerationRequest) with its prompt's LoRA tags taken out and added to its LoRAs by name,
    after those it already has; a prompt without tags leaves it as it is."""
    prompt, tagged = take_lora_tags(request.prompt)
    if not tagged:
        return request
    scales = list(request.lora_scales) or [1.0] * len(request.lora_paths)
    return request.with_(prompt=prompt, lora_paths=(*request.lora_paths, *(name for name, _ in tagged)),
                         lora_scales=(*scales, *(scale for _, scale in tagged)))
