"""Redux image conditioning vs transformers' SiglipVisionModel / SiglipImageProcessor and diffusers'
ReduxImageEncoder / FluxPriorReduxPipeline, float32, on a tiny random Redux folder in the real layout.

Tolerance: max |ours - reference| <= 1e-5 * max |reference| for model outputs (a save/load round
trip alone moves torch by ~4e-7 relative; exact GELU in place of the tanh form gives 1.6e-4), 2e-5
where the embedder runs at the real width 4096 (dot products of length 12,288); preprocessing must
be bit-identical.
"""

import json

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.models.redux import (
    ReduxEmbedderConfig,
    ReduxEncoder,
    append_redux_tokens,
    combine_redux,
)
from mflux_core.models.siglip import SiglipPreprocessConfig, SiglipVisionConfig, sanitize, siglip_preprocess
from tests.fixtures.tiny_redux import build_tiny_redux

RELATIVE_TOLERANCE = 1e-5
FULL_WIDTH_TOLERANCE = 2e-5


def relative_error(ours: mx.array, reference: torch.Tensor) -> float:
    reference = reference.detach().numpy()
    return float(np.abs(np.array(ours) - reference).max() / np.abs(reference).max())


def sample_images() -> dict[str, Image.Image]:
    rng = np.random.RandomState(0)
    rgba = Image.fromarray(rng.randint(0, 256, (29, 41, 4), dtype=np.uint8), "RGBA")
    palette = Image.fromarray(rng.randint(0, 256, (33, 30, 3), dtype=np.uint8)).quantize(16)
    palette.info["transparency"] = 3
    return {
        "rgb_down": Image.fromarray(rng.randint(0, 256, (45, 60, 3), dtype=np.uint8)),
        "rgb_up": Image.fromarray(rng.randint(0, 256, (20, 17, 3), dtype=np.uint8)),
        "rgb_exact": Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)),
        "rgba": rgba,
        "grey": Image.fromarray(rng.randint(0, 256, (36, 36), dtype=np.uint8), "L"),
        "palette_transparent": palette,
    }


@pytest.fixture(scope="module")
def redux_folder(tmp_path_factory):
    return build_tiny_redux(tmp_path_factory.mktemp("tiny-redux"), text_dim=32)


@pytest.fixture(scope="module")
def redux(redux_folder):
    return ReduxEncoder.from_folder(redux_folder, dtype=mx.float32)


@pytest.fixture(scope="module")
def prior_pipeline(redux_folder):
    from diffusers import FluxPriorReduxPipeline

    return FluxPriorReduxPipeline.from_pretrained(redux_folder, torch_dtype=torch.float32, local_files_only=True)


def test_vision_config_reads_vision_and_full_siglip_configs(redux_folder):
    vision_json = json.loads((redux_folder / "image_encoder" / "config.json").read_text())
    full_json = {"model_type": "siglip", "text_config": {"hidden_size": 7}, "vision_config": vision_json}
    config = SiglipVisionConfig.from_dict(vision_json)
    assert SiglipVisionConfig.from_dict(full_json) == config
    assert (config.hidden_size, config.num_hidden_layers, config.num_patches) == (24, 2, 16)
    published = {  # black-forest-labs/FLUX.1-Redux-dev image_encoder/config.json (defaults omitted)
        "architectures": ["SiglipVisionModel"], "hidden_size": 1152, "image_size": 384,
        "intermediate_size": 4304, "model_type": "siglip_vision_model", "num_attention_heads": 16,
        "num_hidden_layers": 27, "patch_size": 14,
    }
    real = SiglipVisionConfig.from_dict(published)
    assert (real.num_patches, real.hidden_act, real.layer_norm_eps) == (729, "gelu_pytorch_tanh", 1e-6)


def test_sanitize_accepts_files_with_and_without_the_vision_model_prefix(redux_folder):
    prefixed = mx.load(str(redux_folder / "image_encoder" / "model.safetensors"))
    assert all(name.startswith("vision_model.") for name in prefixed)
    assert any(".head." in name for name in prefixed)
    bare = {name.removeprefix("vision_model."): value for name, value in prefixed.items()}
    assert sanitize(prefixed).keys() == sanitize(bare).keys()
    assert not any(name.startswith("head.") for name in sanitize(bare))


