"""The shipped demo models, measured through the real engine on held-out captions and pairs the models
never saw in training, with a classifier written for the tests (tests/fixtures/shape_classifier.py,
checked on ground truth in test_demo_evaluate.py).

The shipped family is below issue 8's bar (README, "Demo models"): these tests hold it to what it
measured, with a margin, and every floor is well above chance (region 1/9, colour 1/12), so a
broken model, loader or tool fails them. Raise each floor to the issue's bar (colour 0.9, region
0.8, Fill kept 0.98, Kontext 0.8, layouts IoU 0.6) when retrained weights reach it.
"""

import pytest

from mflux_core.demo import evaluate
from mflux_core.manager import ModelManager
from tests.fixtures.shape_classifier import classify


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    return ModelManager(models_dir=tmp_path_factory.mktemp("no-models"))


def test_generate_follows_the_prompt_background_and_place(manager):
    scores = evaluate.prompt_following(manager, "demo", classify, count=50)  # measured 0.98 / 0.42 / 0.08
    assert scores.background >= 0.9 and scores.region >= 0.3, scores


def test_fill_recolours_the_hole_and_keeps_the_rest(manager):
    recoloured, kept = evaluate.fill_scores(manager, "demo-fill", classify, count=20)  # measured 0.55 / 0.976
    assert recoloured >= 0.4 and kept >= 0.95, (recoloured, kept)


def test_kontext_applies_the_instruction(manager):
    applied = evaluate.kontext_applied(manager, "demo-kontext", classify, count=30)  # measured 0.33
    assert applied >= 0.2, applied


def test_depth_follows_the_depth_map_layout(manager):
    score = evaluate.depth_layout(manager, "demo-depth", classify, count=20)  # measured IoU 0.50
    assert score >= 0.4, score


def test_controlnet_follows_the_canny_layout(manager):
    score = evaluate.controlnet_layout(manager, "demo", "demo-canny", classify, count=20)  # measured IoU 0.23
    assert score >= 0.15, score
