"""Fill, Depth and Kontext from the CLI equal diffusers' pipelines in float32 (uint8 max |diff| <= 2).

Each test also checks that the tool's conditioning input moves the reference image far beyond
the tolerance, so a tool that ignored it could not pass.
"""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.fixtures.tiny_flux import load_diffusers_pipeline
from mflux_core.images.masks import filled_from_surroundings
from tests.parity import (
    UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, pack, random_image, run_cli, save,
)

CONDITIONING_EFFECT = 3 * UINT8_TOLERANCE  # a changed conditioning input must move diffusers' image more


@pytest.fixture
def posterior_mean(monkeypatch):
    """diffusers samples the VAE posterior in some pipelines; our engine uses the mean."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)


@pytest.mark.parametrize("height, width, steps", [(64, 64, 3), (48, 80, 2)])
def test_fill_matches_diffusers(tiny_fill, tmp_path, posterior_mean, height, width, steps):
    image = random_image(width, height, seed=1)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 4, height // 4, width // 2 + 5, height // 2 + 9), fill=255)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=3)
    prompt = "a blue square"
    ours = run_cli(
        "fill", "--path", tiny_fill, "--prompt", prompt, "--image-path", save(image, tmp_path / "image.png"),
        "--masked-image-path", save(mask, tmp_path / "mask.png"), "--steps", steps, "--height", height,
        "--width", width, "--guidance", 30, "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    pipe = load_diffusers_pipeline(tiny_fill, "FluxFillPipeline")
    latents = pack(np.load(noise_path))

    def reference(mask_image):
        return pipe(prompt, image=image, mask_image=mask_image, height=height, width=width, num_inference_steps=steps,
                    guidance_scale=30, latents=latents, output_type="pil").images[0]

    expected = reference(mask)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(Image.new("L", (width, height), 255))) > CONDITIONING_EFFECT


@pytest.mark.parametrize("content", ["original", "fill"])
def test_fill_from_the_image_matches_diffusers_with_the_masked_content_as_its_image(tiny_fill, tmp_path, content):
    """An image strength starts from the image (diffusers' `strength` is 1 minus it); masked content "fill" from the
    image with its masked area painted from the colours around it (A1111's), which is what diffusers is given."""
    from diffusers.pipelines.flux import pipeline_flux_fill

    height, width, steps, strength = 48, 64, 4, 0.7
    image = random_image(width, height, seed=11)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((12, 8, 43, 35), fill=255)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=12)
    ours = run_cli(
        "fill", "--path", tiny_fill, "--prompt", "x", "--image-path", save(image, tmp_path / "i.png"),
        "--masked-image-path", save(mask, tmp_path / "m.png"), "--steps", steps, "--guidance", 30,
        "--image-strength", strength, "--masked-content", content, "--init-noise", noise_path,
        "--output", tmp_path / "o.png",
    )
    pipe = load_diffusers_pipeline(tiny_fill, "FluxFillPipeline")

    def reference(start: Image.Image) -> Image.Image:
        with deterministic_diffusers(pipeline_flux_fill, np.load(noise_path)):
            return pipe("x", image=start, mask_image=mask, height=height, width=width, num_inference_steps=steps,
                        guidance_scale=30, strength=1 - strength, output_type="pil").images[0]

    filled = filled_from_surroundings(image, mask)
    expected, other = (reference(filled), reference(image)) if content == "fill" else \
        (reference(image), reference(filled))
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(ours, other) > CONDITIONING_EFFECT


def test_fill_keep_unmasked_restores_pixels_far_from_the_mask(tiny_fill, tmp_path):
    image = random_image(64, 64, seed=2)
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 23, 23), fill=255)
    out = run_cli(
        "fill", "--path", tiny_fill, "--prompt", "x", "--image-path", save(image, tmp_path / "i.png"),
        "--masked-image-path", save(mask, tmp_path / "m.png"), "--steps", 2, "--keep-unmasked",
        "--output", tmp_path / "o.png",
    )
    far = np.ones((64, 64), bool)
    far[:40, :40] = False
    assert np.array_equal(np.asarray(out)[far], np.asarray(image)[far])
    assert max_uint8_diff(out, image) > CONDITIONING_EFFECT


def test_outpaint_grows_the_canvas(tiny_fill, tmp_path):
    image = random_image(32, 32, seed=4)
    out = run_cli(
        "fill", "--path", tiny_fill, "--prompt", "x", "--image-path", save(image, tmp_path / "i.png"),
        "--outpaint-padding", "0,50%,16,0", "--steps", 2, "--output", tmp_path / "o.png",
    )
    assert out.size == (48, 48)


