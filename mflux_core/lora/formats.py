"""LoRA files in the formats people download, read into one form: {module path in FluxTransformer: LoraWeights}.

Every format stores, per adapted layer, a down matrix (rank, in), an up matrix (out, rank) and
sometimes an alpha; only the names differ:

- diffusers / PEFT: `transformer.<diffusers module>.lora_A.weight` / `lora_B.weight` (the prefix is
  optional; some files spell them `lora_down` / `lora_up`). Alpha from `<module>.alpha` keys, else
  from PEFT's adapter metadata in the safetensors header, else alpha = rank.
- Kohya / sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` (BFL module names
  with `_` for `.`), `.alpha` per module (default rank).
- AI-toolkit / ComfyUI: `diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight` (BFL names),
  either spelling, optional `.alpha`.
- XLabs: `double_blocks.0.processor.qkv_lora1.down.weight`; no alpha (scale 1).
- OneTrainer: `lora_transformer_transformer_blocks_0_attn_to_q.lora_down.weight` (diffusers names with `_` for
  `.`), `.alpha` per module.

LyCORIS LoKr and LoHa files use the Kohya or AI-toolkit module names, or LyCORIS' own wrapper's
(`lycoris_transformer_blocks_0_attn_to_q`: diffusers names with `_` for `.`), with their own factor
keys (`lokr_w1`, `hada_w1_a`, ...; see lora/lycoris.py), which are rewritten exactly as a down/up pair.

BFL names fuse layers that diffusers keeps apart (q, k, v; a single block's q, k, v and MLP input).
A fused LoRA becomes one adapter per part: the same down matrix, the up matrix's rows split.

A DoRA also stores magnitudes: LyCORIS' `<module>.dora_scale` ((out, 1) per output row, or (1, in) per input
column) or PEFT's `<module>.lora_magnitude_vector` ((out,)); see lora/layers.py for how they apply.

Some trainers also adapt the text encoders (Kohya's `--network_train_unet_only` off, diffusers'
`--train_text_encoder`): CLIP-L as `lora_te1_text_model_encoder_layers_0_mlp_fc1` (Kohya), `text_encoder.text_model.
encoder.layers.0.mlp.fc1` (diffusers) or `text_encoders.clip_l.transformer.text_model...` (ComfyUI), T5 as
`lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0` (sd-scripts; `lora_te2_` in other Kohya-style files),
`text_encoder_2.encoder.block...` or `text_encoders.t5xxl.transformer.encoder.block...`. Their targets are named by
component: `text_encoder.<CLIP path>`, `text_encoder_2.<T5 path>` (component_of tells them from the transformer's).

BFL's control LoRAs (FLUX.1-Depth-dev-lora, FLUX.1-Canny-dev-lora) turn a base model into a control model: their
`img_in` adapter takes twice the base's input channels (the control image's latents beside the noise), some up
matrices carry a bias (`lora_B.bias`), and the q/k RMSNorm scales come whole (`<norm>.scale`, or in diffusers' names
`<norm_q>.weight`), replacing the base's.
"""

import json
import re
from dataclasses import dataclass, field
from math import sqrt
from pathlib import Path
from typing import Callable, NamedTuple

import mlx.core as mx

from mflux_core.errors import ModelLoadError
from mflux_core.lora.info import read_lora_info, refusal
from mflux_core.lora.lycoris import LYCORIS_PARTS, lycoris_pair
from mflux_core.request import whole_text
from mflux_core.models.transformer import MLP_RATIO
from mflux_core.weights.bfl import (
    DOUBLE_BLOCK_FUSED, DOUBLE_BLOCK_NAMES, GLOBAL_NAMES, SINGLE_BLOCK_FUSED_QKV_MLP, SINGLE_BLOCK_NAMES,
)

DOWN_SUFFIXES = (".lora_A.weight", ".lora_down.weight", ".down.weight")
UP_SUFFIXES = (".lora_B.weight", ".lora_up.weight", ".up.weight")
ALPHA_SUFFIX = ".alpha"
BIAS_SUFFIXES = {".lora_B.bias": "up_bias", ".lora_up.bias": "up_bias", ".lora_A.bias": "down_bias",
                 ".lora_down.bias": "down_bias"}
