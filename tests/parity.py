"""Helpers for whole-image parity with diffusers: shared noise, posterior mean, uint8 comparison."""

import contextlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mflux_core.cli import main as cli_main

UINT8_TOLERANCE = 2  # max |difference| per channel between our PNG and diffusers' image


def make_noise(folder: Path, shape: tuple[int, ...], seed: int) -> Path:
    """Unpacked float32 noise, drawn the way diffusers draws it (torch generator), saved as .npy."""
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    path = folder / f"noise_{seed}_{'x'.join(map(str, shape))}.npy"
    np.save(path, noise.numpy())
    return path


def pack(noise: np.ndarray) -> torch.Tensor:
    b, c, h, w = noise.shape
    x = torch.from_numpy(noise).view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


@contextlib.contextmanager
def deterministic_diffusers(module, noise: np.ndarray | None = None):
    """Make a diffusers pipeline module use the VAE posterior mean and, optionally, our noise."""
    saved = {name: getattr(module, name) for name in ("retrieve_latents", "randn_tensor") if hasattr(module, name)}
    if "retrieve_latents" in saved:
        module.retrieve_latents = lambda output, generator=None, sample_mode="sample": output.latent_dist.mode()
    if noise is not None and "randn_tensor" in saved:
        module.randn_tensor = lambda shape, **kwargs: torch.from_numpy(noise).reshape(shape)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def run_cli(*args) -> Image.Image:
    output = Path(args[args.index("--output") + 1])
    assert not output.exists(), f"{output} is there already: the CLI would write {output.stem}_1{output.suffix}"
    assert cli_main([str(a) for a in args]) == 0
    with Image.open(output) as image:
        return image.convert("RGB")


def max_uint8_diff(ours: Image.Image, reference: Image.Image) -> int:
    a, b = np.asarray(ours, dtype=np.int16), np.asarray(reference.convert("RGB"), dtype=np.int16)
    assert a.shape == b.shape, f"{a.shape} vs {b.shape}"
    return int(np.abs(a - b).max())


def random_image(width, height, seed) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)


def save(image: Image.Image, path):
    image.save(path)
    return path
