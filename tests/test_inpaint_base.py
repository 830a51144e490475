"""Fill on a base model (dev, schnell, a finetune: no mask input): diffusers' FluxInpaintPipeline, whose latents
outside the mask are the image's, noised to each next step. Whole images equal diffusers' (float32, uint8 max |diff|
<= 2) from noise and from the image; the page's Fill tab and the A1111 API run it on a base checkpoint."""

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mflux_core.errors import InvalidRequest
from mflux_core.images.masks import filled_from_surroundings
from mflux_core.manager import ModelManager
from mflux_core.request import GenerationRequest
from tests.parity import UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, random_image, run_cli
from tests.test_inpaint_area import save

HEIGHT, WIDTH, STEPS = 64, 48, 4
PROMPT = "a green star on a red background"
KEPT_EFFECT = 10  # outside the mask the image is kept; inside, the model paints more than this away from it


def mask_image() -> Image.Image:
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    ImageDraw.Draw(mask).rectangle((8, 16, 35, 47), fill=255)
    return mask


@pytest.fixture(scope="module")
def diffusers_test_model(tmp_path_factory):
    """diffusers' own FLUX.1 test components: a VAE that does not downsample, one latent channel."""
    from tests.fixtures.tiny_flux import build_tiny_flux
    from tests.test_generate_parity import DIFFUSERS_TEST_SPEC

    return build_tiny_flux(tmp_path_factory.mktemp("diffusers-test-pipe"), DIFFUSERS_TEST_SPEC)


@pytest.mark.parametrize("model, image_strength, content", [("tiny_dev", None, None), ("tiny_dev", 0.3, None),
                                                            ("tiny_dev", 0.3, "fill"),
                                                            ("diffusers_test_model", 0.5, None)])
def test_a_base_model_inpaints_as_diffusers_flux_inpaint_pipeline(model, image_strength, content, tmp_path, request):
    """With masked content "fill" A1111 starts from (and keeps outside the mask) the image with its masked area
    painted from the colours around it: diffusers' pipeline given that image."""
    import diffusers
    import torch
    from diffusers.pipelines.flux import pipeline_flux_inpaint

    folder = request.getfixturevalue(model)
    image, mask = random_image(WIDTH, HEIGHT, seed=3), mask_image()
    scale, channels = (8, 4) if model == "tiny_dev" else (1, 1)
    noise = make_noise(tmp_path, (1, channels, HEIGHT // scale, WIDTH // scale), seed=12)
    strength = [] if image_strength is None else ["--image-strength", image_strength]
    strength += [] if content is None else ["--masked-content", content]
    ours = run_cli("fill", "--path", folder, "--prompt", PROMPT, "--image-path", save(image, tmp_path / "i.png"),
                   "--masked-image-path", save(mask, tmp_path / "m.png"), "--steps", STEPS, "--guidance", 3.5,
                   "--init-noise", noise, "--dtype", "float32", *strength, "--output", tmp_path / "ours.png")
    pipe = diffusers.FluxInpaintPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)

    def reference(start: Image.Image) -> Image.Image:
        with deterministic_diffusers(pipeline_flux_inpaint, np.load(noise)):
            return pipe(PROMPT, image=start, mask_image=mask, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
                        guidance_scale=3.5, strength=1.0 if image_strength is None else 1 - image_strength,
                        output_type="pil").images[0]

    filled = filled_from_surroundings(image, mask) if content == "fill" else image
    assert max_uint8_diff(ours, reference(filled)) <= UINT8_TOLERANCE
    if content == "fill":  # the start the masked content chose shows in the image
        assert max_uint8_diff(ours, reference(image)) > KEPT_EFFECT
    inside = np.asarray(mask) == 255
    changed = np.abs(np.asarray(ours, np.int16) - np.asarray(image, np.int16)).max(axis=-1)
    assert changed[inside].max() > KEPT_EFFECT


def test_on_a_base_model_fill_defaults_to_its_guidance_keeps_the_rest_and_refuses_other_kinds(tiny_dev, tiny_depth,
                                                                                              tmp_path):
    image, mask = random_image(WIDTH, HEIGHT, seed=4), mask_image()
    request = GenerationRequest(tool="fill", model=str(tiny_dev), prompt=PROMPT, steps=2, seed=1, keep_unmasked=True,
                                image_path=str(save(image, tmp_path / "i.png")),
                                masked_image_path=str(save(mask, tmp_path / "m.png")))
    manager = ModelManager()
    result = manager.generate(request)
    assert result.request.guidance == 3.5  # a base model's, not FLUX.1-Fill's 30
    far = np.ones((HEIGHT, WIDTH), bool)
    far[8:56, 0:44] = False  # the mask and its feathered edge
    assert np.array_equal(np.asarray(result.image)[far], np.asarray(image)[far])
    from_noise = manager.generate(request.with_(extra={"masked_content": "fill"}))  # no image strength to start from
    assert "Masked content 'fill' needs an image strength above 0: the masked area started from noise." in \
        from_noise.notes and np.array_equal(np.asarray(from_noise.image), np.asarray(result.image))
    with pytest.raises(InvalidRequest, match=r"^The masked content 'latent nothing' is not one Fill has: use original "
                                             r"or fill\.$"):
        manager.generate(request.with_(image_strength=0.5, extra={"masked_content": "latent nothing"}))
    with pytest.raises(InvalidRequest, match=r"takes \d+ input channels per token; Fill needs a FLUX.1-Fill \(or a "
                                             r"base model: dev, schnell\) model"):
        manager.generate(request.with_(model=str(tiny_depth)))
