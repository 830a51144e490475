"""`mflux-studio redux` end to end against diffusers, float32, on tiny random FLUX.1-dev and Redux folders.

One image at strength 1 (where mflux's and diffusers' rules for joining image tokens agree): our PNG
must equal FluxPriorReduxPipeline -> FluxPipeline's image, uint8 max |diff| <= 2. Several images with
strengths follow mflux's rule, which no diffusers setting gives: the reference is FluxPipeline fed
[T5; s_1 R_1; s_2 R_2] built in torch from the prior pipeline's own prompt encoder, SigLIP and
embedder, so every model in the chain is still diffusers'/transformers'. Each test also shows that
the Redux input moves diffusers' image by more than 3x the tolerance.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.cli import main
from tests.fixtures.tiny_redux import build_tiny_redux, load_redux_pipelines
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli

CONDITIONING_EFFECT = 3 * UINT8_TOLERANCE
REDUX_GUIDANCE = 2.5  # the tool's default for dev (BFL's cli_redux.py, diffusers' Redux example)
PROMPT = "a photo of a red cat in the centre"


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)


def saved(image: Image.Image, path) -> Image.Image:
    image.save(path)
    return Image.open(path).convert("RGB")


@pytest.fixture(scope="module")
def redux_folder(tmp_path_factory):
    return build_tiny_redux(tmp_path_factory.mktemp("tiny-redux"), text_dim=32)


@pytest.fixture(scope="module")
def pipelines(tiny_dev, redux_folder):
    return load_redux_pipelines(tiny_dev, redux_folder)


def flux_image(pipe, prompt_embeds, pooled_embeds, noise_path, height, width, steps) -> Image.Image:
    return pipe(prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_embeds, height=height, width=width,
                num_inference_steps=steps, guidance_scale=REDUX_GUIDANCE, latents=pack(np.load(noise_path)),
                output_type="pil").images[0]


def mflux_rule_embeddings(prior, images, strengths):
    """[T5; s_1 R_1; ...; s_n R_n] and the unscaled pooled vector, from the prior pipeline's own parts."""
    with torch.no_grad():
        text, pooled, _ = prior.encode_prompt(prompt=PROMPT, prompt_2=None, max_sequence_length=512)
        tokens = [prior.image_embedder(prior.encode_image(image, "cpu", 1)).image_embeds for image in images]
    return torch.cat([text] + [s * t for s, t in zip(strengths, tokens)], dim=1), pooled


@pytest.mark.parametrize("height, width, steps", [(64, 64, 3), (48, 80, 2)])
def test_one_image_matches_the_prior_redux_and_flux_pipelines(pipelines, tiny_dev, redux_folder, tmp_path,
                                                               height, width, steps):
    pipe, prior = pipelines
    image = saved(random_image(48, 40, seed=1), tmp_path / "a.png")
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=2)
    ours = run_cli(
        "redux", "--path", tiny_dev, "--redux-path", redux_folder, "--redux-image-paths", tmp_path / "a.png",
        "--prompt", PROMPT, "--steps", steps, "--height", height, "--width", width, "--init-noise", noise_path,
        "--output", tmp_path / "ours.png",
    )

    def reference(redux_image):
        prior_output = prior(image=redux_image, prompt=PROMPT)
        assert prior_output.prompt_embeds.shape == (1, 512 + 16, 32)
        return flux_image(pipe, prior_output.prompt_embeds, prior_output.pooled_prompt_embeds, noise_path,
                          height, width, steps)

    expected = reference(image)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(random_image(48, 40, seed=3))) > CONDITIONING_EFFECT


def test_two_images_with_strengths_follow_mflux_rule_on_diffusers_parts(pipelines, tiny_dev, redux_folder, tmp_path):
    pipe, prior = pipelines
    images = [saved(random_image(48, 40, seed=4), tmp_path / "a.png"),
              saved(random_image(30, 50, seed=5), tmp_path / "b.png")]
    strengths = [0.8, 0.5]
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=6)
    ours = run_cli(
        "redux", "--path", tiny_dev, "--redux-path", redux_folder,
        "--redux-image-paths", tmp_path / "a.png", tmp_path / "b.png", "--redux-image-strengths", *strengths,
        "--prompt", PROMPT, "--steps", 3, "--height", 64, "--width", 64, "--init-noise", noise_path,
        "--output", tmp_path / "ours.png",
    )

    def reference(image_strengths):
        prompt_embeds, pooled = mflux_rule_embeddings(prior, images, image_strengths)
        assert prompt_embeds.shape == (1, 512 + 2 * 16, 32)
        return flux_image(pipe, prompt_embeds, pooled, noise_path, 64, 64, 3)

    expected = reference(strengths)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    # Each strength must go with its own image: swapping them moves the image well past the tolerance.
    assert max_uint8_diff(expected, reference(strengths[::-1])) > CONDITIONING_EFFECT


def test_the_image_records_the_redux_settings(tiny_dev, redux_folder, tmp_path):
    from mflux_core.metadata import read_metadata_file

    random_image(32, 32, seed=7).save(tmp_path / "a.png")
    run_cli("redux", "--path", tiny_dev, "--redux-path", redux_folder, "--redux-image-paths", tmp_path / "a.png",
            "--prompt", "x", "--steps", 1, "--height", 32, "--width", 32, "--output", tmp_path / "o.png")
    metadata = read_metadata_file(tmp_path / "o.png")
    assert metadata["request"]["redux_image_paths"] == [str(tmp_path / "a.png")]
    assert metadata["request"]["redux_image_strengths"] == [1.0]
    assert metadata["request"]["extra"] == {"redux_path": str(redux_folder)}
    assert metadata["guidance"] == REDUX_GUIDANCE


@pytest.fixture(scope="module")
def wide_redux_folder(tmp_path_factory):
    """Redux weights for a transformer with 48-wide text tokens: they do not fit tiny dev (32)."""
    return build_tiny_redux(tmp_path_factory.mktemp("tiny-redux-48"), text_dim=48)


@pytest.mark.parametrize("case, message", [
    ("no images", "Redux needs at least one reference image: pass --redux-image-paths."),
    ("one strength for two images", "2 Redux images but 1 strengths: give one strength per image."),
    ("strength above 1", "Redux image strength 1.5 is out of range: use 0 (ignore the image) to 1."),
    ("missing image", "does not exist"),
    ("unreadable image", "is not an image, or not in a format Pillow can read."),
    ("weights for another model", "make 48-wide tokens but the model"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_dev, redux_folder, wide_redux_folder, tmp_path, capsys,
                                                       case, message):
    good = tmp_path / "good.png"
    random_image(32, 32, seed=8).save(good)
    (tmp_path / "bad.png").write_bytes(b"this is not a PNG file at all")
    redux_args = {
        "no images": [],
        "one strength for two images": ["--redux-image-paths", good, good, "--redux-image-strengths", 0.5],
        "strength above 1": ["--redux-image-paths", good, "--redux-image-strengths", 1.5],
        "missing image": ["--redux-image-paths", tmp_path / "absent.png"],
        "unreadable image": ["--redux-image-paths", good, tmp_path / "bad.png"],
        "weights for another model": ["--redux-image-paths", good],
    }[case]
    weights = wide_redux_folder if case == "weights for another model" else redux_folder
    output = tmp_path / "out.png"
    code = main([str(a) for a in ["redux", "--path", tiny_dev, "--redux-path", weights, *redux_args, "--prompt", "x",
                                  "--steps", 1, "--height", 32, "--width", 32, "--output", output]])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not output.exists()
