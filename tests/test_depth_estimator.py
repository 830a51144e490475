"""Depth Anything in MLX against transformers (float32) on a tiny random model saved in the hub layout.

Tolerances: model and end-to-end depth within 1e-5 of the reference's max |value| (measured ~2e-6);
resampling within 1e-6 relative (measured <= 2.5e-7: float32 rounding only); preprocessing within 1e-6 absolute
(measured: identical).
"""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.models.depth import (
    DepthAnythingConfig,
    DepthEstimator,
    depth_to_image,
    model_input_size,
    preprocess,
)
from mflux_core.models.dinov2 import resize_bicubic, resize_bilinear_align_corners
from tests.fixtures.tiny_depth import build_tiny_depth_anything

MODEL_RTOL = 1e-5
RESAMPLE_RTOL = 1e-6


@pytest.fixture(scope="module")
def tiny_depth(tmp_path_factory):
    return build_tiny_depth_anything(tmp_path_factory.mktemp("tiny-depth-anything"))


@pytest.fixture(scope="module")
def reference(tiny_depth):
    from transformers import DepthAnythingForDepthEstimation, DPTImageProcessorPil

    model = DepthAnythingForDepthEstimation.from_pretrained(tiny_depth, dtype=torch.float32).eval()
    return model, DPTImageProcessorPil.from_pretrained(tiny_depth)


@pytest.fixture(scope="module")
def estimator(tiny_depth):
    return DepthEstimator.from_folder(tiny_depth, mx.float32)


def random_photo(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour gradients plus noise, so resizing has something to do."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), dtype=np.int16)
    noisy = base + rng.integers(-20, 21, size=base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize(
    "height, width",
    [(56, 56), (56, 98), (70, 42), (98, 126)],  # trained grid; wide; odd grid (5x3); larger than trained
)
def test_model_matches_transformers(reference, estimator, height, width):
    model, _ = reference
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(height * width))
    with torch.no_grad():
        expected = model(pixel_values=pixels).predicted_depth.numpy()
    ours = np.array(estimator.model(mx.array(pixels.numpy().transpose(0, 2, 3, 1))))
    assert ours.shape == expected.shape == (1, height, width)
    assert relative_error(ours, expected) <= MODEL_RTOL


@pytest.mark.parametrize("size", [(100, 60), (45, 130), (300, 200), (20, 20), (517, 389)])
def test_preprocessing_matches_processor(reference, estimator, size):
    _, processor = reference
    image = random_photo(*size, seed=sum(size))
    expected = processor(images=image, return_tensors="np")["pixel_values"]
    ours = preprocess(image, estimator.preprocess_config)
    assert ours.dtype == np.float32
    assert ours.shape == expected.transpose(0, 2, 3, 1).shape
    assert ours.shape[1] % 14 == 0 and ours.shape[2] % 14 == 0
    np.testing.assert_allclose(ours, expected.transpose(0, 2, 3, 1), rtol=0, atol=1e-6)


def test_input_size_keeps_aspect_ratio(estimator):
    config = estimator.preprocess_config  # target 56x56, multiples of 14
    assert model_input_size(60, 100, config) == (56, 98)  # downscale: fit the side that changes least
    assert model_input_size(200, 300, config) == (56, 84)
    assert model_input_size(20, 40, config) == (28, 56)  # upscale: the longer side reaches 56


@pytest.mark.parametrize("size", [(100, 60), (45, 130)])
def test_estimate_matches_transformers_pipeline(reference, estimator, size):
    """Processor -> model -> post_process_depth_estimation to the photo's size, end to end."""
    model, processor = reference
    image = random_photo(*size, seed=7 * sum(size))
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    expected = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
    expected = expected[0]["predicted_depth"].numpy()
    ours = estimator.estimate(image)
    assert ours.dtype == np.float32
    assert ours.shape == (image.height, image.width) == expected.shape
    assert relative_error(ours, expected) <= MODEL_RTOL


@pytest.mark.parametrize(
    "in_size, out_size",
    [((4, 4), (4, 7)), ((6, 9), (40, 33)), ((40, 33), (7, 5)), ((5, 3), (1, 2)), ((37, 49), (518, 686))],
)
def test_resampling_matches_torch(in_size, out_size):
    x = torch.randn(2, 3, *in_size, generator=torch.Generator().manual_seed(0))
    ours_input = mx.array(x.numpy().transpose(0, 2, 3, 1))
    for mode, ours_fn in (("bicubic", resize_bicubic), ("bilinear", resize_bilinear_align_corners)):
        align = mode == "bilinear"
        expected = torch.nn.functional.interpolate(x, size=out_size, mode=mode, align_corners=align).numpy()
        ours = np.array(ours_fn(ours_input, out_size)).transpose(0, 3, 1, 2)
        assert ours.shape == expected.shape
        assert relative_error(ours, expected) <= RESAMPLE_RTOL, mode


def test_depth_to_image_near_is_white():
    depth = np.random.default_rng(0).uniform(-0.1, 3.0, size=(30, 50)).astype(np.float32)
    image = depth_to_image(depth)
    assert image.mode == "RGB" and image.size == (50, 30)
    pixels = np.asarray(image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    gray = pixels[..., 0]
    assert gray.min() == 0 and gray.max() == 255
    assert gray.flat[depth.argmax()] == 255 and gray.flat[depth.argmin()] == 0
    expected = np.round((depth - depth.min()) / (depth.max() - depth.min()) * 255)
    assert np.abs(gray.astype(np.float32) - expected).max() <= 1
    assert np.all(np.diff(gray.flat[np.argsort(depth, axis=None)].astype(int)) >= 0)  # monotonic


def test_depth_to_image_of_flat_depth_is_black():
    assert np.asarray(depth_to_image(np.full((8, 8), 2.5, np.float32))).max() == 0


def test_metric_models_are_refused(tiny_depth):
    config = json.loads((tiny_depth / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="relative"):
        DepthAnythingConfig.from_dict(dict(config, depth_estimation_type="metric", max_depth=20))


def test_a_photo_past_the_size_limit_is_refused_before_estimating(estimator):
    """The map comes out at the photo's own size, so the photo is held to the limits of a full-size image."""
    with pytest.raises(InvalidRequest, match="4112x16 pixels, past the 4096-pixel limit a side"):
        estimator.estimate(Image.new("RGB", (4112, 16)))


def test_a_folder_that_is_not_a_depth_estimator_is_named_so(tmp_path, capsys):
    """A FLUX.1 model named as the estimator (`save-depth --depth-model demo`) is refused as what it is, rather than
    as a missing config.json."""
    from mflux_core import cli
    from mflux_core.weights.resolve import demo_folder

    photo = tmp_path / "photo.png"
    random_photo(64, 48, seed=1).save(photo)
    assert cli.main(["save-depth", "--depth-model", str(demo_folder("demo")), "--image-path", str(photo),
                     "--output", str(tmp_path / "depth.png")]) == 1
    assert "demo is not a depth estimator (a Depth Anything folder" in capsys.readouterr().err
