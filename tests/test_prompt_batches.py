"""Prompt batches: the prompt matrix (A1111's script), prompt lists with per-line settings, and the LoRA axis of
the X/Y/Z plot; in the engine and the CLI, on the demo models."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mflux_core.cli import main
from mflux_core.errors import InvalidRequest
from mflux_core.metadata import JSON_KEY
from mflux_core.prompt_lines import line_requests, read_prompt_file, read_prompt_lines
from mflux_core.request import GenerationRequest
from mflux_core.weights.resolve import demo_folder
from mflux_core.wildcards import expand_prompt
from mflux_core.xyz import parse_axis, plot_cells, plot_grids, prompt_matrix, resolve_loras
from tests.fixtures.lora_files import Dims, write_diffusers_lora

def recorded_request(path: Path) -> dict:
    return json.loads(Image.open(path).info[JSON_KEY])["request"]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ----- prompt matrix ---------------------------------------------------------------------------------


def test_the_prompt_matrix_makes_every_combination_in_a1111s_order_at_one_seed():
    base, axes = prompt_matrix("a cat | in red,|at night| big")
    cells = plot_cells(GenerationRequest(prompt=base, seed=9), axes)
    prompts = {cell.position: cell.request.prompt for cell in cells}
    assert len(cells) == 8 and {cell.request.seed for cell in cells} == {9}
    # the first half of the parts across (the first part changing fastest), the rest down
    assert [prompts[(x, 0, 0)] for x in range(4)] == ["a cat", "a cat, in red", "a cat, at night",
                                                      "a cat, in red, at night"]
    assert prompts[(3, 1, 0)] == "a cat, in red, at night, big" and prompts[(0, 1, 0)] == "a cat, big"
    assert [axes[0].heading(value) for value in axes[0].values][1] == "+in red -at night"
    image = Image.new("RGB", (16, 16), "gray")
    assert len(plot_grids(axes, {cell.position: image for cell in cells})) == 1


def test_a_prompt_matrix_without_parts_or_with_too_many_cells_is_refused():
    with pytest.raises(InvalidRequest, match="needs optional parts"):
        prompt_matrix("a cat|  |")
    with pytest.raises(InvalidRequest, match="16 cells \\(4 optional parts\\), more than the limit of 10"):
        prompt_matrix("a|b|c|d|e", 10)
    with pytest.raises(InvalidRequest, match=r"2\^5000 cells \(5000 optional parts\), more than the limit of 100"):
        prompt_matrix("a" + "|b" * 5000)  # refused before a single combination is made


def test_the_cli_prompt_matrix_saves_each_combination_with_its_prompt_and_the_grid(tmp_path):
    assert main(["generate", "-p", "a {red|blue} circle|on grass|at night", "--prompt-matrix", "--seed", "4",
                 "--steps", "1", "--output", str(tmp_path / "m.png")]) == 0
    drawn = expand_prompt("a {red|blue} circle", 4, None)
    expected = {(0, 0): drawn, (1, 0): f"{drawn}, on grass", (0, 1): f"{drawn}, at night",
                (1, 1): f"{drawn}, on grass, at night"}
    for (x, y), prompt in expected.items():
        request = recorded_request(tmp_path / f"m_x{x}_y{y}_z0.png")
        assert (request["prompt"], request["seed"]) == (prompt, 4)
    grid = Image.open(tmp_path / "m_grid.png")
    assert grid.width > 2 * 64 and grid.height > 2 * 64
    assert len({pixels(tmp_path / f"m_x{x}_y{y}_z0.png").tobytes() for x, y in expected}) == 4


# ----- prompt lists ----------------------------------------------------------------------------------


PROMPT_LIST = """a red circle
# a comment, then a blank line

