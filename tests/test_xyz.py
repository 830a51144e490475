"""X/Y/Z plots: axis values as A1111 writes them, every cell's request, the labelled grid, and the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from mflux_core.cli import main
from mflux_core.errors import InvalidRequest
from mflux_core.images.grid import labelled_grid
from mflux_core.request import GenerationRequest
from mflux_core.xyz import parse_axis, parse_axis_flag, plot_cells, plot_grids


@pytest.mark.parametrize("kind, text, values", [
    ("steps", "1-5", (1, 2, 3, 4, 5)),
    ("steps", "2, 4,8", (2, 4, 8)),
    ("guidance", "0.5-1.0 (+0.25)", (0.5, 0.75, 1.0)),
    ("guidance", "2.5, 3.5", (2.5, 3.5)),
    ("true-cfg", "1-4 (+1.5)", (1.0, 2.5, 4.0)),
    ("seed", "1-10 [4]", (1, 4, 7, 10)),
    ("seed", "1-10 [5]", (1, 3, 5, 7, 10)),  # A1111's int() of numpy's linspace: cut down, not rounded
    ("steps", "1-3, 7", (1, 2, 3, 7)),
    ("guidance", "2.5, 3.5, 1-2 (+0.5)", (2.5, 3.5, 1.0, 1.5, 2.0)),
    ("guidance", "3-5", (3.0, 4.0, 5.0)),  # a step of 1, as A1111's float ranges
    ("prompt-sr", '"red circle", "blue, square", green', ("red circle", "blue, square", "green")),
    ("styles", 'none, "Comma, style", Vivid', ("none", "Comma, style", "Vivid")),
    ("steps", "5-1 (-2)", (5, 3, 1)),
    ("size", "64x64, 128x96", ((64, 64), (128, 96))),
    ("model", "demo, demo-fill", ("demo", "demo-fill")),
    ("modules", "none, t5xxl_fp16, clip_l_ft + t5xxl_fp8", ("none", "t5xxl_fp16", "clip_l_ft + t5xxl_fp8")),
])
def test_values_are_read_as_a1111_writes_them(kind, text, values):
    assert parse_axis(kind, text).values == values


@pytest.mark.parametrize("flag, sentence", [
    ("steps=1.5, 2", "not a whole number"),
    ("guidance=1-2 (-0.5)", "does not lead from"),
    ("guidance=nan", "must be a finite number"),
    ("colour=red", "Unknown plot axis"),
    ("steps", "kind=values"),
    ("steps=", "has no values"),
    ("size=64by64", "not a size"),
    ("size=" + "9" * 5000 + "x64", "not a size"),
    ("seed=1-10000000000 [10000000000]", r"has 10,000,000,000 values, more than the 10,000 an axis takes"),
    ("seed=1-1000000000000", r"has 1,000,000,000,000 values, more than the 10,000"),
    ("seed=1-2 [" + "9" * 5000 + "]", "must be a finite number"),
    ("guidance=0-1000 (+0.001)", r"has 1,000,001 values, more than the 10,000 an axis takes"),
    ("prompt-order=" + ", ".join("abcdefgh"), "8 terms have more orders than the 10,000 values an axis takes"),
    ("prompt-order=" + ", ".join(map(str, range(5000))), "5000 terms have more orders than the 10,000"),
])
def test_bad_axes_are_refused_with_a_sentence(flag, sentence):
    with pytest.raises(InvalidRequest, match=sentence):
        parse_axis_flag(flag)


def test_cells_cover_every_combination_with_the_model_axis_outermost():
    axes = [parse_axis("steps", "1-2"), parse_axis("model", "demo, demo-kontext"), parse_axis("guidance", "1, 2, 3")]
    cells = plot_cells(GenerationRequest(prompt="a cat"), axes)
    assert len(cells) == 12 and len({c.position for c in cells}) == 12
    models = [c.request.model for c in cells]
    assert models == ["demo"] * 6 + ["demo-kontext"] * 6  # one model change in the whole plot
    for cell in cells:
        x, y, z = cell.position
        assert (cell.request.steps, cell.request.model, cell.request.guidance) == (
            (1, 2)[x], ("demo", "demo-kontext")[y], (1.0, 2.0, 3.0)[z])


def test_vary_seeds_counts_each_cells_seed_up_along_the_varied_axes_as_a1111():
    axes = [parse_axis("steps", "1-3"), parse_axis("guidance", "1, 2"), parse_axis("seed", "10, 20")]
    seeds = {c.position: c.request.seed for c in plot_cells(GenerationRequest(prompt="a cat", seed=5), axes[:2],
                                                              vary_seeds=(True, True))}
    assert seeds == {(x, y, 0): 5 + x + 3 * y for x in range(3) for y in range(2)}  # X fastest, Y by X's cells
    only_y = {c.position: c.request.seed for c in plot_cells(GenerationRequest(prompt="a cat", seed=5), axes[:2],
                                                               vary_seeds=(False, True))}
    assert only_y == {(x, y, 0): 5 + y for x in range(3) for y in range(2)}
    on_a_seed_axis = {c.position: c.request.seed for c in plot_cells(GenerationRequest(prompt="a cat"), axes,
                                                                       vary_seeds=(True, False, True))}
    assert on_a_seed_axis[(2, 1, 1)] == 20 + 2 + 3 * 1  # added to the seed the axis set, as A1111 does
    assert {c.request.seed for c in plot_cells(GenerationRequest(prompt="a cat", seed=5), axes[:2])} == {5}


def test_prompt_sr_replaces_in_the_prompt_and_the_negative_prompt_as_a1111():
    base = GenerationRequest(prompt="a red cat", negative_prompt="blurry, red", true_cfg_scale=2)
    cells = plot_cells(base, [parse_axis("prompt-sr", "red, blue")])
    assert sorted((c.request.prompt, c.request.negative_prompt) for c in cells) == [
        ("a blue cat", "blurry, blue"), ("a red cat", "blurry, red")]
    only_negative = plot_cells(GenerationRequest(prompt="a cat", negative_prompt="grainy", true_cfg_scale=2),
                               [parse_axis("prompt-sr", "grainy, sharp")])
    assert {c.request.negative_prompt for c in only_negative} == {"grainy", "sharp"}


def test_prompt_order_puts_the_terms_in_every_order_where_the_prompt_has_them_as_a1111():
    """A1111's Prompt order: every permutation of the terms, the first place the prompt has one of them getting the
    order's first term; the text between them stays, the negative prompt is not touched."""
    base = GenerationRequest(prompt="a red circle, in the top left, on blue", negative_prompt="red", true_cfg_scale=2)
    axis = parse_axis("prompt-order", "on blue, a red circle, in the top left")
    cells = plot_cells(base, [axis])
    assert [cell.request.prompt for cell in cells] == [
        "on blue, a red circle, in the top left", "on blue, in the top left, a red circle",
        "a red circle, on blue, in the top left", "a red circle, in the top left, on blue",
        "in the top left, on blue, a red circle", "in the top left, a red circle, on blue"]
    assert {cell.request.negative_prompt for cell in cells} == {"red"}
    assert axis.heading(axis.values[1]) == "Prompt order: on blue, in the top left, a red circle"
    with pytest.raises(InvalidRequest, match="Prompt order: the prompt does not contain 'green'"):
        plot_cells(base, [parse_axis("prompt-order", "red, green")])
    with pytest.raises(InvalidRequest, match="'red circle' overlaps another of the axis's terms"):
        plot_cells(base, [parse_axis("prompt-order", "a red, red circle")])


