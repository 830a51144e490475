"""The shipped demo models, measured through the real engine on held-out captions and pairs the models
never saw in training, with a classifier written for the tests (tests/fixtures/shape_classifier.py,
checked on ground truth in test_demo_evaluate.py).

Where the shipped family meets issue 8's bar (shape region 0.8, Fill's kept pixels 0.98, Kontext 0.8,
Depth's and ControlNet's layout IoU 0.6) the test holds it to the bar; where it is still below (shape
colour 0.9; README, "Demo models") the floor is what it measured less a margin, well above chance
(colour 1/12), so a broken model, loader or tool fails it. Raise it to the bar with retrained weights.
"""

import pytest

from mflux_core.demo import evaluate
from mflux_core.manager import ModelManager
from mflux_core.native_sizes import read_native_sizes
from mflux_core.weights.resolve import DEMO_MODELS, demo_models_dir
from tests.fixtures.shape_classifier import classify


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    return ModelManager(models_dir=tmp_path_factory.mktemp("no-models"))


def test_generate_follows_the_prompt_background_and_place(manager):
    scores = evaluate.prompt_following(manager, "demo", classify, count=50)  # measured 0.98 / 1.00 / 0.90
    # (the fourth sizes round, before the token-reading round: 1.00 / 1.00 / 0.92; the 64 px base before the sizes
    # stages: 0.98 / 1.00 / 0.88; colour 0.907 of 150 held-out captions); the colour floor is issue 26's bar
    assert scores.background >= 0.9 and scores.region >= 0.8 and scores.colour >= 0.9, scores


@pytest.mark.parametrize("size", [(80, 48), (96, 96), (112, 112), (112, 64), (128, 128), (128, 64)])
def test_generate_follows_the_prompt_at_other_sizes_the_demo_lists(manager, size):
    """The sizes stages' base, after the token-reading round (README, "Sizes stages"); colour / region / background
    measured on 50 captions 0.70 / 0.94 / 1.00 at 80x48, 0.80 / 1.00 / 1.00 at 96x96, 0.82 / 0.98 / 1.00 at 112x112,
    0.80 / 1.00 / 1.00 at 112x64, 0.66 / 0.80 / 1.00 at 128x128 and 0.66 / 0.92 / 1.00 at 128x64, so the colour floor
    sits below the 64x64 bar: it paints the asked colour less often there. The test paints the first 25 (the suite's
    time): 0.68 / 0.96, 0.88 / 1.00, 0.92 / 1.00, 0.80 / 1.00, 0.72 / 0.84 and 0.80 / 0.96, backgrounds all 1.00."""
    assert size in read_native_sizes(demo_models_dir() / "demo")
    scores = evaluate.prompt_following(manager, "demo", classify, count=25, size=size)
    assert scores.background >= 0.9 and scores.region >= 0.8 and scores.colour >= 0.6, scores


def test_guidance_deepens_the_caption_colour_as_on_flux_dev(manager):
    unguided = evaluate.colour_strength(manager, "demo", guidance=1.0)
    guided = evaluate.colour_strength(manager, "demo")  # the generate tool's default guidance, 3.5
    # measured 0.85 / 0.95 (a VAE round trip alone reaches 0.95); the undistilled base, 0.85 / 0.89
    assert guided >= unguided + 0.05 and guided >= 0.9, (unguided, guided)


def test_fill_recolours_the_hole_and_keeps_the_rest(manager):
    recoloured, kept = evaluate.fill_scores(manager, "demo-fill", classify, count=20)  # measured 0.75 / 0.987
    assert recoloured >= 0.7 and kept >= 0.98, (recoloured, kept)


@pytest.mark.parametrize("size", [(128, 64), (96, 48), (48, 96), (96, 96), (128, 128)])
def test_fill_recolours_the_hole_at_other_sizes_it_lists(manager, size):
    """128x64 is the In-Context tools' diptych of two 64 px panels. Measured on these 20: 0.80 / 0.997 at 128x64,
    0.70 / 0.991 at 96x48 and 48x96, 0.90 / 0.998 at 96x96, 0.60 / 0.998 at 128x128; on 50: 0.82, 0.76, 0.74,
    0.84 and 0.56 (0.82 at 64x64), well above chance (1/12)."""
    assert size in read_native_sizes(demo_models_dir() / "demo-fill")
    recoloured, kept = evaluate.fill_scores(manager, "demo-fill", classify, count=20, size=size)
    assert recoloured >= 0.45 and kept >= 0.98, (recoloured, kept)


def test_kontext_applies_the_instruction(manager):
    applied = evaluate.kontext_applied(manager, "demo-kontext", classify, count=30)  # measured 0.77 (0.80 of 120)
    assert applied >= 0.7, applied


