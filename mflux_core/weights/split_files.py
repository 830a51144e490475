"""FLUX.1's VAE and text encoders as ComfyUI and Forge users keep them: one file each, beside a single transformer
file, in place of a FLUX.1 folder's vae/, text_encoder/ and text_encoder_2/.

- The VAE: BFL's `ae.safetensors` (the original autoencoder's names: encoder.down.0.block.0..., mid.attn_1...;
  `vae.` or `first_stage_model.` before them in an all-in-one checkpoint), renamed to diffusers' as diffusers'
  own single-file loader does (decoder.up.N is up_blocks[last - N]; the attention's 1x1 convolutions as linears).
- CLIP-L: `clip_l.safetensors`, transformers' names (the `text_model.` prefix optional; the projection and logit
  scale of the full CLIP model dropped).
- T5-XXL: `t5xxl_fp16.safetensors` / `t5xxl_fp8_e4m3fn.safetensors`, transformers' names (FP8 read as float16),
  or a GGUF encoder as ComfyUI-GGUF users keep it (city96's `t5-v1_1-xxl-encoder-Q8_0.gguf`: llama.cpp's names,
  enc.blk.N.attn_q...; its Q8_0/Q5_K/Q4_K... layers stay quantized as MLX's groups of 32, weights/gguf_file.py).
- The same three bundled with the transformer in one all-in-one checkpoint, as ComfyUI saves a checkpoint and as
  Comfy-Org's flux1-dev-fp8 and Forge's flux1-dev-bnb-nf4 files are: the transformer under `model.diffusion_model.`,
  the VAE under `vae.`, CLIP under `text_encoders.clip_l.transformer.`, T5 under `text_encoders.t5xxl.transformer.`;
  each is read as its own `part` of the file.
None has a config: weights/flux_config.py reads it from the shapes. The tokenizers are not in these files.
"""

import re
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
from safetensors import SafetensorError, safe_open

from mflux_core.errors import ModelLoadError
from mflux_core.weights.flux_config import component_kind, config_from_shapes
from mflux_core.weights.gguf_file import gguf_shapes, is_gguf
from mflux_core.weights.gguf_mlx import load_gguf
from mflux_core.weights.safetensors_io import load_safetensors

SPLIT_KINDS = ("vae", "text_encoder", "text_encoder_2")
LABELS = {"vae": "VAE (ae.safetensors)", "text_encoder": "CLIP-L text encoder (clip_l.safetensors)",
          "text_encoder_2": "T5-XXL text encoder (t5xxl_*.safetensors)"}
VAE_PREFIXES = ("first_stage_model.", "vae.")
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "double_blocks.", "single_blocks.", "transformer_blocks.")
BUNDLED_PREFIXES = {"vae": VAE_PREFIXES, "text_encoder": ("text_encoders.clip_l.transformer.",),
                    "text_encoder_2": ("text_encoders.t5xxl.transformer.",)}
CLIP_EXTRAS = ("text_projection.weight", "logit_scale", "text_model.embeddings.position_ids")
BFL_VAE_NAMES = (
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"^(encoder|decoder)\.mid\.block_(\d)\.", lambda m: f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}."),
    (r"^(encoder|decoder)\.mid\.attn_1\.norm\.", r"\1.mid_block.attentions.0.group_norm."),
    (r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v)\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"^(encoder|decoder)\.mid\.attn_1\.proj_out\.", r"\1.mid_block.attentions.0.to_out.0."),
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
)
BFL_UP_BLOCK = re.compile(r"^decoder\.up\.(\d+)\.(block|upsample)\.")
# llama.cpp's T5 encoder names (gguf's TensorNameMap) -> transformers'
GGUF_T5_NAMES = (
    (r"^token_embd\.", "shared."), (r"^enc\.output_norm\.", "encoder.final_layer_norm."),
    (r"^enc\.blk\.(\d+)\.attn_(q|k|v|o)\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^enc\.blk\.(\d+)\.attn_rel_b\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^enc\.blk\.(\d+)\.attn_norm\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^enc\.blk\.(\d+)\.ffn_gate\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^enc\.blk\.(\d+)\.ffn_up\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^enc\.blk\.(\d+)\.ffn_down\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^enc\.blk\.(\d+)\.ffn_norm\.", r"encoder.block.\1.layer.1.layer_norm."),
)


def _header(path: Path) -> dict[str, tuple[int, ...]]:
    if is_gguf(path):
        return gguf_shapes(path)
    try:
        with safe_open(path, framework="numpy") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}
    except (OSError, SafetensorError) as error:
        raise ModelLoadError(f"Cannot read the weights file {path} ({error}).") from None


def _renamed(name: str, table) -> str:
    for pattern, replacement in table:
        name = re.sub(pattern, replacement, name)
    return name


def _bfl_vae_names(names: list[str]) -> dict[str, str]:
    """BFL autoencoder name -> diffusers'; the names of an all-in-one checkpoint's VAE keep only their own part."""
    prefix = next((p for p in VAE_PREFIXES if any(name.startswith(p) for name in names)), "")
    names = [name for name in names if name.startswith(prefix)]
    up_blocks = {int(m[1]) for name in names if (m := BFL_UP_BLOCK.match(name[len(prefix):]))}
    renamed = {}
    for name in names:
        new = BFL_UP_BLOCK.sub(lambda m: f"decoder.up_blocks.{len(up_blocks) - 1 - int(m[1])}."
                                         + ("resnets." if m[2] == "block" else "upsamplers.0."),
                               _renamed(name[len(prefix):], BFL_VAE_NAMES))
        renamed[name] = new
    return renamed


