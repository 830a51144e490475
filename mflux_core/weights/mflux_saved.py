"""Model folders written by mflux's `mflux-save` (mflux 0.4 to 0.18, quantized or not), read as diffusers' would be.

mflux writes each component (transformer/, vae/, text_encoder/, text_encoder_2/) as its MLX module's parameters in
numbered files (0.safetensors, ...), with "quantization_level" (later versions add "mflux_version") in every header and
no config.json; tokenizer/ and tokenizer_2/ as transformers writes them; no scheduler/ or model_index.json. Its module
names are diffusers' and transformers' but for the few renamed below; convolutions are channels-last; a quantized
layer is MLX's (weight, scales, biases), embeddings included, as `nn.quantize` makes them. mflux's classes hard-code
FLUX.1's architecture, so what the shapes do not tell (head sizes, norm groups, the VAE's scaling, the scheduler) is
FLUX.1's (weights/flux_config.py). The names were checked against the parameter trees of mflux 0.4.1, 0.9.6 and 0.18's
own classes (tests/fixtures/mflux_trees.json.gz).
"""

import re
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
from safetensors import SafetensorError, safe_open

from mflux_core.errors import ModelLoadError
from mflux_core.weights.flux_config import component_kind, config_from_shapes, group_size, matrix, scheduler_config
from mflux_core.weights.safetensors_io import load_safetensors, weight_files

MFLUX_METADATA = ("quantization_level", "mflux_version")
UNQUANTIZED = ("None", "null", "")
MLX_BITS = (2, 3, 4, 5, 6, 8)

# mflux's module names -> the published checkpoints' names (which our models' `sanitize` reads)
RENAMES = (
    (r"\.(ff|ff_context)\.linear1\.", r".\1.net.0.proj."), (r"\.(ff|ff_context)\.linear2\.", r".\1.net.2."),
    (r"\.(conv_in|conv_out)\.conv2d\.", r".\1."), (r"\.conv_norm_out\.norm\.", ".conv_norm_out."),
    (r"^t5_blocks\.(\d+)\.attention\.", r"encoder.block.\1.layer.0."),
    (r"^t5_blocks\.(\d+)\.ff\.", r"encoder.block.\1.layer.1."), (r"^final_layer_norm\.", "encoder.final_layer_norm."),
)
# tensors our models read whole (a position table sliced, one block's relative bias): stored quantized, they are
# dequantized on loading (77 x 768 and 32 x 64 values)
READ_WHOLE = ("text_model.embeddings.position_embedding",
              "encoder.block.0.layer.0.SelfAttention.relative_attention_bias")
# mflux gives every T5 block block 0's relative attention bias; only block 0 has one in transformers' T5
OTHER_BLOCKS_BIAS = re.compile(r"^encoder\.block\.([1-9]\d*)\.layer\.0\.SelfAttention\.relative_attention_bias\.")


def _metadata(path: Path) -> dict:
    try:
        with safe_open(path, framework="numpy") as weights:
            return weights.metadata() or {}
    except (OSError, SafetensorError):
        return {}  # loading it says what is wrong


def is_mflux_component(folder: Path) -> bool:
    """A component folder mflux saved: no config.json, and mflux's keys in its first weights file's header."""
    folder = Path(folder)
    if (folder / "config.json").is_file() or not folder.is_dir():
        return False
    files = sorted(path for path in folder.glob("*.safetensors") if not path.name.startswith("._"))
    return bool(files) and any(key in _metadata(files[0]) for key in MFLUX_METADATA)


def is_mflux_folder(folder: Path) -> bool:
    """A whole model folder mflux saved (its transformer/ is mflux's)."""
    return is_mflux_component(Path(folder) / "transformer")


def model_scheduler_config(folder: Path) -> dict:
    """The scheduler config of an mflux-saved model folder (it saves none)."""
    return scheduler_config(bool(component_config(Path(folder) / "transformer")["guidance_embeds"]))


