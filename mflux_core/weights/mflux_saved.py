"""Model folders written by mflux's `mflux-save` (mflux 0.4 to 0.18, quantized or not), read as diffusers' would be.

mflux writes each component (transformer/, vae/, text_encoder/, text_encoder_2/) as its MLX module's parameters in
numbered files (0.safetensors, ...), with "quantization_level" (later versions add "mflux_version") in every header and
no config.json; tokenizer/ and tokenizer_2/ as transformers writes them; no scheduler/ or model_index.json. Its module
names are diffusers' and transformers' but for the few renamed below; convolutions are channels-last; a quantized
layer is MLX's (weight, scales, biases), embeddings included, as `nn.quantize` makes them. mflux's classes hard-code
FLUX.1's architecture, so what the shapes do not tell (head sizes, norm groups, the VAE's scaling, the scheduler) is
FLUX.1's. The names were checked against the parameter trees of mflux 0.4.1, 0.9.6 and 0.18's own classes
(tests/fixtures/mflux_trees.json.gz).
"""

import re
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
from safetensors import SafetensorError, safe_open

from mflux_core.errors import ModelLoadError
from mflux_core.weights.flux_config import FLUX1_AXES_DIMS_ROPE, shared_config
from mflux_core.weights.safetensors_io import load_safetensors, weight_files

MFLUX_METADATA = ("quantization_level", "mflux_version")
UNQUANTIZED = ("None", "null", "")

# mflux's module names -> the checkpoint names our models' `sanitize` reads
RENAMES = {
    "transformer": ((r"\.(ff|ff_context)\.linear1\.", r".\1.net.0.proj."),
                    (r"\.(ff|ff_context)\.linear2\.", r".\1.net.2.")),
    "vae": ((r"\.(conv_in|conv_out)\.conv2d\.", r".\1."), (r"\.conv_norm_out\.norm\.", ".conv_norm_out.")),
    "t5": ((r"^t5_blocks\.(\d+)\.attention\.", r"encoder.block.\1.layer.0."),
           (r"^t5_blocks\.(\d+)\.ff\.", r"encoder.block.\1.layer.1."),
           (r"^final_layer_norm\.", "encoder.final_layer_norm.")),
    "clip": (),
}
# tensors our models read whole (a position table sliced, one block's relative bias): stored quantized, they are
# dequantized on loading (77 x 768 and 32 x 64 values)
READ_WHOLE = ("text_model.embeddings.position_embedding", "t5_blocks.0.attention.SelfAttention.relative_attention_bias")
# mflux gives every T5 block block 0's relative attention bias; only block 0 has one in transformers' T5
OTHER_BLOCKS_BIAS = re.compile(r"^t5_blocks\.([1-9]\d*)\.attention\.SelfAttention\.relative_attention_bias\.")

# what mflux's FLUX.1 classes hard-code
CLIP_HEAD_DIM = 64
VAE_NORM_GROUPS = 32
VAE_SCALING = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
T5_MAX_DISTANCE = 128
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "base_image_seq_len": 256,
             "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
DEV_SCHEDULER = {**SCHEDULER, "shift": 3.0, "use_dynamic_shifting": True}
SCHNELL_SCHEDULER = {**SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}


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


def scheduler_config(guidance_embeds: bool) -> dict:
    """The scheduler mflux runs a FLUX.1 model with: dev's (shifted by image size) with a guidance embedding,
    schnell's otherwise."""
    return dict(DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER)


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
        try:
            with safe_open(path, framework="numpy") as weights:
                shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})
        except (OSError, SafetensorError) as error:
            raise ModelLoadError(f"Cannot read the weights file {path} ({error}).") from None
    return shapes, bits


def header(folder: Path) -> tuple[dict[str, tuple[int, ...]], int | None]:
    """(name -> shape, the quantization bits or None) of an mflux component, from its files' headers."""
    folder = Path(folder)
    return _header(folder, tuple(path.stat().st_mtime_ns for path in weight_files(folder)))


def component_kind(shapes: dict) -> str:
    for kind, marker in (("transformer", "x_embedder.weight"), ("vae", "decoder.conv_in.conv2d.weight"),
                         ("t5", "shared.weight"), ("clip", "text_model.embeddings.token_embedding.weight")):
        if marker in shapes:
            return kind
    raise ModelLoadError("This mflux-saved folder holds none of FLUX.1's components (transformer, VAE, T5, CLIP).")


