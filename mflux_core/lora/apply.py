"""Put LoRA files on a loaded transformer, change their scales, take them off, or bake them in.

A file's adapters are checked against the model before anything changes: a file that names none
of its layers, or whose matrices do not fit them, is refused; one that fits only some is applied
and reported with counts and the first names it could not use.

A control LoRA's whole norm weights replace the base's while it is on (the originals are kept to put back); its
wider `img_in` adapter widens the image input (lora/layers.py), which the tools read as the model's input
channels.
"""

import logging
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from mflux_core.errors import ModelLoadError
from mflux_core.request import whole_text
from mflux_core.lora.formats import TRANSFORMER, LoraFile, component_of
from mflux_core.lora.info import FLUX1, family_from_keys
from mflux_core.lora.layers import LINEAR_TYPES, LoRALinear, dense_weight, linear_shape

log = logging.getLogger(__name__)

SHOWN_NAMES = 5
WIDENED_INPUT = "x_embedder"  # the one layer a control LoRA gives more inputs (the control image's latents)


@dataclass(frozen=True)
class LoraReport:
    name: str
    format: str
    scale: float
    matched_keys: int
    total_keys: int
    layers: int  # linear layers that got an adapter
    unmatched: tuple[str, ...]  # the first keys that were not used
    text_encoder_layers: int = 0  # of those layers, the text encoders'

    @property
    def complete(self) -> bool:
        return self.matched_keys == self.total_keys

    def summary(self) -> str:
        text = (f"LoRA {self.name} ({self.format}, scale {self.scale:g}): {self.matched_keys}/{self.total_keys} "
                f"keys matched, {self.layers} layers")
        if self.text_encoder_layers:
            text += f" ({self.text_encoder_layers} in the text encoders)"
        if not self.complete:
            text += f"; not used: {', '.join(self.unmatched)}"
            if self.total_keys - self.matched_keys > len(self.unmatched):
                text += ", ..."
        return text


def get_module(root: nn.Module, path: str) -> nn.Module | None:
    module = root
    for part in path.split("."):
        if isinstance(module, list):
            index = whole_text(part)
            module = module[index] if index is not None and index < len(module) else None
        elif isinstance(module, nn.Module) and part in module:
            module = module[part]
        else:
            return None
        if module is None:
            return None
    return module