--prompt a blue square --seed 5 --n_iter 2 --guidance 2.5
{"prompt": "a {green|yellow} dot", "seed": 7, "steps": 2, "distilled_cfg_scale": 4.5, "width": 32}
"""


def test_lines_are_prompts_flags_or_json_with_a1111_names_and_fill_in_from_the_base():
    lines = read_prompt_lines(PROMPT_LIST)
    assert [line.number for line in lines] == [1, 4, 5]
    requests = line_requests(GenerationRequest(seed=3, steps=1), lines, [3, 40])
    summary = [(n, r.prompt, r.seed, r.steps, r.width, r.guidance) for n, r in requests]
    assert summary == [(1, "a red circle", 3, 1, None, None), (1, "a red circle", 40, 1, None, None),
                       (4, "a blue square", 5, 1, None, 2.5), (4, "a blue square", 6, 1, None, 2.5),
                       (5, expand_prompt("a {green|yellow} dot", 7, None), 7, 2, 32, 4.5)]
    beside = line_requests(GenerationRequest(prompt="on grass", negative_prompt="dark", seed=3), lines[:2], [3],
                           position="end")  # A1111's "Insert prompts at the": end
    assert [r.prompt for _, r in beside] == ["on grass a red circle"] + ["on grass a blue square"] * 2
    assert {r.negative_prompt for _, r in beside} == {"dark"}


def test_a_line_takes_a1111s_sampler_and_scheduler_labels_as_its_own_names():
    lines = read_prompt_lines('{"prompt": "a", "sampler_name": "Euler a", "scheduler": "Karras"}\n'
                              '--prompt b --sampler_name "DPM++ 2M Karras"\n'
                              '{"prompt": "c", "sampler": "heun", "schedule": "beta"}\n')
    requests = [request for _, request in line_requests(GenerationRequest(), lines, [1])]
    assert [(r.sampler, r.schedule) for r in requests] == [("euler_a", "karras"), ("dpm++2m", "karras"),
                                                           ("heun", "beta")]


@pytest.mark.parametrize("line, sentence", [
    ("--prompt a cat --colour red", "Line 2: Unrecognized arguments: --colour red"),
    ("--prompt a cat --seed five", "Line 2: Argument --seed: invalid int value"),
    ('--prompt "a cat', "Line 2: The line cannot be split"),
    ('{"prompt": "a cat", "steps": "4"}', "Line 2: Steps must be a whole number"),
    ('{"prompt": "a cat", "steps": 0}', "Line 2: Steps must be a whole number from 1 to 500, not 0"),
    ('{"prompt": "a cat", "colour": "red"}', "Line 2: Unknown setting 'colour'"),
    ('{"prompt": "a cat",}', "Line 2: The line is not valid JSON"),
    ('{"prompt": "a cat", "n_iter": 99}', "Line 2: The image count"),
    ('{"prompt": "a __missing__ cat"}', "Line 2: The prompt uses the wildcard __missing__"),
    ("--prompt a cat --width 30", "Line 2: Width 30 is not a multiple of 16"),
])
def test_a_bad_line_is_refused_with_its_number(line, sentence):
    with pytest.raises(InvalidRequest, match=sentence):
        line_requests(GenerationRequest(), read_prompt_lines(f"a good line\n{line}\n"), [0])


def test_a1111s_other_line_options_are_taken_and_what_the_studio_lacks_is_named():
    """As A1111's script runs them (a sampler it lacks falls back, as its txt2img does)."""
    [line] = read_prompt_lines('--prompt "a cat" --sampler_name DDIM --batch_size 2 --n_iter 2 --sd_model demo '
                               '--tiling true --outpath_samples /tmp/x')
    assert line.settings == {"prompt": "a cat", "batch_count": 4, "model": "demo"}
    assert line.ignored == ("--tiling (no tiling)", "--outpath_samples (results go to the outputs folder)",
                            "--sampler 'DDIM' (not in the studio: the default runs)")


def test_a_list_of_more_images_than_one_run_makes_is_refused_before_any_is_planned():
    lines = read_prompt_lines("a cat\n" * 700)
    with pytest.raises(InvalidRequest, match=r"asks for 11,200 images, more than the 10,000 one run makes"):
        line_requests(GenerationRequest(), lines, [0], batch_count=16)
    assert len(line_requests(GenerationRequest(), lines, [0, 1], batch_count=7)) == 9_800


def test_an_empty_list_or_a_file_that_is_not_text_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="no lines to run"):
        read_prompt_lines("\n# only a comment\n")
    (tmp_path / "list.txt").write_bytes(b"\xff\xfea cat")
    with pytest.raises(InvalidRequest, match="The prompt list list.txt is not UTF-8 text"):
        read_prompt_file(tmp_path / "list.txt")