@pytest.mark.parametrize("size", [(96, 96), (48, 96), (96, 48), (128, 128), (128, 64)])
def test_kontext_applies_the_instruction_at_other_sizes_it_lists(manager, size):
    """Measured on these 30: 0.93, 0.83, 0.73, 0.90 and 0.80; on 60: 0.93, 0.80, 0.80, 0.90, 0.83, where the 64 px
    Kontext, snapping them to 64x64, applied 0.82, 0.67 and 0.60 of the first three."""
    listed = read_native_sizes(demo_models_dir() / "demo-kontext")
    assert size in listed and not {(48, 48), (48, 112), (48, 128)} & set(listed)  # those made worse than snapped
    applied = evaluate.kontext_applied(manager, "demo-kontext", classify, count=30, size=size)
    assert applied >= 0.6, applied


def test_in_context_paints_the_right_panels_edit_with_demo_fills_own_lora(manager):
    applied = evaluate.in_context_applied(manager, "demo-fill", classify, count=30)  # measured 0.47; 0.27 without
    assert applied >= 0.37, applied


def test_ic_edit_applies_the_instruction_with_demo_fills_own_lora(manager):
    applied = evaluate.ic_edit_applied(manager, "demo-fill", classify, count=30)  # measured 0.50; In-Context 0.23
    assert applied >= 0.4, applied


def test_try_on_puts_the_garments_colour_into_the_person_mask(manager):
    worn = evaluate.try_on_worn(manager, "demo-fill", classify, count=30)  # measured 0.87 (result's caption as prompt)
    assert worn >= 0.7, worn


def test_depth_follows_the_depth_map_layout(manager):
    score = evaluate.depth_layout(manager, "demo-depth", classify, count=20)  # measured IoU 0.71
    assert score >= 0.6, score


@pytest.mark.parametrize("size", [(80, 48), (128, 64), (128, 128)])
def test_depth_follows_the_depth_map_layout_at_other_sizes_it_lists(manager, size):
    """Measured IoU 0.63 at 80x48, 0.73 at 128x64, 0.81 at 128x128 (0.71 at 64x64, 0.78 at 96x96, 0.62 at 48x96
    and 96x48, 0.78 at 112x112, 0.70 at 64x128)."""
    assert size in read_native_sizes(demo_models_dir() / "demo-depth")
    score = evaluate.depth_layout(manager, "demo-depth", classify, count=20, size=size)
    assert score >= 0.5, score


def test_depth_follows_the_layout_of_a_map_the_demo_estimator_made(manager):
    score = evaluate.estimated_depth_layout(manager, "demo-depth", classify, count=20)  # measured IoU 0.62
    assert score >= 0.6, score


def test_controlnet_follows_the_canny_layout(manager):
    score = evaluate.controlnet_layout(manager, "demo", "demo-canny", classify, count=20)  # measured IoU 0.62
    assert score >= 0.6, score


@pytest.mark.parametrize("size", [(96, 96), (128, 128)])
def test_controlnet_follows_the_canny_layout_at_the_bases_larger_sizes(manager, size):
    """Measured IoU 0.66 at 96x96, 0.56 at 128x128 (0.48 and 0.38 before canny-sizes; 0.62 at 112x112 and 128x64,
    0.51 at 80x48, 0.55 at 48x96, 0.50 at 96x48)."""
    score = evaluate.controlnet_layout(manager, "demo", "demo-canny", classify, count=20, size=size)
    assert score >= 0.5, score


def test_the_demo_upscaler_keeps_up_with_lanczos_from_an_8x8_picture(manager):
    """Measured over 30 held-out scenes from 8x8: 28.1 dB against Lanczos' 27.8 (here, the first 10: 28.8 against
    29.0); without the ControlNet 16.8; a VAE round trip of the true pictures 30.4, the ceiling of any demo output
    (which is why Lanczos wins from 16x16 and 32x32: README, "Offline on the demo models")."""
    ours, lanczos = evaluate.upscale_psnr(manager, "demo", "demo-upscaler", side=8, count=10)
    assert ours >= 27.0 and ours >= lanczos - 1.0, (ours, lanczos)


def test_the_family_fits_the_repository_budget():
    files = [path for path in demo_models_dir().rglob("*") if path.is_file()]
    assert {path.relative_to(demo_models_dir()).parts[0] for path in files} == set(DEMO_MODELS)
    total = sum(path.stat().st_size for path in files)
    assert total <= 25_000_000, f"{total / 1e6:.1f} MB"  # issue 8: at most 25 MB in the repository