def model_kind(folder: Path) -> str:
    """What an mflux-saved model folder is, from its transformer's input channels: "fill" (noisy and masked-image
    latents and the packed mask), "depth" (noisy and control latents), else "base" (Kontext's are a base's too)."""
    folder = Path(folder)
    vae = component_config(folder / "vae")
    packed = 4 * vae["latent_channels"]
    scale = 2 ** (len(vae["block_out_channels"]) - 1)
    channels = component_config(folder / "transformer")["in_channels"]
    return {2 * packed: "depth", 2 * packed + 4 * scale**2: "fill"}.get(channels, "base")


@lru_cache(maxsize=32)
def _header(folder: Path, mtimes: tuple) -> tuple[dict[str, tuple[int, ...]], int | None]:
    shapes = {}
    bits = None
    for path in weight_files(folder):
        level = _metadata(path).get("quantization_level", "None")
        try:
            bits = None if level in UNQUANTIZED else int(level)
        except ValueError:
            raise ModelLoadError(f"{path} says it is quantized to {level!r} bits, which is not a number.") from None
        if bits is not None and bits not in MLX_BITS:
            raise ModelLoadError(f"{path} says it is quantized to {bits} bits; MLX quantizes to "
                                 f"{', '.join(map(str, MLX_BITS))}.")
        try:
            with safe_open(path, framework="numpy") as weights:
                shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
        except (OSError, SafetensorError) as error:
            raise ModelLoadError(f"Cannot read the weights file {path} ({error}).") from None
    return shapes, bits


def header(folder: Path) -> tuple[dict[str, tuple[int, ...]], int | None]:
    """(published name -> shape as published, the quantization bits or None) of an mflux component, from its files'
    headers."""
    folder = Path(folder)
    shapes, bits = _header(folder, tuple(path.stat().st_mtime_ns for path in weight_files(folder)))
    return published_shapes(shapes), bits


def published_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """mflux's names and shapes as published (convolutions channels-first)."""
    return {published_name(name): (shape[0], shape[3], *shape[1:3]) if len(shape) == 4 else tuple(shape)
            for name, shape in shapes.items()}


def published_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def component_config(folder: Path) -> dict:
    """The config.json diffusers or transformers would have for an mflux-saved component, with our "quantization"
    entry (weights/quantize.py) when it is quantized."""
    return config_from_shapes(*header(folder))


def component_weights(folder: Path) -> dict[str, mx.array]:
    """An mflux-saved component's tensors under the names the published checkpoints use, convolutions
    channels-first as there; quantized layers stay quantized but for READ_WHOLE."""
    stored = {}
    for path in weight_files(folder):
        stored.update(load_safetensors(path))
    return checkpoint_tensors(stored, *header(folder))


def checkpoint_tensors(stored: dict[str, mx.array], shapes: dict, bits: int | None) -> dict[str, mx.array]:
    """mflux's tensors under the published names (`shapes`, `bits`: header's)."""
    tensors = {}
    for name, value in stored.items():
        name = published_name(name)
        if not OTHER_BLOCKS_BIAS.match(name):
            tensors[name] = value.transpose(0, 3, 1, 2) if value.ndim == 4 else value  # channels-first, as published
    for module in READ_WHOLE:
        if f"{module}.scales" in tensors:
            tensors[f"{module}.weight"] = mx.dequantize(
                tensors.pop(f"{module}.weight"), tensors.pop(f"{module}.scales"), tensors.pop(f"{module}.biases"),
                group_size=group_size(shapes, bits), bits=bits)  # mflux quantizes a whole model in one group size
    if component_kind(shapes) == "transformer" and "norm_out.linear.bias" not in tensors:
        # mflux 0.16 and later build norm_out.linear without a bias, so their saves have none: zero is what they run
        tensors["norm_out.linear.bias"] = mx.zeros((matrix(shapes, bits, "norm_out.linear")[0],))
    return tensors