NORM_MODULES = ("query_norm", "key_norm", "norm_q", "norm_k", "norm_added_q", "norm_added_k")  # BFL's, diffusers'
MAGNITUDE_SUFFIXES = {".dora_scale": "lycoris", ".lora_magnitude_vector": "peft",
                      ".lora_magnitude_vector.weight": "peft"}  # -> whose DoRA (Dora.strength_inside)
PEFT_METADATA_KEY = "lora_adapter_metadata"
PEFT_MODEL_PREFIX, PEFT_CONFIG_FILE = "base_model.model.", "adapter_config.json"  # PEFT's save_pretrained's
BFL_FINAL_MODULATION = "final_layer.adaLN_modulation.1"  # (shift, scale) rows; diffusers' norm_out: (scale, shift)

TRANSFORMER = "transformer"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # CLIP-L and T5, by their folders in a FLUX.1 model
CLIP_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
T5_LAYERS = ("layer.0.SelfAttention.q", "layer.0.SelfAttention.k", "layer.0.SelfAttention.v",
             "layer.0.SelfAttention.o", "layer.1.DenseReluDense.wi", "layer.1.DenseReluDense.wi_0",
             "layer.1.DenseReluDense.wi_1", "layer.1.DenseReluDense.wo")
# component -> (layer list name in the file, in our model, that layer's linears)
TEXT_ENCODER_LAYERS = {"text_encoder": ("text_model.encoder.layers", "encoder.layers", CLIP_LAYERS),
                       "text_encoder_2": ("encoder.block", "encoder.block", T5_LAYERS)}
# (prefix as the file spells it, format, component)
TEXT_ENCODER_PREFIXES = (
    ("lora_te1_", "kohya", "text_encoder"), ("lora_te_", "kohya", "text_encoder"),
    ("lora_te3_", "kohya", "text_encoder_2"), ("lora_te2_", "kohya", "text_encoder_2"),
    ("text_encoder.", "diffusers", "text_encoder"), ("text_encoder_2.", "diffusers", "text_encoder_2"),
    ("text_encoders.clip_l.transformer.", "comfyui", "text_encoder"),
    ("text_encoders.t5xxl.transformer.", "comfyui", "text_encoder_2"),
)

XLABS_DOUBLE = {
    "qkv_lora1": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "qkv_lora2": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "proj_lora1": ("attn.to_out.0",),
    "proj_lora2": ("attn.to_add_out",),
}
XLABS_SINGLE = {"qkv_lora": ("attn.to_q", "attn.to_k", "attn.to_v"), "proj_lora": ("proj_out",)}

BLOCK_NAME = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.(.+)$")
KOHYA_BLOCK_NAME = re.compile(r"(double_blocks|single_blocks)_(\d+)_(.+)$")
XLABS_NAME = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.processor\.(\w+)$")


class Dora(NamedTuple):
    """A DoRA's magnitudes: the adapted weight W + dW is rescaled so that each output row (or input column) has
    these norms."""

    magnitude: mx.array  # (out,) or, on_input, (in,)
    on_input: bool  # norms per input column (LyCORIS' wd_on_out=False) instead of per output row
    strength_inside: bool  # PEFT: the user's scale multiplies dW before the norms; LyCORIS: it blends the rescale


class LoraWeights(NamedTuple):
    """One adapter on one linear layer: y += scale * (x @ down.T) @ up.T (a DoRA rescales that, lora/layers.py)."""

    down: mx.array  # (rank, in)
    up: mx.array  # (out, rank)
    scale: float  # alpha / rank as the file's format defines it (1.0 when it has no alpha)
    dora: Dora | None = None
    bias: mx.array | None = None  # (out,): what the adapter adds to the layer's bias (times scale)


@dataclass
class LoraFile:
    """A LoRA file read into our module paths, with what could not be read kept for the report."""

    name: str
    format: str
    targets: dict[str, LoraWeights]
    source_keys: dict[str, tuple[str, ...]]  # target path -> the file's keys that made it
    total_keys: int
    unreadable_keys: list[str] = field(default_factory=list)  # keys no format names a transformer layer with
    norms: dict[str, mx.array] = field(default_factory=dict)  # RMSNorm path -> the weight that replaces the base's