def _matrix(shapes: dict, bits: int | None, module: str) -> tuple[int, int]:
    """A linear layer's or embedding's (rows, columns), a quantized one's columns unpacked."""
    try:
        rows, columns = shapes[f"{module}.weight"]
    except KeyError:
        raise ModelLoadError(f"The mflux-saved component has no tensor {module}.weight.") from None
    return (rows, columns * 32 // bits) if bits and f"{module}.scales" in shapes else (rows, columns)


def _count(shapes: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return len({int(match.group(1)) for name in shapes if (match := pattern.match(name))})


def _group_size(shapes: dict, bits: int) -> int:
    name = next(name for name in shapes if name.endswith(".scales"))
    module = name.removesuffix(".scales")
    return _matrix(shapes, bits, module)[1] // shapes[name][1]


def component_config(folder: Path) -> dict:
    """The config.json diffusers or transformers would have for an mflux-saved component, with our "quantization"
    entry (weights/quantize.py) when it is quantized."""
    return config_from_shapes(*header(folder))


def config_from_shapes(shapes: dict[str, tuple[int, ...]], bits: int | None) -> dict:
    config = {"transformer": _transformer_config, "vae": _vae_config, "t5": _t5_config,
              "clip": _clip_config}[component_kind(shapes)](shapes, bits)
    if bits and any(name.endswith(".scales") for name in shapes):
        config["quantization"] = {"bits": bits, "group_size": _group_size(shapes, bits)}
    return config


def _transformer_config(shapes: dict, bits: int | None) -> dict:
    layers = (_count(shapes, "transformer_blocks"), _count(shapes, "single_transformer_blocks"))
    norm = "transformer_blocks.0.attn.norm_q.weight" if layers[0] else "single_transformer_blocks.0.attn.norm_q.weight"
    head_dim = shapes[norm][0]
    if head_dim != sum(FLUX1_AXES_DIMS_ROPE):
        raise ModelLoadError(f"This mflux-saved transformer has attention head dim {head_dim}, not FLUX.1's 128.")
    image_in = _matrix(shapes, bits, "x_embedder")
    out_channels = _matrix(shapes, bits, "proj_out")[0]
    return {"patch_size": 1, "out_channels": None if out_channels == image_in[1] else out_channels,
            **shared_config(image_in, _matrix(shapes, bits, "context_embedder"),
                            _matrix(shapes, bits, "time_text_embed.text_embedder.linear_1"), head_dim,
                            FLUX1_AXES_DIMS_ROPE, layers,
                            "time_text_embed.guidance_embedder.linear_1.weight" in shapes)}


def _vae_config(shapes: dict, bits: int | None) -> dict:
    blocks = _count(shapes, "encoder.down_blocks")
    return {
        "in_channels": shapes["encoder.conv_in.conv2d.weight"][3],
        "out_channels": shapes["decoder.conv_out.conv2d.weight"][0],
        "latent_channels": shapes["decoder.conv_in.conv2d.weight"][3],
        "block_out_channels": [shapes[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"][0] for i in range(blocks)],
        "layers_per_block": _count(shapes, "encoder.down_blocks.0.resnets"),
        "down_block_types": ["DownEncoderBlock2D"] * blocks,
        "up_block_types": ["UpDecoderBlock2D"] * blocks,
        "norm_num_groups": VAE_NORM_GROUPS,
        "act_fn": "silu",
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": any(".mid_block.attentions." in name for name in shapes),
        **VAE_SCALING,
    }


def _t5_config(shapes: dict, bits: int | None) -> dict:
    vocab, width = _matrix(shapes, bits, "shared")
    attention = "t5_blocks.0.attention.SelfAttention"
    buckets, heads = _matrix(shapes, bits, f"{attention}.relative_attention_bias")
    gated = "t5_blocks.0.ff.DenseReluDense.wi_0.weight" in shapes
    feed_in = "t5_blocks.0.ff.DenseReluDense." + ("wi_0" if gated else "wi")
    return {
        "vocab_size": vocab, "d_model": width, "num_heads": heads,
        "d_kv": _matrix(shapes, bits, f"{attention}.q")[0] // heads,
        "d_ff": _matrix(shapes, bits, feed_in)[0], "num_layers": _count(shapes, "t5_blocks"),
        "relative_attention_num_buckets": buckets, "relative_attention_max_distance": T5_MAX_DISTANCE,
        "feed_forward_proj": "gated-gelu" if gated else "relu", "layer_norm_epsilon": 1e-6,
    }


def _clip_config(shapes: dict, bits: int | None) -> dict:
    vocab, width = _matrix(shapes, bits, "text_model.embeddings.token_embedding")
    return {
        "vocab_size": vocab, "hidden_size": width, "num_attention_heads": width // CLIP_HEAD_DIM,
        "intermediate_size": _matrix(shapes, bits, "text_model.encoder.layers.0.mlp.fc1")[0],
        "num_hidden_layers": _count(shapes, "text_model.encoder.layers"),
        "max_position_embeddings": _matrix(shapes, bits, "text_model.embeddings.position_embedding")[0],
        "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
        "eos_token_id": 2,  # FLUX.1's config: transformers then pools at the largest id, as mflux does
    }


def component_weights(folder: Path) -> dict[str, mx.array]:
    """An mflux-saved component's tensors under the names the published checkpoints use, convolutions
    channels-first as there; quantized layers stay quantized but for READ_WHOLE."""
    stored = {}
    for path in weight_files(folder):
        stored.update(load_safetensors(path))
    return checkpoint_tensors(stored, *header(folder))


def checkpoint_tensors(stored: dict[str, mx.array], shapes: dict, bits: int | None) -> dict[str, mx.array]:
    kind = component_kind(shapes)
    stored = {name: value for name, value in stored.items() if not OTHER_BLOCKS_BIAS.match(name)}
    for module in READ_WHOLE:
        if f"{module}.scales" in stored:
            group_size = _matrix(shapes, bits, module)[1] // stored[f"{module}.scales"].shape[1]
            stored[f"{module}.weight"] = mx.dequantize(
                stored.pop(f"{module}.weight"), stored.pop(f"{module}.scales"), stored.pop(f"{module}.biases"),
                group_size=group_size, bits=bits)
    if kind == "transformer" and "norm_out.linear.bias" not in stored:
        # mflux 0.16 and later build norm_out.linear without a bias, so their saves have none: zero is what they run
        stored["norm_out.linear.bias"] = mx.zeros((_matrix(shapes, bits, "norm_out.linear")[0],))
    renamed = {}
    for name, value in stored.items():
        for pattern, replacement in RENAMES[kind]:
            name = re.sub(pattern, replacement, name)
        if kind == "vae" and value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)  # the published VAE's OIHW, which vae.sanitize reads
        renamed[name] = value
    return renamed
