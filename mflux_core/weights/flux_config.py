"""The config.json of a FLUX.1 component stored without one (a BFL single file, a ControlNet file, an mflux-saved
folder, ComfyUI's ae / clip_l / t5xxl files), read from its tensor shapes under the published checkpoints' names
(the VAE's convolutions channels-first). What shapes do not tell is FLUX.1's: its RoPE axes, CLIP-L's head size,
the VAE's norm groups and scaling, T5's attention distance, the scheduler by the transformer's kind."""

import re

from mflux_core.errors import ModelLoadError

FLUX1_AXES_DIMS_ROPE = (16, 56, 56)  # FLUX.1's head dim 128 split over (image index, row, column)
MLX_GROUP_SIZES = (32, 64, 128)
CLIP_HEAD_DIM = 64
VAE_NORM_GROUPS = 32
VAE_SCALING = {"scaling_factor": 0.3611, "shift_factor": 0.1159}
T5_MAX_DISTANCE = 128
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "base_image_seq_len": 256,
             "max_image_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
DEV_SCHEDULER = {**SCHEDULER, "shift": 3.0, "use_dynamic_shifting": True}
SCHNELL_SCHEDULER = {**SCHEDULER, "shift": 1.0, "use_dynamic_shifting": False}
# a tensor only each component has, under the published names
COMPONENT_MARKERS = (("transformer", "x_embedder.weight"), ("vae", "decoder.conv_in.weight"),
                     ("text_encoder_2", "shared.weight"),
                     ("text_encoder", "text_model.embeddings.token_embedding.weight"))


def shared_config(image_in: tuple[int, int], text_in: tuple[int, int], pooled_in: tuple[int, int], head_dim: int,
                  axes_dims_rope: tuple[int, ...], layers: tuple[int, int], guidance_embeds: bool) -> dict:
    """The config.json keys a transformer and a ControlNet share, from the (rows, columns) of the image, text and
    pooled input projections, whatever a file calls them."""
    hidden_size, in_channels = image_in
    return {
        "in_channels": in_channels,
        "num_layers": layers[0],
        "num_single_layers": layers[1],
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden_size // head_dim,
        "joint_attention_dim": text_in[1],
        "pooled_projection_dim": pooled_in[1],
        "guidance_embeds": guidance_embeds,
        "axes_dims_rope": list(axes_dims_rope),
    }


def scheduler_config(guidance_embeds: bool) -> dict:
    """FLUX.1-dev's scheduler (shifted by image size) for a transformer with a guidance embedding, else schnell's."""
    return dict(DEV_SCHEDULER if guidance_embeds else SCHNELL_SCHEDULER)


def component_kind(shapes: dict) -> str | None:
    """"transformer", "vae", "text_encoder" (CLIP) or "text_encoder_2" (T5), from the tensor names; None if none."""
    return next((kind for kind, marker in COMPONENT_MARKERS if marker in shapes), None)