def set_module(root: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = get_module(root, parent_path) if parent_path else root
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        setattr(parent, last, value)


class ReplacedNorms:
    """The norm weights LoRAs replaced, with the originals to put back (a plain object on the transformer: not
    part of its parameter tree)."""

    def __init__(self):
        self.originals: dict[str, mx.array] = {}  # path -> the base's weight
        self.by_lora: dict[str, dict[str, mx.array]] = {}  # LoRA name -> path -> its weight

    @staticmethod
    def of(transformer: nn.Module) -> "ReplacedNorms":
        if not isinstance(getattr(transformer, "replaced_norms", None), ReplacedNorms):
            transformer.replaced_norms = ReplacedNorms()
        return transformer.replaced_norms

    def replace(self, norm: nn.RMSNorm, path: str, name: str, weight: mx.array) -> None:
        self.originals.setdefault(path, norm.weight)
        self.by_lora.setdefault(name, {})[path] = weight
        norm.weight = weight.astype(norm.weight.dtype)

    def restore(self, transformer: nn.Module, name: str) -> None:
        """Take `name`'s norms off: each gets the weight of the latest LoRA still replacing it, else its own."""
        for path in self.by_lora.pop(name, {}):
            still = [weights[path] for weights in self.by_lora.values() if path in weights]
            original = self.originals[path]
            get_module(transformer, path).weight = still[-1].astype(original.dtype) if still else original
            if not still:
                del self.originals[path]


def lora_layers(transformer: nn.Module) -> dict[str, LoRALinear]:
    return {path: m for path, m in transformer.named_modules() if isinstance(m, LoRALinear)}


def applied_loras(transformer: nn.Module) -> dict[str, float]:
    """Adapter name -> user scale, for every LoRA on the transformer."""
    found: dict[str, float] = {}
    for layer in lora_layers(transformer).values():
        for name in layer.names:
            found.setdefault(name, layer.scale_of(name))
    return found  # a LoRA is never norms only (check_lora): its layers name it


def check_lora(transformer: nn.Module, lora: LoraFile, scale: float = 1.0,
               text_encoder_shapes: dict[str, dict[str, tuple[int, int]]] | None = None) -> tuple[dict, LoraReport]:
    """The adapters of `lora` that fit (path -> weights) and the report; changes nothing. With the text encoders'
    linear shapes ({component: {path: (out, in)}}), their adapters are checked too (paths `<component>.<path>`);
    without, they count as not used.

    Refuses a file that names none of the model's linear layers or whose matrices do not fit them.
    """
    fitting = {}
    unused = set(lora.unreadable_keys)
    for path, weights in lora.targets.items():
        expected = _linear_shape_at(transformer, text_encoder_shapes or {}, path)
        if expected is None:
            unused.update(lora.source_keys[path])
            continue
        got = (weights.up.shape[0], weights.down.shape[1])
        widened = path == WIDENED_INPUT and got[0] == expected[0] and got[1] > expected[1]
        if got != expected and not widened:
            raise ModelLoadError(
                f"The LoRA {lora.name} does not fit this model: its {path} adapter is {got[0]}x{got[1]} but the layer "
                f"is {expected[0]}x{expected[1]}. It was made for a model of another size or kind."
            )
        fitting[path] = weights
    for path, weight in lora.norms.items():
        norm = get_module(transformer, path)
        if isinstance(norm, nn.RMSNorm) and norm.weight.shape == weight.shape:
            fitting[path] = weight
        else:
            unused.update(lora.source_keys[path])
    if all(path in lora.norms for path in fitting):  # norms alone adapt nothing (and nothing would name them)
        unused.update(key for path in fitting for key in lora.source_keys[path])
        fitting = {}
    matched = {key for path in fitting for key in lora.source_keys[path]}
    unused -= matched
    if not lora.total_keys:
        raise ModelLoadError(f"The LoRA {lora.name} holds no tensors: it is empty (an interrupted save or download?).")
    if not fitting:
        family = family_from_keys(unused)
        hint = (" Its layer names are FLUX.1's: it is probably for a FLUX.1 model of another width." if family == FLUX1
                else f" It looks like a LoRA for {family}." if family else " It is probably for another model.")
        raise ModelLoadError(
            f"The LoRA {lora.name} matches none of this FLUX.1 transformer's layers (0/{lora.total_keys} keys; "
            f"first: {', '.join(sorted(unused)[:3])}).{hint}"
        )
    report = LoraReport(name=lora.name, format=lora.format, scale=scale, matched_keys=len(matched),
                        total_keys=lora.total_keys, layers=len(fitting),
                        unmatched=tuple(sorted(unused)[:SHOWN_NAMES]),
                        text_encoder_layers=sum(component_of(path) != TRANSFORMER for path in fitting))
    return fitting, report


def _linear_shape_at(transformer: nn.Module, text_encoder_shapes: dict, path: str) -> tuple[int, int] | None:
    """(out, in) of the linear layer a target path names; None when it names none."""
    component = component_of(path)
    if component != TRANSFORMER:
        return text_encoder_shapes.get(component, {}).get(path.partition(".")[2])
    layer = get_module(transformer, path)
    base = layer.base if isinstance(layer, LoRALinear) else layer
    return linear_shape(base) if isinstance(base, LINEAR_TYPES) else None


def attach(root: nn.Module, fitting: dict, name: str, scale: float) -> None:
    """Put checked adapters (path under `root` -> LoraWeights, or an RMSNorm's whole weight) on `root` as `name`."""
    for path, weights in fitting.items():
        layer = get_module(root, path)
        if isinstance(layer, nn.RMSNorm):
            ReplacedNorms.of(root).replace(layer, path, name, weights)
            continue
        if not isinstance(layer, LoRALinear):
            layer = LoRALinear(layer)
            set_module(root, path, layer)
        layer.add(name, weights, scale)


def add_lora(transformer: nn.Module, lora: LoraFile, name: str, scale: float = 1.0) -> LoraReport:
    """Add one file's transformer adapters under `name`; a partial match is logged as a warning and reported."""
    fitting, report = check_lora(transformer, lora, scale)
    attach(transformer, fitting, name, scale)
    if not report.complete:
        log.warning(report.summary())
    return report


def set_lora_scale(transformer: nn.Module, name: str, scale: float) -> None:
    for layer in lora_layers(transformer).values():
        if name in layer.names:
            layer.set_scale(name, scale)


def remove_lora(transformer: nn.Module, name: str) -> None:
    """Take one LoRA off; a layer left with none gets its original module back."""
    for path, layer in lora_layers(transformer).items():
        if name in layer.names:
            layer.remove(name)
            if not layer.names:
                set_module(transformer, path, layer.base)
    ReplacedNorms.of(transformer).restore(transformer, name)


def remove_all_loras(transformer: nn.Module) -> None:
    for path, layer in lora_layers(transformer).items():
        set_module(transformer, path, layer.base)
    norms = ReplacedNorms.of(transformer)
    for name in list(norms.by_lora):
        norms.restore(transformer, name)


def fuse_loras(transformer: nn.Module) -> None:
    """Bake every LoRA into its layer's weights (and bias) and drop the wrappers, keeping the norms LoRAs replaced
    (for saving a model; a control LoRA's widened input is refused before, weights/save.py).

    A quantized layer is dequantized, changed and quantized again with the same settings.
    """
    for path, layer in lora_layers(transformer).items():
        base = layer.base
        delta, bias_delta = layer.delta()
        weight = dense_weight(base)
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias="bias" in base or bias_delta is not None)
        fused.weight = (weight.astype(mx.float32) + delta).astype(weight.dtype)
        if "bias" in fused:
            bias = base.bias.astype(mx.float32) if "bias" in base else mx.zeros((weight.shape[0],))
            fused.bias = (bias + (0 if bias_delta is None else bias_delta)).astype(weight.dtype)
        if isinstance(base, nn.QuantizedLinear):
            fused = nn.QuantizedLinear.from_linear(fused, group_size=base.group_size, bits=base.bits)
        set_module(transformer, path, fused)
    transformer.replaced_norms = ReplacedNorms()
    mx.eval(transformer.parameters())
