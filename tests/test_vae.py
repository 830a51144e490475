"""The MLX VAE against diffusers' AutoencoderKL in float32, on tiny random checkpoints loaded from disk.

Parity tolerance: max |ours - diffusers| <= 1e-4 * max |diffusers| (NOTES.md: a save/load round trip
alone moves torch outputs by ~1e-6 relative).
"""

import json
import re

import mlx.core as mx
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as ReferenceVAE
from mlx.utils import tree_flatten
from safetensors.torch import load_file, save_file

from mflux_core.demo.shapes import random_scene, render
from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.models.conv_choice import method_for
from mflux_core.models.vae import VAEConfig, load_vae
from mflux_core.models.vae_tiles import blend_tiles
from mflux_core.weights.resolve import demo_models_dir
from tests.fixtures.vae_fixtures import build_tiny_vae_folder

PARITY_RTOL = 1e-4

TWO_BLOCKS_QUANT_CONV = dict(
    in_channels=3, out_channels=3, latent_channels=3, block_out_channels=(8, 16), layers_per_block=2,
    norm_num_groups=4, use_quant_conv=True, use_post_quant_conv=True, scaling_factor=0.5, shift_factor=None,
)
THREE_BLOCKS_NO_ATTENTION = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 16), layers_per_block=1,
    norm_num_groups=4, use_quant_conv=False, use_post_quant_conv=True, scaling_factor=0.8, shift_factor=-0.2,
    mid_block_add_attention=False,
)
WIDE_ENOUGH_FOR_WINOGRAD = dict(  # 64 channels: the CPU runs its 3x3 layers by Winograd (conv_choice.py)
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(64, 64), layers_per_block=1,
    norm_num_groups=32, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.36, shift_factor=0.1,
)


