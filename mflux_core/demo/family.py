"""The demo model family: FLUX.1's architecture at tiny width, and the config.json of each component.

The configs are written exactly as the published diffusers / transformers folders write them, and
the MLX modules are built from them through the same `Config.from_dict` the loaders use, so a
trained demo model and a downloaded FLUX.1 go through one code path.
"""

import mlx.core as mx

from mflux_core.models.clip import CLIPTextConfig, CLIPTextModel
from mflux_core.models.controlnet import FluxControlNet, read_controlnet_config
from mflux_core.models.t5 import T5Config, T5Encoder
from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig
from mflux_core.models.vae import AutoencoderKL, VAEConfig

IMAGE_SIZE = 64
NATIVE_SIZE = (IMAGE_SIZE, IMAGE_SIZE)  # (width, height) the family's recipe trains at
LATENT_CHANNELS = 16
VAE_SCALE = 8  # 2 ** (len(block_out_channels) - 1)
PACKED_CHANNELS = 4 * LATENT_CHANNELS  # 64, as in FLUX.1
TEXT_DIM = 64  # T5 d_model = the transformer's joint_attention_dim
POOLED_DIM = 64  # CLIP hidden size = the transformer's pooled_projection_dim
DIFFUSERS_VERSION = "0.42.1"
SHIPPED_DTYPE = mx.float16  # the weights in demo_models/

# Input channels per tool, as FLUX.1's own: base / Kontext 64, Depth 64 + 64, Fill 64 + 64 + 8*8*4.
TOOL_IN_CHANNELS = {
    "base": PACKED_CHANNELS,
    "kontext": PACKED_CHANNELS,
    "depth": 2 * PACKED_CHANNELS,
    "fill": 2 * PACKED_CHANNELS + 4 * VAE_SCALE**2,
}
PIPELINE_CLASSES = {"base": "FluxPipeline", "fill": "FluxFillPipeline", "depth": "FluxControlPipeline",
                    "kontext": "FluxKontextPipeline"}


def vae_config(scaling_factor: float = 1.0, shift_factor: float = 0.0) -> dict:
    return {
        "_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
        "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
        "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 16, 32, 32], "layers_per_block": 1, "norm_num_groups": 1, "act_fn": "silu",
        "sample_size": IMAGE_SIZE, "scaling_factor": scaling_factor, "shift_factor": shift_factor,
        "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True,
        "force_upcast": True,
    }


def transformer_config(tool: str = "base") -> dict:
    return {
        "_class_name": "FluxTransformer2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "patch_size": 1, "in_channels": TOOL_IN_CHANNELS[tool], "out_channels": PACKED_CHANNELS,
        "num_layers": 2, "num_single_layers": 2, "attention_head_dim": 32, "num_attention_heads": 3,
        "joint_attention_dim": TEXT_DIM, "pooled_projection_dim": POOLED_DIM, "guidance_embeds": True,
        "axes_dims_rope": [8, 12, 12],
    }


CONTROLNET_STRENGTH = 0.4  # the ControlNet tool's default strength: the canny ControlNet trains at it
UPSCALER_STRENGTH = 0.6  # the Upscale tool's default strength: the demo upscaler trains at it


def controlnet_config() -> dict:
    """A canny ControlNet in InstantX's layout: the base's first double blocks, no single blocks."""
    base = transformer_config("base")
    return {
        "_class_name": "FluxControlNetModel", "_diffusers_version": DIFFUSERS_VERSION, "patch_size": 1,
        "in_channels": PACKED_CHANNELS, "num_layers": 2, "num_single_layers": 0,
        **{key: base[key] for key in ("attention_head_dim", "num_attention_heads", "joint_attention_dim",
                                      "pooled_projection_dim", "guidance_embeds", "axes_dims_rope")},
        "num_mode": None, "conditioning_embedding_channels": None,
    }


def clip_config(vocab_size: int) -> dict:
    """Special ids as the FLUX.1 repo's text_encoder/config.json has them (eos 2: pool at the highest id)."""
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": vocab_size,
        "hidden_size": POOLED_DIM, "intermediate_size": 4 * POOLED_DIM, "projection_dim": POOLED_DIM,
        "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 77,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "attention_dropout": 0.0, "dropout": 0.0,
        "initializer_factor": 1.0, "initializer_range": 0.02, "bos_token_id": 0, "eos_token_id": 2,
        "pad_token_id": 1, "torch_dtype": "float32",
    }


def t5_config(vocab_size: int) -> dict:
    return {
        "architectures": ["T5EncoderModel"], "model_type": "t5", "vocab_size": vocab_size,
        "d_model": TEXT_DIM, "d_kv": 16, "d_ff": 2 * TEXT_DIM, "num_layers": 2, "num_decoder_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 16, "relative_attention_max_distance": 64,
        "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
        "layer_norm_epsilon": 1e-6, "dropout_rate": 0.0, "initializer_factor": 1.0, "tie_word_embeddings": False,
        "is_encoder_decoder": True, "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
        "torch_dtype": "float32",
    }


SCHEDULER_CONFIG = {
    "_class_name": "FlowMatchEulerDiscreteScheduler", "_diffusers_version": DIFFUSERS_VERSION,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
    "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}


def build_vae(config: dict) -> AutoencoderKL:
    return AutoencoderKL(VAEConfig.from_dict(config))


def build_transformer(config: dict) -> FluxTransformer:
    return FluxTransformer(FluxTransformerConfig.from_dict(config))


def build_controlnet(config: dict) -> FluxControlNet:
    return FluxControlNet(read_controlnet_config(config))


def build_clip(config: dict) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig.from_dict(config))


def build_t5(config: dict) -> T5Encoder:
    return T5Encoder(T5Config.from_dict(config))


def seeded(seed: int, build, config: dict):
    """Build a module with its initial weights drawn from `seed` (MLX's global generator)."""
    mx.random.seed(seed)
    module = build(config)
    mx.eval(module.parameters())
    return module