def _published_names(names: list[str]) -> dict[str, str]:
    """A split file's names -> the names a FLUX.1 folder's component publishes them under."""
    if "decoder.conv_in.weight" in names or any(name.startswith(VAE_PREFIXES) for name in names):
        return _bfl_vae_names(names)
    if "token_embd.weight" in names:  # a GGUF T5 encoder: its names, and MLX's quantized triplets of them
        return {name: _renamed(name, GGUF_T5_NAMES) for name in names}
    if "embeddings.token_embedding.weight" in names:  # CLIP without the text_model. prefix
        return {name: f"text_model.{name}" for name in names if name not in CLIP_EXTRAS}
    if "encoder.embed_tokens.weight" in names and "shared.weight" not in names:  # T5 storing only the encoder's copy
        return {name: "shared.weight" if name == "encoder.embed_tokens.weight" else name for name in names}
    return {name: name for name in names if name not in CLIP_EXTRAS}


def bundled_parts(names) -> set[str]:
    """The components an all-in-one checkpoint bundles with its transformer (none for any other file)."""
    names = list(names)
    if not any(name.startswith(TRANSFORMER_PREFIXES) for name in names):
        return set()
    return {part for part, prefixes in BUNDLED_PREFIXES.items() if any(name.startswith(prefixes) for name in names)}


def _own_names(names: list[str], part: str | None) -> dict[str, str]:
    """name in the file -> name in its component: each name of a file that holds one component; for an all-in-one
    checkpoint, `part`'s names without their prefix (none when it lacks `part`: a transformer file)."""
    if not any(name.startswith(TRANSFORMER_PREFIXES) for name in names):
        return {name: name for name in names}
    prefix = next((p for p in BUNDLED_PREFIXES.get(part, ()) if any(name.startswith(p) for name in names)), None)
    return {} if prefix is None else {name: name[len(prefix):] for name in names if name.startswith(prefix)}


def _published(names: list[str], part: str | None) -> dict[str, str]:
    """name in the file -> the name a FLUX.1 folder's component publishes it under."""
    own = _own_names(names, part)
    published = _published_names(list(own.values()))
    return {name: published[inner] for name, inner in own.items() if inner in published}


@lru_cache(maxsize=16)
def _shapes(path: Path, mtime_ns: int, part: str | None) -> dict[str, tuple[int, ...]]:
    shapes = _header(path)
    return {new: shapes[old] for old, new in _published(list(shapes), part).items()}


def file_shapes(path: Path, part: str | None = None) -> dict[str, tuple[int, ...]]:
    """The file's tensor shapes (an all-in-one checkpoint's `part`'s) under the published names."""
    path = Path(path)
    return _shapes(path, path.stat().st_mtime_ns, part)


def part_names(names, part: str | None) -> list[str]:
    """The names of `part` ("transformer", or a component it bundles) in an all-in-one checkpoint; else all."""
    names = list(names)
    if part is None or not bundled_parts(names):
        return names
    prefixes = TRANSFORMER_PREFIXES[:1] if part == "transformer" else BUNDLED_PREFIXES[part]
    return [name for name in names if name.startswith(prefixes)]


@lru_cache(maxsize=16)
def _parts(path: Path, mtime_ns: int) -> frozenset[str]:
    try:
        return frozenset(bundled_parts(_header(path)))
    except ModelLoadError:
        return frozenset()


def file_parts(path: Path) -> set[str]:
    """The VAE and text encoders an all-in-one checkpoint holds, from its header (read once per file version: every
    request that names the file asks)."""
    path = Path(path)
    return set(_parts(path, path.stat().st_mtime_ns)) if path.suffix == ".safetensors" else set()


def is_readable(path: Path) -> bool:
    try:
        _header(Path(path))
    except ModelLoadError:
        return False
    return True


def split_file_kind(path: Path) -> str | None:
    """"vae", "text_encoder" (CLIP) or "text_encoder_2" (T5) for such a file, else None (a transformer, a LoRA...)."""
    if Path(path).suffix != ".safetensors" and not is_gguf(path):
        return None
    try:
        kind = component_kind(file_shapes(path))
    except ModelLoadError:
        return None
    return kind if kind in SPLIT_KINDS else None


def file_config(path: Path, part: str | None = None) -> dict:
    """The config.json its component would have (quantized layers, a GGUF T5's, are read from their tensors)."""
    return config_from_shapes(file_shapes(path, part))


def file_weights(path: Path, part: str | None = None, fp8_scales: bool = False) -> dict[str, mx.array]:
    """The file's tensors (an all-in-one checkpoint's `part`'s) under the published names and shapes (what each
    model's `sanitize` reads); a scaled FP8 file's scales beside their matrices with `fp8_scales`."""
    weights = load_gguf(path) if is_gguf(path) else load_safetensors(path, fp8_scales)
    published = {}
    for old, new in _published(list(weights), part).items():
        value = weights[old]
        if ".attentions." in new and value.ndim == 4:  # BFL's 1x1 convolutions: diffusers' linear layers
            value = value.reshape(value.shape[:2])
        published[new] = value
    return published