@dataclass
class _Module:
    """down/up/alpha (or LyCORIS factors) of one adapted module as named in the file."""

    keys: list[str] = field(default_factory=list)
    down: mx.array | None = None
    up: mx.array | None = None
    alpha: float | None = None
    lycoris: dict[str, mx.array] = field(default_factory=dict)  # factor name ("lokr_w1", ...) -> matrix
    magnitude: mx.array | None = None  # a DoRA's, as stored
    magnitude_style: str | None = None  # "lycoris" or "peft"
    up_bias: mx.array | None = None
    down_bias: mx.array | None = None
    norm: mx.array | None = None  # a whole norm weight (a control LoRA's)


def split_key(key: str) -> tuple[str, str] | None:
    """'x.lora_A.weight' -> ('x', 'down'), 'x.lokr_w1' -> ('x', 'lokr_w1'), 'x.dora_scale' -> ('x', 'lycoris
    magnitude'), 'x.lora_B.bias' -> ('x', 'up_bias'), 'x.query_norm.scale' -> ('x.query_norm', 'norm'); None for
    keys that are none of these."""
    for suffix, style in MAGNITUDE_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], f"{style} magnitude"
    for suffix, kind in BIAS_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], kind
    module, _, part = key.rpartition(".")
    if part in ("scale", "weight") and module.rpartition(".")[2] in NORM_MODULES:
        return module, "norm"
    for suffixes, kind in ((DOWN_SUFFIXES, "down"), (UP_SUFFIXES, "up"), ((ALPHA_SUFFIX,), "alpha")):
        for suffix in suffixes:
            if key.endswith(suffix):
                return key[: -len(suffix)], kind
    module, _, part = key.rpartition(".")
    return (module, part) if module and part in LYCORIS_PARTS else None


def _underscored(names) -> dict[str, str]:
    return {name.replace(".", "_"): name for name in names}


KOHYA_NAMES = {  # BFL module names with `_` for `.`, after `lora_unet_`
    "double_blocks": _underscored([*DOUBLE_BLOCK_NAMES, *DOUBLE_BLOCK_FUSED]),
    "single_blocks": _underscored([*SINGLE_BLOCK_NAMES, "linear1"]),
    "global": _underscored(GLOBAL_NAMES),
}
LYCORIS_NAMES = {  # diffusers module names with `_` for `.`, after `lycoris_` (LyCORIS' own wrapper, SimpleTuner) or
    # `lora_transformer_` (OneTrainer)
    "transformer_blocks": _underscored(
        [*DOUBLE_BLOCK_NAMES.values(), *(part for parts in DOUBLE_BLOCK_FUSED.values() for part in parts)]),
    "single_transformer_blocks": _underscored([*SINGLE_BLOCK_NAMES.values(), *SINGLE_BLOCK_FUSED_QKV_MLP]),
    "global": _underscored(GLOBAL_NAMES.values()),
}
LYCORIS_BLOCK_NAME = re.compile(r"(transformer_blocks|single_transformer_blocks)_(\d+)_(.+)$")


def dotted(name: str, block_name: re.Pattern, names: dict[str, dict[str, str]]) -> str | None:
    """'double_blocks_0_img_attn_qkv' -> 'double_blocks.0.img_attn.qkv', from a table of the names with `_`."""
    block = block_name.match(name)
    if block:
        kind, index, module = block.groups()
        return f"{kind}.{index}.{names[kind][module]}" if module in names[kind] else None
    return names["global"].get(name)


def component_of(path: str) -> str:
    """The model part a target path is on: TRANSFORMER or one of TEXT_ENCODERS."""
    head = path.partition(".")[0]
    return head if head in TEXT_ENCODERS else TRANSFORMER


def text_encoder_layer(module: str) -> tuple[str, str] | None:
    """A text encoder module as the file spells it -> (format, our target path), None when it is not one."""
    for prefix, fmt, component in TEXT_ENCODER_PREFIXES:
        if not module.startswith(prefix):
            continue
        in_file, ours, layers = TEXT_ENCODER_LAYERS[component]
        name = module[len(prefix):]
        separator = "_" if fmt == "kohya" else "."
        head = in_file.replace(".", separator) + separator
        index, _, layer = name[len(head):].partition(separator) if name.startswith(head) else ("", "", "")
        table = _underscored(layers) if separator == "_" else {layer_name: layer_name for layer_name in layers}
        if whole_text(index) is not None and layer in table:
            return fmt, f"{component}.{ours}.{index}.{table[layer]}"
        return None
    return None


