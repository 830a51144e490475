"""LoRA adapters on FLUX.1's text encoders (CLIP-L and T5, named by lora/formats.py), applied beside the
transformer's as diffusers, ComfyUI and Forge apply them.

The encoders are shared by every model made from the same folder and may be released between prompts (low RAM),
so a request's adapters are not put on them when its LoRAs are synced: they travel with the request's
CachedTextEncoders and are put on right before a prompt is encoded, where they are also part of the prompt cache's
key.
"""

from dataclasses import dataclass

import mlx.nn as nn

from mflux_core.lora.apply import applied_loras, attach, remove_lora, set_lora_scale
from mflux_core.lora.formats import TRANSFORMER, component_of


@dataclass(frozen=True)
class TextEncoderAdapters:
    """The text encoders' adapters a request wants: (name, scale, {`<component>.<path>`: weights}) per LoRA."""

    loras: tuple[tuple[str, float, dict], ...] = ()

    @classmethod
    def of(cls, checked: list[tuple[str, float, dict]]) -> "TextEncoderAdapters":
        """The text encoders' part of each LoRA's checked adapters (name, scale, path -> weights), for those that
        have one."""
        parts = [(name, scale, {path: weights for path, weights in fitting.items()
                                if component_of(path) != TRANSFORMER}) for name, scale, fitting in checked]
        return cls(tuple(part for part in parts if part[2]))

    @property
    def key(self) -> tuple:
        """What tells prompt encodings with these adapters from others."""
        return tuple((name, scale) for name, scale, _ in self.loras)

    def put_on(self, encoders: dict[str, nn.Module]) -> None:
        """Make each encoder ({component: its module}) carry exactly these adapters at these scales."""
        for component, root in encoders.items():
            wanted = {}
            for name, scale, fitting in self.loras:
                adapters = {path.partition(".")[2]: weights for path, weights in fitting.items()
                            if component_of(path) == component}
                if adapters:
                    wanted[name] = (scale, adapters)
            for name in applied_loras(root).keys() - wanted.keys():
                remove_lora(root, name)
            current = applied_loras(root)
            for name, (scale, adapters) in wanted.items():
                if name not in current:
                    attach(root, adapters, name, scale)
                elif current[name] != scale:
                    set_lora_scale(root, name, scale)