@pytest.fixture(scope="module")
def vae_folders(tiny_dev, tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    return {
        "flux": tiny_dev / "vae",
        "two_blocks_quant_conv_old_names": build_tiny_vae_folder(
            root / "two", seed=3, old_attention_names=True, **TWO_BLOCKS_QUANT_CONV
        ),
        "three_blocks_no_attention": build_tiny_vae_folder(root / "three", seed=4, **THREE_BLOCKS_NO_ATTENTION),
        "wide_enough_for_winograd": build_tiny_vae_folder(root / "wide", seed=5, **WIDE_ENOUGH_FOR_WINOGRAD),
    }


def reference_encode(vae: ReferenceVAE, pixels_nchw: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        mean = vae.encode(pixels_nchw).latent_dist.mean
    shift = vae.config.shift_factor or 0.0
    return ((mean - shift) * vae.config.scaling_factor).numpy()


def reference_decode(vae: ReferenceVAE, latents: torch.Tensor) -> np.ndarray:
    shift = vae.config.shift_factor or 0.0
    with torch.no_grad():
        return vae.decode(latents / vae.config.scaling_factor + shift).sample.permute(0, 2, 3, 1).numpy()


def relative_error(ours: mx.array, reference: np.ndarray) -> float:
    assert ours.shape == reference.shape
    return float(np.abs(np.array(ours) - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", ["flux", "two_blocks_quant_conv_old_names", "three_blocks_no_attention",
                                  "wide_enough_for_winograd"])
@pytest.mark.parametrize("batch,height,width", [(1, 64, 96), (2, 48, 32)])
def test_encode_and_decode_match_diffusers(vae_folders, name, batch, height, width):
    folder = vae_folders[name]
    reference = ReferenceVAE.from_pretrained(folder).eval()
    vae = load_vae(folder)
    f = vae.scale_factor
    assert f == 2 ** (len(reference.config.block_out_channels) - 1)
    methods = {method_for(w.shape, 1, w.dtype) for key, w in tree_flatten(vae.parameters()) if key.endswith("conv1.weight")}
    assert ("winograd" in methods) == (name == "wide_enough_for_winograd")
    generator = torch.Generator().manual_seed(height + width)

    pixels = torch.rand(batch, 3, height, width, generator=generator) * 2 - 1
    latents = vae.encode(mx.array(pixels.permute(0, 2, 3, 1).numpy()))
    assert relative_error(latents, reference_encode(reference, pixels)) <= PARITY_RTOL

    z = torch.randn(batch, reference.config.latent_channels, height // f, width // f, generator=generator)
    decoded = vae.decode(mx.array(z.numpy()))
    assert decoded.shape == (batch, height, width, 3)
    assert relative_error(decoded, reference_decode(reference, z)) <= PARITY_RTOL


@pytest.mark.parametrize("tiled", [False, True])
def test_half_precision_decodes_and_encodes_as_float32_does(vae_folders, tiled):
    """float16 at 256 px, whole and in tiles (their shared statistics): MLX sums float16 into float16, so GroupNorm's
    sums over a 128 px layer overflowed, and the SiLU's tanh polynomial overflowed too; every pixel came out NaN (a
    black image). Measured since: 0.4-0.6% of the largest value off float32 (half precision's own rounding)."""
    full, half = load_vae(vae_folders["flux"]), load_vae(vae_folders["flux"], dtype=mx.float16)
    z = mx.random.normal((1, 4, 32, 32), key=mx.random.key(1))
    expected = full.decode(z, tiled=tiled, tile_size=128)
    decoded = half.decode(z.astype(mx.float16), tiled=tiled, tile_size=128)
    assert decoded.dtype == mx.float16 and relative_error(decoded.astype(mx.float32), expected) <= 1e-2
    pixels = mx.clip(expected, -1, 1)
    latents = half.encode(pixels.astype(mx.float16), tiled=tiled, tile_size=128).astype(mx.float32)
    assert relative_error(latents, full.encode(pixels, tiled=tiled, tile_size=128)) <= 1e-2


def test_tiled_decode_and_encode_stay_close_to_untiled(vae_folders):
    """A 3x4 grid of 64-pixel tiles overlapping by 32 over a 128x160 image of this random model. Measure:
    mean |tiled - untiled| over the untiled output's range. With the whole image's statistics and
    attention (vae_tiles) this measured 1.0% (decode) and 2.8% (encode); tiles with their own gave 1.9%
    and 4.3%, diffusers' own tiling (64-pixel tiles, 16 overlap) 2.8% and 5.6%."""
    vae = load_vae(vae_folders["flux"])
    z = mx.random.normal((1, 4, 16, 20), key=mx.random.key(0))
    untiled = vae.decode(z)
    tiled = vae.decode(z, tiled=True, tile_size=64, tile_overlap=32)
    assert tiled.shape == untiled.shape == (1, 128, 160, 3)
    assert float(mx.abs(tiled - untiled).mean()) <= 0.015 * float(untiled.max() - untiled.min())

    pixels = mx.clip(untiled, -1, 1)
    latents = vae.encode(pixels)
    tiled_latents = vae.encode(pixels, tiled=True, tile_size=64, tile_overlap=32)
    assert tiled_latents.shape == latents.shape == (1, 4, 16, 20)
    assert float(mx.abs(tiled_latents - latents).mean()) <= 0.04 * float(latents.max() - latents.min())


def test_tiles_keep_the_colours_of_the_untiled_decode():
    """The demo VAE decoding a 4x4 mosaic of shape scenes (256x256) in 128-pixel tiles overlapping by
    32, against the untiled decode, in levels of 255: measured mean 0.74, max 11.5, 99th percentile 3.7
    (tiles normalising on their own: 7.3, 79 and 39.5)."""
    vae = load_vae(demo_models_dir() / "demo" / "vae")
    rng = np.random.default_rng(0)
    mosaic = np.concatenate([np.concatenate([render(random_scene(rng), 64) for _ in range(4)], axis=1)
                             for _ in range(4)])
    latents = vae.encode(mx.array(mosaic.astype(np.float32) / 127.5 - 1)[None])

    def levels(pixels: mx.array) -> np.ndarray:
        return np.clip((np.array(pixels[0]) + 1) * 127.5, 0, 255)

    error = np.abs(levels(vae.decode(latents, tiled=True, tile_size=128, tile_overlap=32)) - levels(vae.decode(latents)))
    assert error.mean() <= 1.0 and np.percentile(error, 99) <= 5 and error.max() <= 16


def test_tiling_with_one_tile_covering_the_image_is_exact(vae_folders):
    vae = load_vae(vae_folders["flux"])
    z = mx.random.normal((1, 4, 8, 12), key=mx.random.key(1))
    assert mx.array_equal(vae.decode(z, tiled=True, tile_size=128, tile_overlap=64), vae.decode(z))


def test_blending_reassembles_a_local_function_exactly():
    """With a function that maps each input cell to its own output block, overlapping tiles agree
    wherever they overlap, so any weighting error would show."""
    x = mx.random.normal((2, 36, 52, 3), key=mx.random.key(2))

    def upsample_and_shift(t):
        return mx.repeat(mx.repeat(t, 4, axis=1), 4, axis=2) * 3 + 1

    whole = upsample_and_shift(x)
    for tile, overlap in [(8, 3), (10, 0), (16, 15), (40, 8)]:
        tiled = blend_tiles(upsample_and_shift, x, tile, overlap, in_scale=1, out_scale=4)
        assert float(mx.abs(tiled - whole).max()) <= 1e-5 * float(mx.abs(whole).max())


def test_bad_tile_sizes_are_rejected(vae_folders):
    vae = load_vae(vae_folders["flux"])
    z = mx.zeros((1, 4, 8, 8))
    with pytest.raises(InvalidRequest, match="multiples of 8"):
        vae.decode(z, tiled=True, tile_size=60, tile_overlap=16)
    with pytest.raises(InvalidRequest, match="overlap smaller"):
        vae.decode(z, tiled=True, tile_size=64, tile_overlap=64)


def test_config_reads_flux_values_and_rejects_other_block_types(vae_folders):
    config = VAEConfig.from_dict(json.loads((vae_folders["flux"] / "config.json").read_text()))
    assert (config.latent_channels, config.block_out_channels, config.layers_per_block) == (4, (8, 16, 16, 16), 1)
    assert (config.scaling_factor, config.shift_factor) == (0.3611, 0.1159)
    assert not config.use_quant_conv and not config.use_post_quant_conv
    with pytest.raises(ModelLoadError, match="down_block_types"):
        VAEConfig.from_dict({"block_out_channels": [8], "down_block_types": ["AttnDownEncoderBlock2D"]})


def test_wrong_shaped_tensor_is_a_load_error_naming_it(vae_folders, tmp_path):
    source = vae_folders["flux"]
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text((source / "config.json").read_text())
    state = load_file(source / "diffusion_pytorch_model.safetensors")
    name = "decoder.up_blocks.1.resnets.0.conv2.weight"
    state[name] = state[name][:, :8].contiguous()
    save_file(state, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=re.escape(name)):
        load_vae(folder)
