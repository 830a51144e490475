"""Shared test fixtures: tiny random FLUX.1 folders built once per session in the real layouts."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mflux_core  # noqa: E402,F401  (loads OpenBLAS before anything imports mlx.core)
import pytest  # noqa: E402

from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dev(tmp_path_factory):
    """A dev-style tiny FLUX.1 (guidance embedding, dynamic shift)."""
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-dev"), TinyFluxSpec())


@pytest.fixture(scope="session")
def tiny_schnell(tmp_path_factory):
    """A schnell-style tiny FLUX.1 (no guidance embedding, no shift)."""
    spec = TinyFluxSpec(guidance_embeds=False, dynamic_shift=False, seed=1)
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-schnell"), spec)


# Tool variants share the dev fixture's seed, so their VAE and text encoder files are identical
# (the manager must recognise that from the files).
@pytest.fixture(scope="session")
def tiny_fill(tmp_path_factory):
    """FLUX.1-Fill-style: 2 x 16 latent channels + 8*8*4 mask channels in, 16 out."""
    spec = TinyFluxSpec(in_channels=2 * 16 + 4 * 8 * 8, out_channels=16)
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-fill"), spec, "FluxFillPipeline")


@pytest.fixture(scope="session")
def tiny_depth(tmp_path_factory):
    """FLUX.1-Depth-style (FluxControlPipeline): noisy + control latents in, 16 out."""
    spec = TinyFluxSpec(in_channels=2 * 16, out_channels=16)
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-depth"), spec, "FluxControlPipeline")


@pytest.fixture(scope="session")
def tiny_kontext(tmp_path_factory):
    """Kontext-style, with sharper attention so the reference image visibly steers the output."""
    spec = TinyFluxSpec(attention_gain=10.0)
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-kontext"), spec, "FluxKontextPipeline")