def test_a_plot_is_refused_before_anything_runs_when_a_cell_is_bad_or_there_are_too_many():
    with pytest.raises(InvalidRequest, match="more than the limit of 10"):
        plot_cells(GenerationRequest(prompt="a cat"), [parse_axis("steps", "1-4"), parse_axis("seed", "1-3")], 10)
    with pytest.raises(InvalidRequest, match="nor the negative prompt contains 'dog'"):
        plot_cells(GenerationRequest(prompt="a cat"), [parse_axis("prompt-sr", "dog, cat")])
    with pytest.raises(InvalidRequest, match="Steps must be"):
        plot_cells(GenerationRequest(prompt="a cat"), [parse_axis("steps", "0-2")])
    with pytest.raises(InvalidRequest, match="needs a LoRA"):
        plot_cells(GenerationRequest(prompt="a cat"), [parse_axis("lora-scale", "0.5, 1")])
    with pytest.raises(InvalidRequest, match=r"grids would be 218 megapixels \(13 cells of up to 4096x4096\), more "
                                             r"than the 200 a plot may have"):  # 2.6 GB of cells, and a grid as large
        plot_cells(GenerationRequest(prompt="a cat", width=4096, height=4096), [parse_axis("seed", "1-13")])
    with pytest.raises(InvalidRequest, match=r"\(13 cells of up to 4096x4096\)"):  # the hires fix's second pass
        plot_cells(GenerationRequest(prompt="a cat", width=2048, height=2048, hires_scale=2),
                   [parse_axis("seed", "1-13")])
    with pytest.raises(InvalidRequest, match=r"\(4 x 1 x 4 cells of up to 4096x4096\)"):  # Z grids count, as A1111's
        plot_cells(GenerationRequest(prompt="a cat", width=4096, height=4096),
                   [parse_axis("seed", "1-4"), parse_axis("steps", "4"), parse_axis("guidance", "1, 2, 3, 4")])
    assert len(plot_cells(GenerationRequest(prompt="a cat", width=4096, height=4096), [parse_axis("seed", "1-11")]))


