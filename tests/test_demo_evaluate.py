"""The quality-bar harness and its classifier: right on ground truth, runs through the engine."""

import numpy as np

from mflux_core.demo import dataset, evaluate
from mflux_core.demo.shapes import caption, shape_mask
from mflux_core.manager import ModelManager
from tests.fixtures.demo_folders import write_random_demo_folders
from tests.fixtures.shape_classifier import classify, iou


def test_the_classifier_reads_rendered_scenes_correctly():
    hits = np.zeros(4)
    for index in range(100):
        example = dataset.text_to_image_example(evaluate.EVALUATION_SEED, index, held_out=True)
        shape, reading = example.scene.shapes[0], classify(example.image)
        hits += [reading.colour == shape.colour, reading.region == shape.region,
                 reading.background == example.scene.background, iou(reading.mask, shape_mask(shape, 64)) > 0.8]
    assert (hits >= 98).all(), hits


def test_the_classifier_finds_no_shape_on_a_plain_background():
    reading = classify(np.full((64, 64, 3), (40, 80, 220), np.uint8))
    assert (reading.background, reading.colour, reading.region) == ("blue", None, None)


def test_held_out_evaluation_captions_are_unseen_combinations():
    for index in range(50):
        scene = dataset.text_to_image_example(evaluate.EVALUATION_SEED, index, held_out=True).scene
        assert dataset.is_held_out(scene.shapes[0], scene.background)
        assert caption(scene).endswith("background")


def test_the_harness_measures_random_models_through_the_engine(tmp_path):
    folders = write_random_demo_folders(tmp_path / "models")
    manager = ModelManager(models_dir=tmp_path / "models")
    scores = evaluate.prompt_following(manager, "base", classify, count=2, max_sequence_length=32)
    assert all(0.0 <= value <= 1.0 for value in (scores.colour, scores.region, scores.background))
    recoloured, kept = evaluate.fill_scores(manager, "fill", classify, count=1, max_sequence_length=32)
    assert 0.0 <= recoloured <= 1.0 and 0.0 <= kept <= 1.0
    assert set(folders) == {"base", "fill"}