def classify(module: str) -> tuple[str, str] | None:
    """A module name as the file spells it -> (format, name in that format's namespace)."""
    text_encoder = text_encoder_layer(module)
    if text_encoder:
        return text_encoder
    if module.startswith("lora_unet_"):
        bfl = dotted(module[len("lora_unet_"):], KOHYA_BLOCK_NAME, KOHYA_NAMES)
        return ("kohya", bfl) if bfl else None
    for prefix, fmt in (("lycoris_", "lycoris"), ("lora_transformer_", "onetrainer")):
        if module.startswith(prefix):
            name = dotted(module[len(prefix):], LYCORIS_BLOCK_NAME, LYCORIS_NAMES)
            return (fmt, name) if name else None
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if module.startswith(prefix):
            module = module[len(prefix):]
            return ("xlabs", module) if ".processor." in module else ("ai-toolkit", module)
    if ".processor." in module:
        return "xlabs", module
    if module.startswith(("double_blocks.", "single_blocks.")) or module in GLOBAL_NAMES:
        return "ai-toolkit", module
    if module.startswith("transformer."):
        return "diffusers", module[len("transformer."):]
    if module.startswith(("transformer_blocks.", "single_transformer_blocks.", "x_embedder", "context_embedder",
                          "time_text_embed.", "norm_out.", "proj_out")):
        return "diffusers", module
    return None


# --- names -> module paths with the rows each part takes ----------------------------------------


def bfl_parts(name: str) -> list[str] | None:
    """A BFL module name -> our module paths, in the order its rows are stacked (None if unknown)."""
    block = BLOCK_NAME.match(name)
    if not block:
        return [GLOBAL_NAMES[name]] if name in GLOBAL_NAMES else None
    kind, index, module = block.groups()
    if kind == "double_blocks":
        prefix = f"transformer_blocks.{index}."
        parts = DOUBLE_BLOCK_FUSED.get(module) or ((DOUBLE_BLOCK_NAMES[module],) if module in DOUBLE_BLOCK_NAMES else None)
    else:
        prefix = f"single_transformer_blocks.{index}."
        parts = SINGLE_BLOCK_FUSED_QKV_MLP if module == "linear1" else (
            (SINGLE_BLOCK_NAMES[module],) if module in SINGLE_BLOCK_NAMES else None)
    return [prefix + part for part in parts] if parts else None


def xlabs_parts(name: str) -> list[str] | None:
    match = XLABS_NAME.match(name)
    if not match:
        return None
    kind, index, processor = match.groups()
    table, prefix = (XLABS_DOUBLE, f"transformer_blocks.{index}.") if kind == "double_blocks" else (
        XLABS_SINGLE, f"single_transformer_blocks.{index}.")
    return [prefix + part for part in table[processor]] if processor in table else None