@pytest.mark.parametrize("height, width", [(64, 64), (32, 96)])
def test_depth_matches_diffusers(tiny_depth, tmp_path, posterior_mean, height, width):
    depth = random_image(width, height, seed=5).convert("L").convert("RGB")
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=6)
    prompt = "a red house"
    ours = run_cli(
        "depth", "--path", tiny_depth, "--prompt", prompt, "--depth-image-path", save(depth, tmp_path / "d.png"),
        "--steps", 3, "--height", height, "--width", width, "--guidance", 10, "--init-noise", noise_path,
        "--output", tmp_path / "ours.png",
    )
    pipe = load_diffusers_pipeline(tiny_depth, "FluxControlPipeline")

    def reference(control):
        return pipe(prompt, control_image=control, height=height, width=width, num_inference_steps=3,
                    guidance_scale=10, latents=pack(np.load(noise_path)), output_type="pil").images[0]

    expected = reference(depth)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(Image.new("RGB", (width, height), (255, 255, 255)))) > CONDITIONING_EFFECT


@pytest.mark.parametrize("height, width, reference_size", [(64, 64, (64, 64)), (48, 64, (80, 40))])
def test_kontext_matches_diffusers(tiny_kontext, tmp_path, height, width, reference_size):
    reference_image = random_image(*reference_size, seed=8)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=9)
    prompt = "make it green"
    ours = run_cli(
        "kontext", "--path", tiny_kontext, "--prompt", prompt, "--image-path", save(reference_image, tmp_path / "r.png"),
        "--steps", 3, "--height", height, "--width", width, "--guidance", 2.5, "--init-noise", noise_path,
        "--output", tmp_path / "ours.png",
    )
    import diffusers

    pipe = diffusers.FluxKontextPipeline.from_pretrained(tiny_kontext, torch_dtype=torch.float32, local_files_only=True)

    def reference(image):
        return pipe(image=image, prompt=prompt, height=height, width=width, num_inference_steps=3, guidance_scale=2.5,
                    latents=pack(np.load(noise_path)), max_area=height * width, _auto_resize=False,
                    output_type="pil").images[0]

    expected = reference(reference_image)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(Image.new("RGB", reference_size, (255, 255, 255)))) > CONDITIONING_EFFECT


@pytest.mark.parametrize("reference_size, flags", [((1600, 800), ()), ((96, 48), ("--kontext-auto-resize",))])
def test_kontext_reads_a_reference_at_the_nearest_trained_resolution_as_diffusers(tiny_kontext, tmp_path,
                                                                                   reference_size, flags):
    """A reference larger than Kontext's trained resolution nearest its shape (2:1: 1456x720) is read at that
    resolution, as diffusers' FluxKontextPipeline reads every reference with its defaults (`_auto_resize=True`);
    `--kontext-auto-resize` does so for a smaller one too. (Smaller ones by default: the tests above.)"""
    reference_image = random_image(*reference_size, seed=8)
    height, width = 48, 64
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=9)
    prompt = "make it green"
    ours = run_cli("kontext", "--path", tiny_kontext, "--prompt", prompt, "--image-path",
                   save(reference_image, tmp_path / "r.png"), "--steps", 2, "--height", height, "--width", width,
                   "--guidance", 2.5, "--init-noise", noise_path, *flags, "--output", tmp_path / "ours.png")
    import diffusers

    pipe = diffusers.FluxKontextPipeline.from_pretrained(tiny_kontext, torch_dtype=torch.float32, local_files_only=True)

    def reference(image, **resize):
        return pipe(image=image, prompt=prompt, height=height, width=width, num_inference_steps=2, guidance_scale=2.5,
                    latents=pack(np.load(noise_path)), max_area=height * width, output_type="pil", **resize).images[0]

    expected = reference(reference_image)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(Image.new("RGB", reference_size, (255, 255, 255)))) > CONDITIONING_EFFECT