def test_the_cli_runs_every_line_as_a_plain_run_would_and_refuses_a_bad_file_before_any_image(tmp_path):
    listing = tmp_path / "lines.txt"
    listing.write_text(PROMPT_LIST)
    assert main(["generate", "--prompts-from", str(listing), "--seed", "3", "--steps", "1",
                 "--output", str(tmp_path / "out.png")]) == 0
    made = sorted(path.name for path in tmp_path.glob("out_*.png"))
    assert made == ["out_seed_3_line1.png", "out_seed_5_line4.png", "out_seed_6_line4.png", "out_seed_7_line5.png"]
    assert recorded_request(tmp_path / "out_seed_7_line5.png")["prompt"] == expand_prompt("a {green|yellow} dot", 7,
                                                                                          None)
    assert main(["generate", "-p", "a blue square", "--seed", "6", "--steps", "1", "--guidance", "2.5",
                 "--output", str(tmp_path / "plain.png")]) == 0
    assert np.array_equal(pixels(tmp_path / "out_seed_6_line4.png"), pixels(tmp_path / "plain.png"))
    listing.write_text("a red circle\n")
    assert main(["generate", "--prompts-from", str(listing), "-p", "on grass", "--prompts-at", "end", "--seed", "3",
                 "--steps", "1", "--output", str(tmp_path / "beside.png")]) == 0
    assert recorded_request(tmp_path / "beside_seed_3_line1.png")["prompt"] == "on grass a red circle"

    listing.write_text("a cat\n--prompt a dog --steps 0\n")
    assert main(["generate", "--prompts-from", str(listing), "--output", str(tmp_path / "bad" / "out.png")]) == 1
    assert not (tmp_path / "bad").exists()


# ----- the LoRA axis ---------------------------------------------------------------------------------


def test_the_lora_axis_swaps_the_first_lora_at_its_scale_and_none_drops_it():
    base = GenerationRequest(prompt="a cat", lora_paths=("first", "second"), lora_scales=(0.5, 0.7))
    axes = [parse_axis("lora-scale", "0.25, 1"), parse_axis("lora", "None, ink")]
    cells = {cell.position: cell.request for cell in plot_cells(base, axes)}
    assert (cells[(0, 0, 0)].lora_paths, cells[(0, 0, 0)].lora_scales) == (("second",), (0.7,))  # not scaled
    assert (cells[(1, 1, 0)].lora_paths, cells[(1, 1, 0)].lora_scales) == (("ink", "second"), (1.0, 0.7))
    assert (cells[(0, 1, 0)].lora_paths, cells[(0, 1, 0)].lora_scales) == (("ink", "second"), (0.25, 0.7))
    plain = {cell.position: cell.request for cell in plot_cells(GenerationRequest(prompt="a cat"), axes)}
    assert (plain[(1, 0, 0)].lora_paths, plain[(0, 1, 0)].lora_scales) == ((), (0.25,))  # none: no LoRA to scale
    (resolved,) = resolve_loras(axes[1:], lambda name: f"/library/{name}.safetensors")
    assert resolved.values == ("none", "/library/ink.safetensors")
    assert [resolved.heading(value) for value in resolved.values] == ["LoRA: none", "LoRA: ink"]


def test_a_cli_prompt_s_lora_tag_is_the_lora_flag_and_models_folder_loras_go_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv("LORA_LIBRARY_PATH", raising=False)
    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    write_diffusers_lora(models / "loras" / "style.safetensors", Dims.of(demo_folder("demo")), magnitude=2.0)
    common = ["generate", "--seed", "3", "--steps", "1", "--models-dir", str(models)]
    assert main([*common, "-p", "a red circle <lora:style:0.7>", "--output", str(tmp_path / "tag.png")]) == 0
    assert main([*common, "-p", "a red circle", "--lora-paths", "style", "--lora-scales", "0.7",
                 "--output", str(tmp_path / "flag.png")]) == 0
    assert main([*common, "-p", "a red circle", "--output", str(tmp_path / "none.png")]) == 0
    tagged = recorded_request(tmp_path / "tag.png")
    assert (tagged["prompt"], tagged["lora_paths"], tagged["lora_scales"]) == ("a red circle", ["style"], [0.7])
    assert np.array_equal(pixels(tmp_path / "tag.png"), pixels(tmp_path / "flag.png"))
    assert not np.array_equal(pixels(tmp_path / "tag.png"), pixels(tmp_path / "none.png"))
    assert main([*common, "-p", "a cat <lora:nowhere>", "--output", str(tmp_path / "bad.png")]) == 1
    assert not (tmp_path / "bad.png").exists()