def test_lora_axes_keep_the_text_encoder_scales_aligned_with_the_loras():
    request = GenerationRequest(prompt="a cat", lora_paths=("ink", "oil"), lora_scales=(0.5, 0.7),
                                lora_text_encoder_scales=(0.1, 0.2))
    scaled = [cell.request for cell in plot_cells(request, [parse_axis("lora-scale", "0.3, 1")])]
    assert [(r.lora_scales, r.lora_text_encoder_scales) for r in scaled] == [((0.3, 0.7), (0.3, 0.2)),
                                                                             ((1.0, 0.7), (1.0, 0.2))]
    swapped = [cell.request for cell in plot_cells(request, [parse_axis("lora", "none, wax")])]
    assert [(r.lora_paths, r.lora_scales, r.lora_text_encoder_scales) for r in swapped] == [
        (("oil",), (0.7,), (0.2,)), (("wax", "oil"), (0.5, 0.7), (0.1, 0.2))]
    assert all(r.validated() for r in scaled + swapped)


def test_the_grid_places_each_image_under_its_labels_and_leaves_missing_cells_blank():
    red, blue = Image.new("RGB", (48, 24), (255, 0, 0)), Image.new("RGB", (48, 24), (0, 0, 255))
    grid = np.asarray(labelled_grid([[red, None], [None, blue]], ["X: 1", "X: 2"], ["Y: a", "Y: b"], "Z: 3"))
    height, width = grid.shape[:2]
    left, top = width - 96, height - 48
    assert (grid[top:top + 24, left:left + 48] == (255, 0, 0)).all()
    assert (grid[top + 24:, left + 48:] == (0, 0, 255)).all()
    assert (grid[top:top + 24, left + 48:] == 255).all()  # the missing cell
    assert (grid[:top, :] < 128).any() and (grid[:, :left] < 128).any()  # labels drawn


def test_a_label_as_long_as_a_prompt_is_cut_short():
    cell = Image.new("RGB", (64, 64), (255, 0, 0))
    grid = labelled_grid([[cell, cell]], ["Prompt S/R: " + "a red cat " * 2000, "Prompt S/R: a cat"], [""])
    assert grid.width < 2 * 1000  # 80 characters a label: a 20,000-character one would make cells 100,000 px wide