def test_kontext_without_a_size_makes_the_reference_size_as_read_and_says_so(tiny_kontext, tmp_path, capsys):
    photo = save(random_image(2000, 1000, seed=8), tmp_path / "photo.png")  # read as 2000x992: 2.02:1
    ours = run_cli("kontext", "--path", tiny_kontext, "--prompt", "make it green", "--image-path", photo,
                   "--steps", 1, "--output", tmp_path / "ours.png")
    assert ours.size == (1456, 720)
    said = capsys.readouterr().err
    assert "Reference 2000x1000 read at 1456x720, the Kontext resolution closest to its shape" in said
    small = save(random_image(80, 40, seed=8), tmp_path / "small.png")
    kept = run_cli("kontext", "--path", tiny_kontext, "--prompt", "make it green", "--image-path", small,
                   "--steps", 1, "--output", tmp_path / "kept.png")
    assert kept.size == (80, 32) and "read at" not in capsys.readouterr().err  # its own size, floored to 16


def test_a_kontext_image_made_before_the_reference_resize_replays_as_it_was_made():
    from mflux_core.metadata import request_from_metadata, request_metadata
    from mflux_core.request import GenerationRequest

    made = request_metadata(GenerationRequest(tool="kontext", prompt="x", image_path="r.png", width=80, height=32))
    assert request_from_metadata(made).extra == {}  # today's images: the tool's default
    assert request_from_metadata({**made, "format": 1}).extra == {"kontext_auto_resize": False}
    generated = request_metadata(GenerationRequest(tool="generate", prompt="x"))
    assert request_from_metadata({**generated, "format": 1}).extra == {}


def test_kontext_with_several_references_matches_diffusers_on_them_side_by_side(tiny_kontext, tmp_path):
    """`--image-paths`: the references in a row at the first one's height (Lanczos), as ComfyUI stitches them for
    Kontext, then diffusers' FluxKontextPipeline on that row."""
    first, second = random_image(48, 32, seed=10), random_image(32, 64, seed=11)
    noise_path = make_noise(tmp_path, (1, 4, 4, 8), seed=12)
    prompt = "put them together"
    ours = run_cli(
        "kontext", "--path", tiny_kontext, "--prompt", prompt, "--image-paths", save(first, tmp_path / "a.png"),
        save(second, tmp_path / "b.png"), "--steps", 2, "--guidance", 2.5, "--init-noise", noise_path,
        "--output", tmp_path / "ours.png",
    )
    assert ours.size == (64, 32)  # the row's size when none is asked for
    import diffusers

    pipe = diffusers.FluxKontextPipeline.from_pretrained(tiny_kontext, torch_dtype=torch.float32, local_files_only=True)

    def reference(right: Image.Image):
        row = Image.new("RGB", (64, 32))
        row.paste(first, (0, 0))
        row.paste(right.resize((16, 32), Image.Resampling.LANCZOS), (48, 0))
        return pipe(image=row, prompt=prompt, height=32, width=64, num_inference_steps=2, guidance_scale=2.5,
                    latents=pack(np.load(noise_path)), max_area=64 * 32, _auto_resize=False,
                    output_type="pil").images[0]

    expected = reference(second)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(Image.new("RGB", (32, 64), (255, 255, 255)))) > CONDITIONING_EFFECT


def test_kontext_sized_by_its_stitched_references_says_so(tiny_kontext, tmp_path):
    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest

    first, second = save(random_image(48, 32, seed=10), tmp_path / "a.png"), save(random_image(32, 64, seed=11),
                                                                                   tmp_path / "b.png")
    request = GenerationRequest(tool="kontext", model=str(tiny_kontext), prompt="x", steps=1, image_path=str(first),
                                reference_image_paths=(str(second),))
    manager = ModelManager(models_dir=tmp_path)
    result = manager.generate(request)
    assert result.image.size == (64, 32)
    assert "The output is 64x32, the 2 reference images side by side; set a width and height for another size." \
        in result.notes
    asked = manager.generate(request.with_(width=48, height=32))
    assert asked.image.size == (48, 32) and not any("side by side" in note for note in asked.notes)


def test_tool_refuses_a_model_of_the_wrong_kind(tiny_fill, tiny_depth, tmp_path, capsys):
    from mflux_core.cli import main

    assert main(["generate", "--path", str(tiny_fill), "--prompt", "x", "--steps", "1", "--height", "32",
                 "--width", "32", "--output", str(tmp_path / "x.png")]) == 1
    assert "Fill needs" not in capsys.readouterr().err
    image = save(random_image(32, 32, 1), tmp_path / "i.png")
    assert main(["fill", "--path", str(tiny_depth), "--prompt", "x", "--image-path", str(image), "--masked-image-path",
                 str(image), "--steps", "1", "--output", str(tmp_path / "y.png")]) == 1
    message = capsys.readouterr().err
    assert "Fill needs a FLUX.1-Fill (or a base model: dev, schnell) model" in message
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "y.png").exists()
