"""Fill's inpaint area "Only masked" (A1111's): the box around the mask is diffusers' / A1111's crop region, the
crop is inpainted as diffusers' FluxFillPipeline inpaints it, and everything away from the mask stays the original.
A1111's mask blur: the model paints the blurred mask's half-white shape and the result is composited over its soft
edge."""

import cv2
import numpy as np
import pytest
from diffusers.image_processor import VaeImageProcessor
from PIL import Image, ImageDraw

from mflux_core.cli import main as cli_main
from mflux_core.errors import InvalidRequest
from mflux_core.images.inpaint_area import Box, box_at_aspect, masked_area, processing_size
from mflux_core.images.masks import distance_to_mask, feathered_paste, soft_mask
from mflux_core.metadata import a1111_parameters
from mflux_core.presets import settings_from_a1111
from mflux_core.request import GenerationRequest
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, pack, random_image, run_cli, save
from tests.test_tools_parity import posterior_mean  # noqa: F401 (a fixture)

LANCZOS = Image.Resampling.LANCZOS


def rectangle_mask(size, box) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


@pytest.mark.parametrize("image_size, rectangle, padding, processing", [
    ((160, 112), (100, 20, 130, 50), 12, (48, 32)),  # widened about its centre
    ((160, 112), (100, 20, 130, 50), 12, (32, 96)),  # made taller, pushed down from the top edge
    ((160, 112), (2, 90, 20, 111), 4, (128, 48)),  # at a corner: shifted back inside
    ((300, 80), (140, 10, 160, 70), 32, (64, 64)),  # taller than the image allows: the image's height
    ((96, 96), (10, 10, 80, 20), 0, (16, 64)),  # no padding asked: the feather's (4 px)
])
def test_the_box_is_diffusers_crop_region(image_size, rectangle, padding, processing):
    mask = rectangle_mask(image_size, rectangle)
    box, feather = masked_area(np.asarray(mask) > 127, padding)
    assert feather == 4
    ours = box_at_aspect(box, *processing, image_size)
    assert ours == Box(*VaeImageProcessor.get_crop_region(mask, *processing, pad=max(padding, feather)))


def test_by_default_the_box_is_inpainted_at_its_shape_at_the_models_size():
    assert processing_size(Box(0, 0, 200, 100), 1024) == (1440, 720)
    assert processing_size(Box(10, 10, 74, 74), 64) == (64, 64)


def test_only_the_masked_area_is_inpainted_as_diffusers_and_pasted_back(tiny_fill, tmp_path, posterior_mean, capsys):
    image = random_image(160, 112, seed=3)
    rectangle, padding, width, height = (100, 20, 130, 50), 12, 48, 32
    mask = rectangle_mask(image.size, rectangle)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=5)
    prompt = "a red circle"
    ours = run_cli(
        "fill", "--path", tiny_fill, "--prompt", prompt, "--image-path", save(image, tmp_path / "i.png"),
        "--masked-image-path", save(mask, tmp_path / "m.png"), "--only-masked", padding, "--width", width,
        "--height", height, "--steps", 2, "--guidance", 30, "--init-noise", noise_path, "--output", tmp_path / "o.png",
    )
    assert ours.size == image.size
    assert "Only the masked area was inpainted: 82x55 pixels around the mask, at 48x32" in capsys.readouterr().err

    box = VaeImageProcessor.get_crop_region(mask, width, height, pad=padding)
    pipe = load_diffusers_pipeline(tiny_fill, "FluxFillPipeline")
    crop = pipe(prompt, image=image.crop(box).resize((width, height), LANCZOS),
                mask_image=mask.crop(box).resize((width, height), LANCZOS), height=height, width=width,
                num_inference_steps=2, guidance_scale=30, latents=pack(np.load(noise_path)),
                output_type="pil").images[0]
    expected = image.copy()
    expected.paste(crop.resize((box[2] - box[0], box[3] - box[1]), LANCZOS), box[:2])

    painted = np.asarray(mask) > 127
    inside = np.asarray(ours)[painted].astype(int) - np.asarray(expected)[painted]
    assert np.abs(inside).max() <= UINT8_TOLERANCE
    assert np.abs(np.asarray(image)[painted].astype(int) - np.asarray(expected)[painted]).max() > 3 * UINT8_TOLERANCE
    away = distance_to_mask(painted, 4) > 4  # past the feather
    assert np.array_equal(np.asarray(ours)[away], np.asarray(image)[away])


def test_a_result_larger_than_the_limits_is_refused_before_any_work(tiny_fill, tmp_path, capsys):
    image, mask = Image.new("RGB", (4112, 64)), rectangle_mask((4112, 64), (10, 10, 20, 20))
    code = cli_main(["fill", "--path", str(tiny_fill), "--prompt", "x", "--image-path",
                     str(save(image, tmp_path / "i.png")), "--masked-image-path", str(save(mask, tmp_path / "m.png")),
                     "--only-masked", "--steps", "1", "--output", str(tmp_path / "o.png")])
    assert code == 1
    assert "The result (only the masked area is inpainted; the image keeps its size) would be 4112x64 pixels" in \
        capsys.readouterr().err


