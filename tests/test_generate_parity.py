"""Whole images from `mflux-studio generate` equal diffusers' FluxPipeline / FluxImg2ImgPipeline (float32)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux, load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, pack, run_cli

LATENT_CHANNELS = 4
VAE_SCALE = 8


def noise_for(tmp_path, height, width, seed):
    return make_noise(tmp_path, (1, LATENT_CHANNELS, height // VAE_SCALE, width // VAE_SCALE), seed)


@pytest.mark.parametrize(
    "variant, height, width, steps, guidance",
    [("dev", 64, 64, 4, 3.5), ("dev", 48, 80, 3, 5.0), ("schnell", 64, 32, 2, None), ("schnell", 32, 96, 4, None)],
)
def test_text_to_image_matches_diffusers(request, tmp_path, variant, height, width, steps, guidance):
    folder = request.getfixturevalue(f"tiny_{variant}")
    noise_path = noise_for(tmp_path, height, width, seed=steps)
    prompt = "a red circle in the top left on a blue background"
    args = ["generate", "--path", folder, "--prompt", prompt, "--steps", steps, "--height", height,
            "--width", width, "--init-noise", noise_path, "--dtype", "float32", "--output", tmp_path / "ours.png"]
    if guidance is not None:
        args += ["--guidance", guidance]
    ours = run_cli(*args)

    pipe = load_diffusers_pipeline(folder)
    reference = pipe(
        prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance or 3.5,
        latents=pack(np.load(noise_path)), output_type="pil",
    ).images[0]
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


@pytest.mark.parametrize("image_strength, steps", [(0.4, 4), (0.75, 6)])
def test_image_to_image_matches_diffusers(tiny_dev, tmp_path, image_strength, steps):
    import diffusers
    from diffusers.pipelines.flux import pipeline_flux_img2img

    height, width = 64, 48
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 256, (80, 56, 3), dtype=np.uint8))  # resized by both sides
    init_path = tmp_path / "init.png"
    init.save(init_path)
    noise_path = noise_for(tmp_path, height, width, seed=7)
    prompt = "a green star on the right"
    ours = run_cli(
        "generate", "--path", tiny_dev, "--prompt", prompt, "--steps", steps, "--height", height, "--width", width,
        "--image-path", init_path, "--image-strength", image_strength, "--init-noise", noise_path,
        "--guidance", 4.0, "--resize-mode", "just resize", "--output", tmp_path / "ours.png",  # diffusers stretches
    )

    pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)
    with deterministic_diffusers(pipeline_flux_img2img, np.load(noise_path)):
        reference = pipe(
            prompt, image=init, height=height, width=width, strength=1 - image_strength, num_inference_steps=steps,
            guidance_scale=4.0, output_type="pil",
        ).images[0]
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE


def test_seeded_runs_are_deterministic_and_seed_dependent(tiny_schnell, tmp_path):
    common = ["generate", "--path", tiny_schnell, "--prompt", "a cat", "--steps", 2, "--height", 32, "--width", 32]
    first = run_cli(*common, "--seed", 5, "--output", tmp_path / "a.png")
    again = run_cli(*common, "--seed", 5, "--output", tmp_path / "b.png")
    other = run_cli(*common, "--seed", 6, "--output", tmp_path / "c.png")
    assert max_uint8_diff(first, again) == 0
    assert max_uint8_diff(first, other) > 10


# diffusers' own FLUX.1 test components (tests/pipelines/flux): a one-block VAE (no downsampling) with one latent
# channel and a group norm of one group, a GELU CLIP of five layers, and a plain ReLU T5 (hf-internal-testing's).
DIFFUSERS_TEST_SPEC = TinyFluxSpec(
    latent_channels=1, vae_blocks=(4,), vae_norm_groups=1, vae_scaling_factor=1.5035, vae_shift_factor=0.0609,
    num_layers=1, num_single_layers=1, axes_dims_rope=(4, 4, 8), clip_layers=5, clip_activation="gelu",
    t5_layers=5, t5_feed_forward="relu", t5_buckets=8,
)


def test_diffusers_own_test_pipeline_shapes_match_diffusers(tmp_path):
    folder = build_tiny_flux(tmp_path / "diffusers-test-pipe", DIFFUSERS_TEST_SPEC)
    height, width, steps = 32, 48, 3
    noise_path = make_noise(tmp_path, (1, 1, height, width), seed=4)
    prompt = "a blue square at the bottom"
    ours = run_cli("generate", "--path", folder, "--prompt", prompt, "--steps", steps, "--height", height,
                   "--width", width, "--init-noise", noise_path, "--guidance", 3.5, "--output", tmp_path / "ours.png")

    pipe = load_diffusers_pipeline(folder)
    reference = pipe(
        prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=3.5,
        latents=pack(np.load(noise_path)), output_type="pil",
    ).images[0]
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE
    # with no size, diffusers' default: 128 latent pixels a side, here 128x128 (not FLUX.1's 1024: 262k tokens)
    unsized = run_cli("generate", "--path", folder, "--prompt", prompt, "--steps", 1, "--output", tmp_path / "u.png")
    assert unsized.size == pipe(prompt, num_inference_steps=1, output_type="pil").images[0].size == (128, 128)
