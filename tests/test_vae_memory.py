"""The VAE's memory: the estimate against MLX's measured peak, the automatic tiling, tiled vs untiled."""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mflux_core.models.vae import AutoencoderKL, VAEConfig, load_vae
from mflux_core.models.vae_tiles import tile_starts
from mflux_core.models.vae_memory import choose_vae_tiling, vae_peak_bytes

DEMO_VAE = Path(__file__).resolve().parents[1] / "demo_models" / "demo" / "vae"
FLUX_VAE = VAEConfig(
    in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    norm_num_groups=32, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False,
    mid_block_add_attention=True, native_side=1024,
)
ESTIMATE_TOLERANCE = 0.25


@pytest.fixture(scope="module")
def demo_vae():
    return load_vae(DEMO_VAE)


@pytest.fixture(scope="module")
def flux_vae():
    """The full-width FLUX.1 VAE with MLX's random initialisation: memory does not depend on the values."""
    vae = AutoencoderKL(FLUX_VAE)
    mx.eval(vae.parameters())
    return vae


def measured_peak(vae: AutoencoderKL, direction: str, size: int, tile_size: int | None) -> int:
    """MLX's peak bytes above everything alive before the call (weights and input)."""
    c = vae.config
    if direction == "decode":
        x = mx.random.normal((1, c.latent_channels, size // vae.scale_factor, size // vae.scale_factor))
    else:
        x = mx.random.uniform(-1, 1, (1, size, size, c.in_channels))
    mx.eval(x)
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(getattr(vae, direction)(x, tiled=tile_size is not None, tile_size=tile_size or 512))
    return mx.get_peak_memory() - before


@pytest.mark.parametrize("direction", ["decode", "encode"])
@pytest.mark.parametrize("name,size,tile_size", [
    ("demo", 64, None), ("demo", 128, None), ("demo", 256, None), ("demo", 256, 128),
    ("flux", 64, None), ("flux", 128, None),
])
def test_estimate_is_within_a_quarter_of_the_measured_peak(request, direction, name, size, tile_size):
    vae = request.getfixturevalue(f"{name}_vae")
    measured = measured_peak(vae, direction, size, tile_size)
    estimate = vae_peak_bytes(vae.config, size, size, 4, direction, tile_size)
    assert abs(estimate - measured) <= ESTIMATE_TOLERANCE * measured, (estimate, measured)


def test_estimate_grows_with_the_image_and_tiling_bounds_it():
    """Tiled, the decoder's conv_in and mid block still run on the whole latent image (the attention
    sees every pixel, as untiled): at 2048 px that part is the peak, 15% of the untiled one."""
    sizes = [256, 512, 1024, 2048]
    untiled = [vae_peak_bytes(FLUX_VAE, s, s, 4, "decode", None) for s in sizes]
    tiled = [vae_peak_bytes(FLUX_VAE, s, s, 4, "decode", 512) for s in sizes]
    assert untiled == sorted(untiled) and untiled[-1] > 3.5 * untiled[-2]
    assert tiled[-1] < 0.2 * untiled[-1]
    assert vae_peak_bytes(FLUX_VAE, 1024, 1024, 2, "decode", None) < untiled[2]


def test_attention_scores_count_up_to_the_attention_limit():
    """The demo VAE's narrow layers leave its mid-block attention (65,536 tokens at 2048 px) the largest step."""
    from mflux_core.models import kernels

    demo_config = VAEConfig.from_dict(json.loads((DEMO_VAE / "config.json").read_text()))
    previous = kernels.attention_memory()
    try:
        small, large = [], []
        for limit, estimates in ((64 << 20, small), (4 << 30, large)):
            kernels.set_attention_memory(limit)
            estimates.append(vae_peak_bytes(demo_config, 2048, 2048, 4, "decode", None))
    finally:
        kernels.set_attention_memory(previous)
    assert large > small


def test_tiling_is_chosen_only_when_untiled_does_not_fit():
    untiled = vae_peak_bytes(FLUX_VAE, 1024, 1024, 4, "decode", None)
    assert choose_vae_tiling(FLUX_VAE, 1024, 1024, 4, "decode", untiled) is None

    allowance = vae_peak_bytes(FLUX_VAE, 1024, 1024, 4, "decode", 512) - 1
    tile = choose_vae_tiling(FLUX_VAE, 1024, 1024, 4, "decode", allowance)
    assert tile == 384  # the largest that fits
    assert vae_peak_bytes(FLUX_VAE, 1024, 1024, 4, "decode", tile) <= allowance

    assert choose_vae_tiling(FLUX_VAE, 4096, 4096, 4, "encode", 1 << 20) == 64  # nothing fits: the smallest


def test_a_chosen_tile_size_is_accepted_by_decode(demo_vae):
    z = mx.random.normal((1, 16, 24, 24), key=mx.random.key(3))
    tile = choose_vae_tiling(demo_vae.config, 192, 192, 4, "decode", 1)
    assert tile == 64
    assert demo_vae.decode(z, tiled=True, tile_size=tile).shape == (1, 192, 192, 3)


def levels(pixels: mx.array) -> np.ndarray:
    return np.clip((np.array(pixels[0]) + 1) * 127.5, 0, 255)


@pytest.mark.parametrize("seed", [0, 1])
def test_tiles_of_the_demo_vae_leave_no_seam(demo_vae, seed):
    """256x256 from the shipped demo VAE, 128-pixel tiles overlapping by 32.

    Tiled cannot equal untiled: each tile normalises (one group in this VAE), attends and pads on its
    own. Measured mean |tiled - untiled| 3.6-4.1 levels of 255, max 27-37, spread over the tiles'
    interiors rather than their borders; a 64-pixel overlap gives 3.0-4.0, and the whole-image
    GroupNorm statistics shared by all tiles 2.5-2.7 (not shipped: twice the work for little).
    A seam would be a jump between neighbouring pixels at a tile's edge that untiled does not have:
    the largest such jump is no larger there than anywhere else.
    """
    z = mx.random.normal((1, 16, 32, 32), key=mx.random.key(seed))
    untiled, tiled = levels(demo_vae.decode(z)), levels(demo_vae.decode(z, tiled=True, tile_size=128))
    error = np.abs(tiled - untiled).max(axis=-1)
    assert error.mean() <= 4.5 and error.max() <= 40

    jump = np.abs(np.diff(tiled, axis=1) - np.diff(untiled, axis=1)).max(axis=(0, 2))  # across columns
    starts = tile_starts(32, 16, 4)
    edges = sorted({8 * s - 1 for s in starts if s} | {8 * (s + 16) - 1 for s in starts if s + 16 < 32})
    elsewhere = np.delete(jump, edges)
    assert jump[edges].max() <= elsewhere.max()


def test_the_decoder_called_directly_stays_lazy_for_training(demo_vae):
    """encode/decode evaluate band by band; the demo recipe trains `vae.decoder` under mx.compile,
    which cannot evaluate while it traces."""
    z = mx.random.normal((2, 8, 8, 16), key=mx.random.key(4))
    compiled = mx.compile(lambda latents: demo_vae.decoder(latents).square().mean())
    assert mx.allclose(compiled(z), demo_vae.decoder(z).square().mean(), rtol=1e-5)
    loss, grads = mx.value_and_grad(lambda latents: demo_vae.decoder(latents).square().mean())(z)
    assert grads.shape == z.shape