def test_preprocessing_is_bit_identical_to_the_transformers_processor(prior_pipeline, redux):
    processor = prior_pipeline.feature_extractor
    for name, image in sample_images().items():
        reference = processor.preprocess(images=image, do_resize=True, return_tensors="pt", do_convert_rgb=True)
        expected = reference.pixel_values.numpy().transpose(0, 2, 3, 1)
        ours = np.array(siglip_preprocess(image, redux.preprocess_config))
        assert ours.dtype == np.float32 and ours.shape == expected.shape == (1, 32, 32, 3), name
        np.testing.assert_array_equal(ours, expected, err_msg=name)


def test_preprocess_config_reads_the_published_file():
    published = {
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor", "image_std": [0.5, 0.5, 0.5], "resample": 3,
        "rescale_factor": 0.00392156862745098, "size": {"height": 384, "width": 384},
    }
    config = SiglipPreprocessConfig.from_dict(published)
    assert (config.height, config.width, config.resample, config.image_mean) == (384, 384, 3, (0.5, 0.5, 0.5))
    with pytest.raises(ModelLoadError, match="shortest_edge"):
        SiglipPreprocessConfig.from_dict({**published, "size": {"shortest_edge": 384}})


def test_siglip_last_hidden_state_matches_transformers(prior_pipeline, redux):
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = prior_pipeline.image_encoder(pixel_values=pixels).last_hidden_state
    ours = redux.image_encoder(mx.array(pixels.numpy().transpose(0, 2, 3, 1)))
    assert ours.shape == tuple(expected.shape) == (2, 16, 24)
    assert relative_error(ours, expected) <= RELATIVE_TOLERANCE


def test_redux_embedder_matches_diffusers(prior_pipeline, redux):
    features = torch.randn(1, 16, 24, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = prior_pipeline.image_embedder(features).image_embeds
    ours = redux.image_embedder(mx.array(features.numpy()))
    assert ours.shape == tuple(expected.shape) == (1, 16, 32)
    assert relative_error(ours, expected) <= RELATIVE_TOLERANCE
    assert ReduxEmbedderConfig.from_dict({"redux_dim": 1152, "txt_in_features": 4096}) == ReduxEmbedderConfig()


def test_encode_image_matches_the_pipeline_and_depends_on_the_image(prior_pipeline, redux):
    images = sample_images()
    tokens = {}
    for name in ("rgb_down", "rgba"):
        with torch.no_grad():
            reference = prior_pipeline.image_embedder(prior_pipeline.encode_image(images[name], "cpu", 1)).image_embeds
        tokens[name] = redux.encode_image(images[name])
        assert tokens[name].shape == (1, 16, 32)
        assert relative_error(tokens[name], reference) <= RELATIVE_TOLERANCE, name
    difference = float(mx.abs(tokens["rgb_down"] - tokens["rgba"]).max() / mx.abs(tokens["rgba"]).max())
    assert difference > 1000 * RELATIVE_TOLERANCE


@pytest.fixture(scope="module")
def prior_pipeline_with_text(prior_pipeline, tiny_dev):
    from diffusers import FluxPriorReduxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

    return FluxPriorReduxPipeline(
        image_encoder=prior_pipeline.image_encoder,
        feature_extractor=prior_pipeline.feature_extractor,
        image_embedder=prior_pipeline.image_embedder,
        text_encoder=CLIPTextModel.from_pretrained(tiny_dev / "text_encoder").eval(),
        tokenizer=CLIPTokenizer.from_pretrained(tiny_dev / "tokenizer"),
        text_encoder_2=T5EncoderModel.from_pretrained(tiny_dev / "text_encoder_2").eval(),
        tokenizer_2=T5TokenizerFast.from_pretrained(tiny_dev / "tokenizer_2"),
    )


@pytest.mark.parametrize(
    "image_names, prompt_scales, pooled_scales",
    [
        (["rgb_down"], [1.0], [1.0]),
        (["rgb_down"], [0.7], [0.4]),
        (["rgb_down", "grey"], [0.8, 0.5], [0.6, 0.9]),
    ],
)
def test_combination_matches_the_prior_redux_pipeline(
    prior_pipeline_with_text, redux, image_names, prompt_scales, pooled_scales
):
    pipeline = prior_pipeline_with_text
    prompt = "a photo of a red cat in the centre"
    images = [sample_images()[name] for name in image_names]
    expected = pipeline(
        image=images if len(images) > 1 else images[0], prompt=prompt,
        prompt_embeds_scale=prompt_scales if len(images) > 1 else prompt_scales[0],
        pooled_prompt_embeds_scale=pooled_scales if len(images) > 1 else pooled_scales[0],
    )
    with torch.no_grad():
        text_embeds, pooled, _ = pipeline.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=512)
    prompt_embeds, pooled_embeds = combine_redux(
        mx.array(text_embeds.numpy()), mx.array(pooled.numpy()),
        [redux.encode_image(image) for image in images], prompt_scales, pooled_scales,
    )
    assert prompt_embeds.shape == tuple(expected.prompt_embeds.shape) == (1, 512 + 16, 32)
    assert pooled_embeds.shape == tuple(expected.pooled_prompt_embeds.shape) == (1, 32)
    assert relative_error(prompt_embeds, expected.prompt_embeds) <= RELATIVE_TOLERANCE
    assert relative_error(pooled_embeds, expected.pooled_prompt_embeds) <= RELATIVE_TOLERANCE


