"""The shipped demo Redux (demo_models/demo-redux): the published repo's layout as transformers and diffusers load
it, our encoder against theirs, the Redux tool's default on the demo models offline, and a floor on how much of a
held-out reference picture (its shape's and background's colours, the shape's place) an empty prompt carries into the
result."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.evaluate import EVALUATION_SEED, reference_carried
from mflux_core.models.redux import ReduxEncoder
from mflux_core.request import GenerationRequest
from mflux_core.weights.resolve import demo_models_dir
from tests.fixtures.shape_classifier import classify
from tests.test_demo_offline import FAST, manager, offline  # noqa: F401  (fixtures)

PARITY_RTOL = 1e-5  # the shipped float32 folder in transformers + diffusers vs ours (measured 5-8e-7 of the largest token)
FLOOR_COUNT = 16  # held-out references of the floor test (about 0.2 s each, with and without Redux)
# On the first 16 held-out references with an empty prompt (README, "Offline on the demo models", has 100):
# demo-redux gives the reference's shape colour / region / background 0.75 / 0.75 / 1.00 and shape IoU 0.315;
# `demo` without a reference 0.06 / 0.06 / 0.12 and 0.027. Before the token-reading round taught the base to read
# T5 tokens, place was not carried (region 0.12).
COLOUR_FLOOR, REGION_FLOOR, BACKGROUND_FLOOR, IOU_FLOOR = 0.6, 0.7, 0.85, 0.2


def reference_picture(index: int) -> Image.Image:
    return Image.fromarray(dataset.text_to_image_example(EVALUATION_SEED, index, held_out=True).image)


def test_transformers_and_diffusers_load_the_demo_redux_and_agree_with_ours():
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from transformers import SiglipImageProcessor, SiglipVisionModel

    folder = demo_models_dir() / "demo-redux"
    tower, tower_info = SiglipVisionModel.from_pretrained(folder / "image_encoder", output_loading_info=True)
    embedder, embedder_info = ReduxImageEncoder.from_pretrained(folder / "image_embedder", output_loading_info=True)
    for info in (tower_info, embedder_info):
        assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    picture = reference_picture(0)
    pixels = SiglipImageProcessor.from_pretrained(folder / "feature_extractor")(images=picture,
                                                                               return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = embedder.eval()(tower.eval()(pixel_values=pixels).last_hidden_state).image_embeds[0].numpy()
    ours = np.array(ReduxEncoder.from_folder(folder).encode_image(picture))[0]
    assert ours.shape == expected.shape == (64, 64)
    assert np.abs(ours - expected).max() <= PARITY_RTOL * np.abs(expected).max()


def test_redux_on_the_demo_model_uses_the_demo_redux_offline(manager, tmp_path):
    path = tmp_path / "reference.png"
    reference_picture(1).save(path)
    result = manager.generate(GenerationRequest(tool="redux", prompt="", redux_image_paths=(str(path),), **FAST))
    assert result.request.model == "demo" and result.image.size == (64, 64)
    side_models = [r["name"] for r in manager.status()["resident"] if r["kind"] == "auxiliary"]
    assert len(side_models) == 1 and side_models[0].startswith("demo-redux (")


def test_an_empty_prompt_carries_the_references_colours_and_place(manager):
    carried = reference_carried(manager, "demo", classify, count=FLOOR_COUNT, redux="demo-redux")
    unprompted = reference_carried(manager, "demo", classify, count=FLOOR_COUNT)
    assert carried.colour >= COLOUR_FLOOR and carried.background >= BACKGROUND_FLOOR, carried
    assert carried.region >= REGION_FLOOR and carried.shape_iou >= IOU_FLOOR, carried
    assert all(ours > theirs for ours, theirs in zip(vars(carried).values(), vars(unprompted).values())), \
        (carried, unprompted)