def test_the_cli_lora_axis_runs_each_lora_and_refuses_an_unknown_one_before_any_image(tmp_path, monkeypatch):
    library = tmp_path / "loras"
    library.mkdir()
    write_diffusers_lora(library / "style.safetensors", Dims.of(demo_folder("demo")), magnitude=2.0)
    monkeypatch.setenv("LORA_LIBRARY_PATH", str(library))
    assert main(["generate", "-p", "a red circle", "--seed", "2", "--steps", "1", "--x-axis", "lora=none, style",
                 "--output", str(tmp_path / "p.png")]) == 0
    with_lora = recorded_request(tmp_path / "p_x1_y0_z0.png")
    assert [Path(p).name for p in with_lora["lora_paths"]] == ["style.safetensors"]
    assert recorded_request(tmp_path / "p_x0_y0_z0.png")["lora_paths"] == []
    assert not np.array_equal(pixels(tmp_path / "p_x0_y0_z0.png"), pixels(tmp_path / "p_x1_y0_z0.png"))

    assert main(["generate", "-p", "a cat", "--x-axis", "lora=none, nowhere",
                 "--output", str(tmp_path / "bad" / "p.png")]) == 1
    assert not (tmp_path / "bad").exists()


def test_the_pages_prompt_list_seeds_lines_as_a1111s_boxes_say(tmp_path):
    from mflux_core.presets import validate_settings
    from webui.prompt_list_ui import prompt_list_requests
    from webui.requests import InputStore, RequestContext, requests_from_settings

    drawn = iter(range(100, 200, 10))
    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), draw_seed=lambda: next(drawn))
    text = "a cat\na dog\n--prompt a fox --seed 7"

    def seeds(settings: dict, **boxes) -> list[int]:
        base = requests_from_settings(settings, context)[0]
        return [r.seed for r in prompt_list_requests(base, settings, {"prompt_lines": text, **boxes}, context)]

    fixed = validate_settings({"tool": "generate", "prompt": "", "seed": 3, "batch_count": 2})
    assert seeds(fixed) == [3, 4, 3, 4, 7, 8]  # every line at the panel's seed, a line's own kept
    assert seeds(fixed, prompt_iterate_seed=True) == [3, 4, 5, 6, 7, 8]  # moved on by the panel's images
    random = {**fixed, "seed": None}
    assert seeds(random) == [110, 111, 120, 121, 7, 8]  # the panel's drawn (100) unused: one drawn per line
    assert seeds(random, prompt_same_seed=True) == [130, 131, 130, 131, 7, 8]


def test_the_pages_prompt_list_and_image_batch_take_each_prompts_lora_tags_once(tmp_path):
    """A line's (or a batch image's PNG info's) `<lora:name:scale>` tags are LoRAs of the library, as A1111 reads
    them; the panel prompt's tags go with its prompt, which a line's prompt goes beside (A1111's tags are the
    prompt's)."""
    from mflux_core.presets import validate_settings
    from webui.image_batch_ui import image_batch_requests
    from webui.prompt_list_ui import prompt_list_requests
    from webui.requests import InputStore, RequestContext, requests_from_settings

    library = {"style": tmp_path / "style.safetensors", "ink": tmp_path / "ink.safetensors"}
    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), loras=library, draw_seed=lambda: 0)
    settings = validate_settings({"tool": "generate", "prompt": "a fox <lora:style:0.7>", "seed": 3})
    (base,) = requests_from_settings(settings, context)
    lines = prompt_list_requests(base, settings, {"prompt_lines": "a cat <lora:ink:0.5>\n--steps 2"}, context)
    assert [(r.prompt, r.lora_paths, r.lora_scales) for r in lines] == [
        ("a cat a fox", (str(library["ink"]), str(library["style"])), (0.5, 0.7)),
        ("a fox", (str(library["style"]),), (0.7,))]
    with pytest.raises(InvalidRequest, match="'nowhere' is not in the LoRA library"):
        prompt_list_requests(base, settings, {"prompt_lines": "a cat <lora:nowhere>"}, context)

    picture = tmp_path / "picture.png"
    Image.new("RGB", (64, 64)).save(picture)
    (image,) = image_batch_requests(base, {**settings, "prompt": "a hen <lora:ink>"}, [str(picture)], [], context,
                                    lambda upload: {"image_path": upload})
    assert (image.prompt, image.lora_paths, image.lora_scales) == ("a hen", (str(library["ink"]),), (1.0,))