def test_labels_wider_than_the_cells_widen_their_columns_and_the_cells_stay_centred():
    cell = Image.new("RGB", (8, 8), (255, 0, 0))
    grid = labelled_grid([[cell, cell]], ["Seed: 1000", "Seed: 2000"], [""])
    column = grid.width // 2
    assert column > 8 and grid.width == 2 * column
    pixels = np.asarray(grid)
    red_columns = np.flatnonzero((pixels[-8:] == (255, 0, 0)).all(axis=2).all(axis=0))
    assert list(red_columns) == [*range((column - 8) // 2, (column - 8) // 2 + 8),
                                 *range(column + (column - 8) // 2, column + (column - 8) // 2 + 8)]


def test_one_grid_per_z_value_with_only_the_cells_that_ran():
    axes = [parse_axis("steps", "1-2"), parse_axis("seed", "1-2"), parse_axis("guidance", "1, 2")]
    image = Image.new("RGB", (16, 16), "gray")
    grids = plot_grids(axes, {(0, 0, 0): image, (1, 1, 0): image})
    assert len(grids) == 1  # z = 1 has no finished cell


def test_the_cli_plots_every_cell_as_a_plain_run_would_and_saves_the_grid(tmp_path):
    assert main(["generate", "-p", "a red circle", "--seed", "5", "--x-axis", "steps=1-2", "--y-axis",
                 "prompt-sr=red, blue", "--output", str(tmp_path / "plot.png")]) == 0
    cells = sorted(tmp_path.glob("plot_x*_y*_z0.png"))
    assert len(cells) == 4 and (tmp_path / "plot_grid.png").is_file()
    first = Image.open(tmp_path / "plot_x0_y0_z0.png").info["parameters"]
    assert Image.open(tmp_path / "plot_grid.png").info["parameters"] == first  # as A1111: its first cell's settings
    assert main(["generate", "-p", "a blue circle", "--seed", "5", "--steps", "2",
                 "--output", str(tmp_path / "plain.png")]) == 0
    plain = np.asarray(Image.open(tmp_path / "plain.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "plot_x1_y1_z0.png")), plain)
    assert main(["generate", "-p", "a red circle", "--seed", "5", "--steps", "1", "--x-axis", "guidance=2, 3",
                 "--vary-seeds", "x", "--metadata", "--output", str(tmp_path / "varied.png")]) == 0
    assert [json.loads((tmp_path / f"varied_x{x}_y0_z0.json").read_text())["request"]["seed"] for x in (0, 1)] == [5, 6]


def test_a_vae_text_encoder_axis_sets_each_cells_files_in_place_of_the_requests():
    base = GenerationRequest(prompt="a cat", modules=("vae/ae_ft.safetensors",))
    axis = parse_axis("modules", "none, text_encoders/t5xxl_fp8.safetensors, clip_l_ft + t5xxl_fp8")
    cells = plot_cells(base, [axis])
    assert [cell.request.modules for cell in cells] == [
        (), ("text_encoders/t5xxl_fp8.safetensors",), ("clip_l_ft", "t5xxl_fp8")]
    assert [axis.heading(value) for value in axis.values] == [
        "VAE / Text Encoder: none", "VAE / Text Encoder: t5xxl_fp8", "VAE / Text Encoder: clip_l_ft + t5xxl_fp8"]


def test_a_variation_strength_axis_without_a_variation_seed_draws_one_for_all_its_cells():
    """As A1111's subseed -1; it was refused ("A variation strength needs a variation seed") on every surface."""
    cells = plot_cells(GenerationRequest(prompt="a cat", seed=3, steps=1, width=64, height=64),
                       [parse_axis("var-strength", "0, 0.5")])
    assert [c.request.variation_strength for c in cells] == [0.0, 0.5]
    assert len({c.request.variation_seed for c in cells}) == 1 and cells[0].request.variation_seed is not None
    given = plot_cells(GenerationRequest(prompt="a cat", seed=3, variation_seed=7), [parse_axis("var-strength", "0.5")])
    assert given[0].request.variation_seed == 7
