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