def row_splits(paths: list[str], rows: int) -> list[int]:
    """Row counts of a fused up matrix: q, k, v take equal shares; a single block's MLP input takes MLP_RATIO."""
    if paths[-1].endswith("proj_mlp"):
        hidden = rows // (3 + MLP_RATIO)
        return [hidden, hidden, hidden, rows - 3 * hidden]
    return [rows // len(paths)] * len(paths)


# --- alpha -------------------------------------------------------------------------------------


def peft_alpha(metadata: dict | None) -> Callable[[str, int], float] | None:
    """PEFT's adapter configs in the safetensors header -> alpha(target path, rank), or None without them. A file
    saved through a pipeline prefixes each component's config with its name (`transformer.lora_alpha`,
    `text_encoder.lora_alpha`); one without prefixes is the transformer's."""
    raw = (metadata or {}).get(PEFT_METADATA_KEY)
    if not raw:
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        return None
    if not isinstance(config, dict):
        return None
    configs: dict[str, dict] = {}
    for key, value in config.items():
        component, _, name = key.partition(".")
        if component in (TRANSFORMER, *TEXT_ENCODERS) and name:
            configs.setdefault(component, {})[name] = value
        else:
            configs.setdefault(TRANSFORMER, {})[key] = value

    def scale(path: str, rank: int) -> float | None:
        component = component_of(path)
        config = configs.get(component, {})
        if "lora_alpha" not in config:
            return None
        module = path if component == TRANSFORMER else path.replace(  # as PEFT names it in that component
            f"{component}.{TEXT_ENCODER_LAYERS[component][1]}", TEXT_ENCODER_LAYERS[component][0], 1)
        patterns = config.get("alpha_pattern") or {}
        alpha = next((value for pattern, value in patterns.items()
                      if re.match(rf"(.*\.)?({pattern})$", module)), config["lora_alpha"])
        return alpha / (sqrt(rank) if config.get("use_rslora") else rank)

    return scale


# --- reading ------------------------------------------------------------------------------------


def read_lora(weights: dict[str, mx.array], metadata: dict | None = None, name: str = "LoRA") -> LoraFile:
    """Any supported format -> LoraFile. Keys no format recognises are kept in `unreadable_keys`."""
    modules: dict[tuple[str, str], _Module] = {}
    unreadable = []
    for key, value in weights.items():
        parsed = split_key(key)
        kind = classify(parsed[0]) if parsed else None
        if kind is None:
            unreadable.append(key)
            continue
        module = modules.setdefault(kind, _Module())
        module.keys.append(key)
        if parsed[1] == "alpha":
            module.alpha = float(value.astype(mx.float32).item())
        elif parsed[1].endswith(" magnitude"):
            module.magnitude, module.magnitude_style = value, parsed[1].split()[0]
        elif parsed[1] in LYCORIS_PARTS:
            module.lycoris[parsed[1]] = value
        else:
            setattr(module, parsed[1], value)

    alpha_from_metadata = peft_alpha(metadata)
    targets: dict[str, LoraWeights] = {}
    sources: dict[str, tuple[str, ...]] = {}
    norms: dict[str, mx.array] = {}
    formats = set()
    for (fmt, module_name), module in modules.items():
        paths = _paths(fmt, module_name)
        if module.norm is not None and paths and len(paths) == 1 and len(module.keys) == 1:
            norms[paths[0]] = module.norm
            sources[paths[0]] = tuple(module.keys)
            continue
        pair = _pair(module, module_name, fmt, alpha_from_metadata) if paths else None
        if pair is None:
            unreadable.extend(module.keys)
            continue
        kind = _lycoris_kind(module)
        formats.add(" ".join(filter(None, (fmt, kind, "DoRA" if module.magnitude is not None else None))))
        down, up, scale = pair
        dora = _dora(module, down, up, module_name, len(paths) > 1)
        bias = _bias(module, up)
        if fmt in ("kohya", "ai-toolkit") and module_name == BFL_FINAL_MODULATION:
            up, bias = _swapped_halves(up), None if bias is None else _swapped_halves(bias)
            dora = dora and dora._replace(magnitude=_swapped_halves(dora.magnitude))
        rows = [up.shape[0]] if len(paths) == 1 else row_splits(paths, up.shape[0])
        for index, path in enumerate(paths):
            part = slice(sum(rows[:index]), sum(rows[: index + 1]))
            part_dora = dora if dora is None or dora.on_input else dora._replace(magnitude=dora.magnitude[part])
            targets[path] = LoraWeights(down, up[part], scale, part_dora, None if bias is None else bias[part])
            sources[path] = tuple(module.keys)
    if norms:
        formats.add("control")
    return LoraFile(
        name=name, format="+".join(sorted(formats)) or "unknown", targets=targets, source_keys=sources,
        total_keys=len(weights), unreadable_keys=sorted(unreadable), norms=norms,
    )


def _pair(module: _Module, module_name: str, fmt: str, alpha_from_metadata) -> tuple[mx.array, mx.array, float] | None:
    """(down, up, scale) of a module; None when a matrix is missing or down/up are mixed with LyCORIS factors."""
    if module.lycoris:
        file_name = split_key(module.keys[0])[0]  # the module as the file spells it, for messages
        return None if module.down is not None or module.up is not None else lycoris_pair(
            module.lycoris, module.alpha, file_name)
    if module.down is None or module.up is None:
        return None
    rank = module.down.shape[0]
    if module.alpha is not None:
        scale = module.alpha / rank
    else:
        from_metadata = alpha_from_metadata(module_name, rank) if fmt == "diffusers" and alpha_from_metadata else None
        scale = 1.0 if from_metadata is None else from_metadata
    return module.down, module.up, scale


def _bias(module: _Module, up: mx.array) -> mx.array | None:
    """(out,) what the adapter adds to the layer's bias: the up matrix's own bias, and the down matrix's through it."""
    if module.up_bias is None and module.down_bias is None:
        return None
    bias = mx.zeros((up.shape[0],), dtype=mx.float32)
    if module.down_bias is not None:
        bias = bias + up.astype(mx.float32) @ module.down_bias.astype(mx.float32)
    if module.up_bias is not None:
        bias = bias + module.up_bias.astype(mx.float32)
    return bias


def _swapped_halves(rows: mx.array) -> mx.array:
    first, second = mx.split(rows, 2, axis=0)
    return mx.concatenate([second, first], axis=0)


def _dora(module: _Module, down: mx.array, up: mx.array, module_name: str, fused: bool) -> Dora | None:
    """The module's DoRA magnitudes, told per output row or per input column by their shape."""
    if module.magnitude is None:
        return None
    magnitude, (out_features, in_features) = module.magnitude, (up.shape[0], down.shape[1])
    on_output = magnitude.shape in ((out_features,), (out_features, 1))
    on_input = not on_output and magnitude.shape in ((in_features,), (1, in_features))
    if not (on_output or on_input):
        raise ModelLoadError(f"The DoRA module {module_name} is damaged: its magnitudes are "
                             f"{'x'.join(map(str, magnitude.shape))} for a {out_features}x{in_features} layer.")
    if on_input and fused:  # each part's column norms would need the other parts' weights
        raise ModelLoadError(f"The DoRA module {module_name} keeps its magnitudes per input column over layers the "
                             "studio holds apart (a fused BFL module); only per-output-row magnitudes can be applied "
                             "to it.")
    return Dora(magnitude.reshape(-1).astype(mx.float32), on_input, module.magnitude_style == "peft")


def _lycoris_kind(module: _Module) -> str | None:
    if not module.lycoris:
        return None
    return "LoKr" if any(key.startswith("lokr_") for key in module.lycoris) else "LoHa"


def _paths(fmt: str, module_name: str) -> list[str] | None:
    if fmt in ("diffusers", "lycoris", "onetrainer") or component_of(module_name) != TRANSFORMER:
        return [module_name]
    if fmt == "xlabs":
        return xlabs_parts(module_name)
    return bfl_parts(module_name)


def load_lora_file(path: Path) -> LoraFile:
    """Read a .safetensors LoRA (weights and header metadata) into a LoraFile; one made for another model family is
    refused from its header before its weights are read."""
    path = Path(path)
    info = read_lora_info(path)
    if info is not None and refusal(info, path.name):
        raise ModelLoadError(refusal(info, path.name))
    try:
        weights, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
    except Exception as error:  # MLX raises plain RuntimeError/ValueError for bad files
        raise ModelLoadError(f"The LoRA {path} is not a readable safetensors file ({error}).") from None
    broken = next((key for key, value in weights.items()
                   if mx.issubdtype(value.dtype, mx.floating) and not mx.all(mx.isfinite(value)).item()), None)
    if broken is not None:  # a NaN would silently turn every image black
        raise ModelLoadError(f"The LoRA {path} is damaged: its {broken} holds values that are not finite (NaN or inf).")
    weights, metadata = as_saved_by_peft(weights, metadata, path.parent / PEFT_CONFIG_FILE)
    return read_lora(weights, metadata, name=path.name)


def as_saved_by_peft(weights: dict[str, mx.array], metadata: dict, config: Path) -> tuple[dict, dict]:
    """PEFT's save_pretrained writes the model's names under `base_model.model.` and its alpha into
    adapter_config.json beside the file: the names as diffusers' and the config as the header's adapter metadata."""
    if not any(key.startswith(PEFT_MODEL_PREFIX) for key in weights):
        return weights, metadata
    weights = {key.removeprefix(PEFT_MODEL_PREFIX): value for key, value in weights.items()}
    if PEFT_METADATA_KEY not in (metadata or {}) and config.is_file():
        try:
            metadata = {**(metadata or {}), PEFT_METADATA_KEY: config.read_text()}
        except OSError:
            pass  # then alpha = rank, as for a file without its config
    return weights, metadata
