"""A1111's variation seed: the seed's noise moved along the great circle towards the variation seed's, from the CLI,
the page's batches, the A1111 API and the parameters text."""

import mlx.core as mx
import numpy as np
import pytest

from mflux_core.metadata import a1111_parameters, read_metadata_file
from mflux_core.presets import settings_from_a1111
from mflux_core.prompt_lines import line_requests, read_prompt_lines
from mflux_core.request import GenerationRequest
from mflux_core.sampling.latents import seeded_noise, slerp
from mflux_core.xyz import parse_axis, plot_cells
from tests.parity import max_uint8_diff, run_cli
from webui.requests import batch_seed_pairs

SHAPE = (1, 16, 32, 32)


def test_slerp_runs_from_the_seeds_noise_to_the_variation_seeds_and_keeps_its_spread():
    start, end = seeded_noise(1, SHAPE), seeded_noise(2, SHAPE)
    assert mx.array_equal(slerp(0.0, start, end), start)
    assert mx.allclose(slerp(1.0, start, end), end, atol=1e-5)
    halfway = np.asarray(slerp(0.5, start, end))
    assert abs(halfway.std() - 1) < 0.02  # a straight blend would shrink it to about 0.71
    straight = 0.5 * np.asarray(start) + 0.5 * np.asarray(end)
    assert abs(straight.std() - 0.71) < 0.02
    nearly_the_same = start * 1.001
    assert mx.allclose(slerp(0.3, start, nearly_the_same), 0.7 * start + 0.3 * nearly_the_same)


def test_a_small_variation_strength_makes_a_picture_close_to_the_seeds(tiny_schnell, tmp_path):
    common = ["generate", "--path", tiny_schnell, "--prompt", "a cat", "--steps", 2, "--height", 32, "--width", 32]
    seed_5 = run_cli(*common, "--seed", 5, "--output", tmp_path / "a.png")
    seed_9 = run_cli(*common, "--seed", 9, "--output", tmp_path / "b.png")

    def varied(strength):
        return run_cli(*common, "--seed", 5, "--variation-seed", 9, "--variation-strength", strength,
                       "--output", tmp_path / f"v{strength}.png")

    near = varied(0.1)
    assert 0 < max_uint8_diff(near, seed_5) < max_uint8_diff(near, seed_9)
    assert max_uint8_diff(varied(1), seed_9) <= 1
    with pytest.raises(SystemExit):  # argparse refuses a strength without a number
        run_cli(*common, "--variation-strength", "--output", tmp_path / "x.png")


def test_a_batch_with_a_variation_keeps_the_seed_and_counts_the_variation_seed_up():
    draws = iter([1000, 2000])
    pairs = batch_seed_pairs({"seed": 7, "batch_count": 3, "variation_seed": None, "variation_strength": 0.2},
                             lambda: next(draws))
    assert pairs == [(7, 1000), (7, 1001), (7, 1002)]  # a random variation seed to start from
    assert batch_seed_pairs({"seed": 7, "batch_count": 2}) == [(7, None), (8, None)]
    assert batch_seed_pairs({"seed": 7, "batch_count": 2, "variation_seed": 3, "variation_strength": 0}) == \
        [(7, None), (8, None)]  # strength 0: no variation at all


def test_the_variation_travels_in_a1111_parameters_and_plots():
    request = GenerationRequest(prompt="a cat", steps=20, seed=4, variation_seed=55, variation_strength=0.15)
    text = a1111_parameters(request)
    assert "Seed: 4, Variation seed: 55, Variation seed strength: 0.15" in text
    restored = settings_from_a1111(text)
    assert (restored["seed"], restored["variation_seed"], restored["variation_strength"]) == (4, 55, 0.15)
    assert "Variation" not in a1111_parameters(GenerationRequest(prompt="a cat", steps=20, variation_seed=55))
    cells = plot_cells(request, [parse_axis("var-strength", "0, 0.5"), parse_axis("var-seed", "1-2")])
    assert sorted((c.request.variation_seed, c.request.variation_strength) for c in cells) == \
        [(1, 0.0), (1, 0.5), (2, 0.0), (2, 0.5)]


def test_a_prompt_list_line_takes_a1111s_subseed_and_counts_it_up():
    lines = read_prompt_lines('--prompt "a cat" --seed 4 --subseed 10 --subseed_strength 0.2 --n_iter 2\n'
                              '{"prompt": "a dog", "seed": 8, "batch_count": 2}')
    made = [(r.prompt, r.seed, r.variation_seed, r.variation_strength)
            for _, r in line_requests(GenerationRequest(steps=2), lines, [0])]
    assert made == [("a cat", 4, 10, 0.2), ("a cat", 4, 11, 0.2), ("a dog", 8, None, 0.0), ("a dog", 9, None, 0.0)]


def test_the_cli_draws_a_variation_seed_when_given_only_a_strength_and_records_it(tiny_schnell, tmp_path):
    run_cli("generate", "--path", tiny_schnell, "--prompt", "a cat", "--steps", 1, "--height", 32, "--width", 32,
            "--seed", 5, "--variation-strength", 0.3, "--output", tmp_path / "v.png")
    request = read_metadata_file(tmp_path / "v.png")["request"]
    assert request["seed"] == 5 and request["variation_strength"] == 0.3
    assert isinstance(request["variation_seed"], int)