def matrix(shapes: dict, bits: int | None, module: str) -> tuple[int, int]:
    """A linear layer's or embedding's (rows, columns), an MLX-quantized one's columns unpacked."""
    try:
        rows, columns = shapes[f"{module}.weight"]
    except (KeyError, ValueError):
        raise ModelLoadError(f"The checkpoint has no matrix {module}.weight.") from None
    return (rows, columns * 32 // bits) if bits and f"{module}.scales" in shapes else (rows, columns)


def count(shapes: dict, prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    return len({int(match.group(1)) for name in shapes if (match := pattern.match(name))})


def group_size(shapes: dict, bits: int) -> int:
    name = next(name for name in shapes if name.endswith(".scales"))
    return matrix(shapes, bits, name.removesuffix(".scales"))[1] // shapes[name][1]


def config_from_shapes(shapes: dict[str, tuple[int, ...]], bits: int | None = None) -> dict:
    """The component's config.json (with our "quantization" entry, weights/quantize.py, for MLX-quantized layers)."""
    kind = component_kind(shapes)
    if kind is None:
        raise ModelLoadError("The checkpoint holds none of FLUX.1's components (transformer, VAE, T5, CLIP).")
    config = {"transformer": transformer_config, "vae": vae_config, "text_encoder_2": t5_config,
              "text_encoder": clip_config}[kind](shapes, bits)
    if bits and any(name.endswith(".scales") for name in shapes):
        size = group_size(shapes, bits)
        if size not in MLX_GROUP_SIZES:
            raise ModelLoadError(f"The checkpoint's {bits}-bit layers come in groups of {size}, which MLX does not "
                                 f"have ({', '.join(map(str, MLX_GROUP_SIZES))}): its bits or shapes are wrong.")
        config["quantization"] = {"bits": bits, "group_size": size}
    return config


def _shape(shapes: dict, name: str) -> tuple[int, ...]:
    try:
        return shapes[name]
    except KeyError:
        raise ModelLoadError(f"The checkpoint has no tensor {name}.") from None


def transformer_config(shapes: dict, bits: int | None) -> dict:
    layers = (count(shapes, "transformer_blocks"), count(shapes, "single_transformer_blocks"))
    block = "transformer_blocks" if layers[0] else "single_transformer_blocks"
    head_dim = _shape(shapes, f"{block}.0.attn.norm_q.weight")[0]
    if head_dim != sum(FLUX1_AXES_DIMS_ROPE):
        raise ModelLoadError(f"This transformer has attention head dim {head_dim}, not FLUX.1's 128.")
    image_in = matrix(shapes, bits, "x_embedder")
    out_channels = matrix(shapes, bits, "proj_out")[0]
    return {"patch_size": 1, "out_channels": None if out_channels == image_in[1] else out_channels,
            **shared_config(image_in, matrix(shapes, bits, "context_embedder"),
                            matrix(shapes, bits, "time_text_embed.text_embedder.linear_1"), head_dim,
                            FLUX1_AXES_DIMS_ROPE, layers,
                            "time_text_embed.guidance_embedder.linear_1.weight" in shapes)}


def vae_config(shapes: dict, bits: int | None) -> dict:
    blocks = count(shapes, "encoder.down_blocks")
    channels = [_shape(shapes, f"encoder.down_blocks.{i}.resnets.0.conv2.weight")[0] for i in range(blocks)]
    if any(width % VAE_NORM_GROUPS for width in channels):
        raise _no_config("VAE", f"blocks of {', '.join(map(str, channels))} channels do not split into the "
                                f"{VAE_NORM_GROUPS} norm groups of FLUX.1's VAE, so its groups")
    return {
        "in_channels": _shape(shapes, "encoder.conv_in.weight")[1],
        "out_channels": _shape(shapes, "decoder.conv_out.weight")[0],
        "latent_channels": _shape(shapes, "decoder.conv_in.weight")[1],
        "block_out_channels": channels,
        "layers_per_block": count(shapes, "encoder.down_blocks.0.resnets"),
        "down_block_types": ["DownEncoderBlock2D"] * blocks,
        "up_block_types": ["UpDecoderBlock2D"] * blocks,
        "norm_num_groups": VAE_NORM_GROUPS,
        "act_fn": "silu",
        "use_quant_conv": "quant_conv.weight" in shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in shapes,
        "mid_block_add_attention": any(".mid_block.attentions." in name for name in shapes),
        **VAE_SCALING,
    }


def t5_config(shapes: dict, bits: int | None) -> dict:
    vocab, width = matrix(shapes, bits, "shared")
    attention = "encoder.block.0.layer.0.SelfAttention"
    buckets, heads = matrix(shapes, bits, f"{attention}.relative_attention_bias")
    feed_forward = "encoder.block.0.layer.1.DenseReluDense"
    gated = f"{feed_forward}.wi_0.weight" in shapes
    return {
        "vocab_size": vocab, "d_model": width, "num_heads": heads,
        "d_kv": matrix(shapes, bits, f"{attention}.q")[0] // heads,
        "d_ff": matrix(shapes, bits, f"{feed_forward}.{'wi_0' if gated else 'wi'}")[0],
        "num_layers": count(shapes, "encoder.block"),
        "relative_attention_num_buckets": buckets, "relative_attention_max_distance": T5_MAX_DISTANCE,
        "feed_forward_proj": "gated-gelu" if gated else "relu", "layer_norm_epsilon": 1e-6,
    }


def clip_config(shapes: dict, bits: int | None) -> dict:
    vocab, width = matrix(shapes, bits, "text_model.embeddings.token_embedding")
    if width % CLIP_HEAD_DIM:
        raise _no_config("CLIP text encoder", f"width {width} does not split into CLIP-L's {CLIP_HEAD_DIM}-wide "
                                              "attention heads, so its heads")
    return {
        "vocab_size": vocab, "hidden_size": width, "num_attention_heads": width // CLIP_HEAD_DIM,
        "intermediate_size": matrix(shapes, bits, "text_model.encoder.layers.0.mlp.fc1")[0],
        "num_hidden_layers": count(shapes, "text_model.encoder.layers"),
        "max_position_embeddings": matrix(shapes, bits, "text_model.embeddings.position_embedding")[0],
        "layer_norm_eps": 1e-5, "hidden_act": "quick_gelu",
        "eos_token_id": 2,  # FLUX.1's config: transformers then pools at the largest id, as mflux does
    }


def _no_config(component: str, why: str) -> ModelLoadError:
    """A component unlike FLUX.1's, stored without the config.json that would say what its shapes do not."""
    return ModelLoadError(f"This file's {component} is not shaped as FLUX.1's: its {why} cannot be read from the file. "
                          "Load it from a diffusers folder, whose config.json says (or name one with --base-model).")