@pytest.fixture(scope="module")
def full_width_redux(tmp_path_factory):
    """Without text encoders the pipeline hard-codes T5 width 4096 and CLIP width 768."""
    from diffusers import FluxPriorReduxPipeline

    folder = build_tiny_redux(tmp_path_factory.mktemp("tiny-redux-4096"), text_dim=4096)
    pipeline = FluxPriorReduxPipeline.from_pretrained(folder, torch_dtype=torch.float32, local_files_only=True)
    return pipeline, ReduxEncoder.from_folder(folder)


@pytest.mark.parametrize(
    "image_names, prompt_scales, pooled_scales",
    [(["rgb_up"], [0.6], [1.0]), (["rgb_up", "palette_transparent"], [1.0, 0.3], [0.5, 2.0])],
)
def test_combination_matches_the_prior_redux_pipeline_without_text_encoders(
    full_width_redux, image_names, prompt_scales, pooled_scales
):
    pipeline, redux = full_width_redux
    images = [sample_images()[name] for name in image_names]
    expected = pipeline(image=images, prompt_embeds_scale=prompt_scales, pooled_prompt_embeds_scale=pooled_scales)
    prompt_embeds, pooled_embeds = combine_redux(
        mx.zeros((1, 512, 4096)), mx.zeros((1, 768)),
        [redux.encode_image(image) for image in images], prompt_scales, pooled_scales,
    )
    assert prompt_embeds.shape == tuple(expected.prompt_embeds.shape) == (1, 512 + 16, 4096)
    assert relative_error(prompt_embeds, expected.prompt_embeds) <= FULL_WIDTH_TOLERANCE
    assert mx.array_equal(pooled_embeds, mx.array(expected.pooled_prompt_embeds.numpy()))


def test_mflux_rule_appends_each_images_scaled_tokens(redux):
    images = sample_images()
    text = mx.random.normal((1, 5, 32), key=mx.random.key(0))
    first, second = redux.encode_image(images["rgb_down"]), redux.encode_image(images["grey"])
    joined = append_redux_tokens(text, [first, second], [0.8, 0.5])
    assert joined.shape == (1, 5 + 2 * 16, 32)
    assert mx.array_equal(joined[:, :5], text)
    assert mx.array_equal(joined[:, 5:21], 0.8 * first) and mx.array_equal(joined[:, 21:], 0.5 * second)
    diffusers_rule, _ = combine_redux(text, mx.zeros((1, 3)), [first], [1.0], [1.0])
    assert mx.array_equal(append_redux_tokens(text, [first], [1.0]), diffusers_rule)
    with pytest.raises(InvalidRequest, match=r"for 2 Redux image\(s\)"):
        append_redux_tokens(text, [first, second], [0.8])
    with pytest.raises(InvalidRequest, match=r"for 1 Redux image\(s\)"):
        combine_redux(text, mx.zeros((1, 3)), [first], [1.0], [1.0, 2.0])


def test_a_missing_part_is_a_clear_load_error(redux_folder, tmp_path):
    partial = tmp_path / "redux"
    partial.mkdir()
    (partial / "image_encoder").symlink_to(redux_folder / "image_encoder")
    with pytest.raises(ModelLoadError, match="image_embedder"):
        ReduxEncoder.from_folder(partial)