def test_only_masked_belongs_to_fill_and_travels_in_a1111_parameters():
    with pytest.raises(InvalidRequest, match="Inpainting only the masked area is for the fill tool, not depth"):
        GenerationRequest(tool="depth", only_masked_padding=8).validated()
    with pytest.raises(InvalidRequest, match="Only masked padding"):
        GenerationRequest(tool="fill", only_masked_padding=-1).validated()
    request = GenerationRequest(tool="fill", prompt="a cat", steps=20, width=512, height=512, only_masked_padding=24)
    text = a1111_parameters(request)
    assert "Inpaint area: Only masked, Masked area padding: 24" in text
    assert settings_from_a1111(text)["only_masked_padding"] == 24
    forge = "a cat\nSteps: 20, Seed: 1, Size: 512x512, Denoising strength: 0.75, Inpaint area: Only masked"
    restored = settings_from_a1111(forge)
    assert restored["only_masked_padding"] == 32 and restored["image_strength"] == 0.25  # A1111's default padding
    assert "only_masked_padding" not in settings_from_a1111("a cat\nSteps: 20, Seed: 1, Size: 512x512")


def a1111_blurred(mask: Image.Image, blur: int) -> np.ndarray:
    """The mask as A1111's img2img blurs it (processing.py: cv2.GaussianBlur, its kernel size), in [0, 1]."""
    kernel = 2 * int(2.5 * blur + 0.5) + 1
    return cv2.GaussianBlur(np.asarray(mask), (kernel, kernel), blur).astype(np.float32) / 255.0


@pytest.mark.parametrize("only_masked", [False, True])
def test_mask_blur_paints_the_blurred_masks_shape_and_composites_over_its_soft_edge(only_masked, tiny_fill, tmp_path,
                                                                                    posterior_mean):
    image, blur = random_image(96, 64, seed=4), 3
    mask = rectangle_mask(image.size, (30, 20, 60, 44))
    noise_path = make_noise(tmp_path, (1, 4, 64 // 8, 96 // 8), seed=6)
    ours = run_cli(
        "fill", "--path", tiny_fill, "--prompt", "a red circle", "--image-path", save(image, tmp_path / "i.png"),
        "--masked-image-path", save(mask, tmp_path / "m.png"), "--mask-blur", blur, "--keep-unmasked",
        *(("--only-masked", 40, "--width", 96, "--height", 64) if only_masked else ()), "--steps", 2, "--guidance", 30,
        "--init-noise", noise_path, "--output", tmp_path / "o.png")
    blurred = np.asarray(soft_mask(mask, blur), dtype=np.float32) / 255.0
    assert np.abs(blurred - a1111_blurred(mask, blur)).max() <= 2 / 255  # A1111's kernel is cut at 2.5 sigma, ours at 3
    painted = blurred >= 0.5  # the blurred mask binarized, as diffusers binarizes what it is given
    pipe = load_diffusers_pipeline(tiny_fill, "FluxFillPipeline")
    binary_mask = Image.fromarray(np.where(painted, 255, 0).astype(np.uint8))
    generated = pipe("a red circle", image=image, mask_image=binary_mask,
                     height=64, width=96, num_inference_steps=2, guidance_scale=30,
                     latents=pack(np.load(noise_path)), output_type="pil").images[0]
    expected = np.asarray(feathered_paste(image, generated, painted, 4, blurred)).astype(int)
    ours = np.asarray(ours).astype(int)
    assert np.abs(ours - expected).max() <= UINT8_TOLERANCE
    soft_edge = (distance_to_mask(painted, 8) > 4) & (distance_to_mask(painted, 8) <= 6)  # past the feather
    assert np.abs(ours - np.asarray(image).astype(int))[soft_edge].max() > 10
    away = distance_to_mask(painted, 3 * blur + 2) > 3 * blur + 2
    assert np.array_equal(ours[away], np.asarray(image)[away])


def test_mask_blur_belongs_to_fill_and_travels_in_a1111_parameters():
    with pytest.raises(InvalidRequest, match="A mask blur is for the fill tool, not generate"):
        GenerationRequest(tool="generate", mask_blur=4).validated()
    with pytest.raises(InvalidRequest, match="Mask blur"):
        GenerationRequest(tool="fill", mask_blur=65).validated()
    request = GenerationRequest(tool="fill", prompt="a cat", steps=20, width=512, height=512, mask_blur=4)
    assert "Mask blur: 4" in a1111_parameters(request)
    assert settings_from_a1111(a1111_parameters(request))["mask_blur"] == 4
    assert "Mask blur" not in a1111_parameters(request.with_(mask_blur=0))

