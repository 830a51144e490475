"""A1111 prompt styles (mflux_core/styles.py): A1111's styles.csv read as A1111 writes it, merged as A1111 merges
them, through the CLI, the page's requests, its prompt lists and presets (the A1111 API: tests/test_a1111_api.py)."""

import json

import pytest
from PIL import Image

from mflux_core.cli import main as cli_main
from mflux_core.errors import InvalidRequest
from mflux_core.presets import validate_settings
from mflux_core.request import GenerationRequest
from mflux_core.styles import read_styles, request_styler
from webui.prompt_list_ui import prompt_list_requests
from webui.requests import RequestContext, requests_from_settings
from webui.widgets import shared_settings, shared_values

# As A1111 writes its styles.csv (csv.DictWriter, quoting what needs it): a prompt with {prompt}, one with a comma
# and a newline, one without a negative prompt.
A1111_CSV = ('name,prompt,negative_prompt\r\n'
             'Cinematic,"cinematic still of {prompt}, film grain","cartoon, blurry"\r\n'
             'Watercolour,"watercolour painting,\nsoft edges",\r\n'
             'Empty,,\r\n')


@pytest.fixture
def styles_dir(tmp_path):
    folder = tmp_path / "styles"
    folder.mkdir()
    (folder / "styles.csv").write_text(A1111_CSV, newline="")
    (folder / "styles-more.csv").write_text("name,text\nCinematic,shadowed\nOld,sepia tones\n")  # A1111's old column
    return folder


def test_a1111_styles_files_are_read_as_a1111_writes_them(styles_dir):
    styles = read_styles(styles_dir)
    assert list(styles) == ["Cinematic", "Watercolour", "Empty", "Old"]  # styles.csv first; a name keeps its first
    assert styles["Cinematic"].negative_prompt == "cartoon, blurry"
    assert styles["Watercolour"].prompt == "watercolour painting,\nsoft edges"
    assert styles["Old"].prompt == "sepia tones"
    assert read_styles(styles_dir / "missing") == {} and read_styles(None) == {}


def test_styles_merge_in_order_as_a1111_merges_them(styles_dir):
    def styled(prompt: str, negative: str, names) -> tuple[str, str]:
        request = request_styler(names, styles_dir)(GenerationRequest(prompt=prompt, negative_prompt=negative))
        return request.prompt, request.negative_prompt

    assert styled("a cat", "", ["Cinematic"]) == ("cinematic still of a cat, film grain", "cartoon, blurry")
    assert styled(" a cat ", "dogs", ["Old", "Cinematic"]) == (
        "cinematic still of a cat, sepia tones, film grain", "dogs, cartoon, blurry")
    assert styled("", "", ["Old"]) == ("sepia tones", "")
    assert styled("a cat", "dogs", ["Empty"]) == ("a cat", "dogs")
    fill = request_styler(["Cinematic"], styles_dir)(GenerationRequest(tool="fill", prompt="sea", negative_prompt=""))
    assert fill.negative_prompt == ""  # Fill has no negative prompt to merge into
    with pytest.raises(InvalidRequest, match="There is no style named 'Noir' \\(styles: Cinematic, Empty, Old, "):
        request_styler(["Noir"], styles_dir)
    with pytest.raises(InvalidRequest, match="Pick at most 8 styles, not 9"):
        request_styler(["Old"] * 9, styles_dir)


def test_a_file_that_is_not_a_styles_file_is_named(tmp_path):
    (tmp_path / "styles.csv").write_text("name,prompt\nHuge," + "x" * 200_000 + "\n")  # past csv's field limit
    with pytest.raises(InvalidRequest, match="Cannot read the styles file styles.csv"):
        read_styles(tmp_path)


def test_the_page_merges_its_styles_into_every_request_and_its_presets_keep_their_names(styles_dir, tmp_path):
    from webui.requests import InputStore

    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), styles=styles_dir, draw_seed=lambda: 0)
    settings = validate_settings({"tool": "generate", "prompt": "a {red|blue} cat", "negative_prompt": "dogs",
                                  "true_cfg_scale": 2.0, "seed": 3, "batch_count": 2, "styles": ["Cinematic"]})
    first, second = requests_from_settings(settings, context)
    assert first.prompt in ("cinematic still of a red cat, film grain", "cinematic still of a blue cat, film grain")
    assert second.negative_prompt == "dogs, cartoon, blurry" and second.seed == 4
    fill = requests_from_settings({"tool": "fill", "prompt": "sea", "styles": ["Old"]}, context,
                                  image_path="i.png", masked_image_path="m.png")[0]
    assert (fill.prompt, fill.negative_prompt) == ("sea, sepia tones", "")  # Fill has no negative prompt
    # a prompt list, as A1111's script: a line's prompts go beside the panel's, then the styles merge in (a line's
    # own negative prompt kept the style's out)
    on_grass = {**settings, "prompt": "on grass"}
    base = requests_from_settings(on_grass, context)[0]
    lines = prompt_list_requests(base, on_grass, {"prompt_lines": "a dog\n--prompt 'a fox' --seed 9 --negative_prompt "
                                                                  "cats"}, context)
    assert [(r.prompt, r.negative_prompt) for r in lines] == [
        ("cinematic still of a dog on grass, film grain", "dogs, cartoon, blurry")] * 2 + [
        ("cinematic still of a fox on grass, film grain", "cats dogs, cartoon, blurry")] * 2  # two images a line
    (fox, _) = prompt_list_requests(base, on_grass, {"prompt_lines": "--prompt 'a fox' --negative_prompt cats",
                                                     "prompt_position": "end"}, context)
    assert (fox.prompt, fox.negative_prompt) == ("cinematic still of on grass a fox, film grain",
                                                 "dogs cats, cartoon, blurry")
    alone = prompt_list_requests(base, {**on_grass, "prompt": ""}, {"prompt_lines": "a dog"}, context)
    assert alone[0].prompt == "cinematic still of a dog, film grain"  # the panel's prompt cleared: the lines alone
    values = shared_values(settings)
    assert values["styles"] == ["Cinematic"] and shared_settings(values)["styles"] == ["Cinematic"]
    assert "styles" not in shared_settings(shared_values({"prompt": "x"}))
    with pytest.raises(InvalidRequest, match="no style named 'Noir'"):
        requests_from_settings({"tool": "generate", "prompt": "x", "styles": ["Noir"]}, context)


def test_the_cli_merges_styles_into_each_images_prompt(styles_dir, tiny_dev, tmp_path, capsys):
    output = tmp_path / "styled_{seed}.png"
    assert cli_main(["generate", "--path", str(tiny_dev), "--prompt", "a cat", "--styles", "Old", "Cinematic",
                     "--styles-dir", str(styles_dir), "--negative-prompt", "dogs", "--true-cfg-scale", "2",
                     "--seed", "1", "2", "--steps", "1", "--width", "64", "--height", "64", "--metadata",
                     "--output", str(output)]) == 0
    for seed in (1, 2):
        recorded = json.loads((tmp_path / f"styled_{seed}.json").read_text())["request"]
        assert recorded["prompt"] == "cinematic still of a cat, sepia tones, film grain"
        assert recorded["negative_prompt"] == "dogs, cartoon, blurry"
    assert cli_main(["concept", "--path", str(tiny_dev), "--prompt", "a cat", "--concept", "cat", "--styles", "Old",
                     "--styles-dir", str(styles_dir), "--steps", "1", "--width", "64", "--height", "64",
                     "--output", str(tmp_path / "concept.png")]) == 0
    with Image.open(tmp_path / "concept.png") as concept:
        assert json.loads(concept.text["mflux_studio"])["request"]["prompt"] == "a cat, sepia tones"
    code = cli_main(["generate", "--path", str(tiny_dev), "--prompt", "a cat", "--styles", "Noir", "--styles-dir",
                     str(styles_dir), "--steps", "1", "--output", str(tmp_path / "no.png")])
    assert code == 1 and "There is no style named 'Noir'" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


def test_plots_merge_styles_after_their_axes_as_a1111_does(styles_dir, tiny_dev, tmp_path, capsys):
    """A1111 merges styles after its X/Y/Z script changed the prompt: a Prompt S/R term must be in the user's own
    prompt, and each cell's prompt is styled after the replacement (the page and the CLI)."""
    from webui.panels.plot import plot_requests
    from webui.requests import InputStore

    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), styles=styles_dir, draw_seed=lambda: 0)
    values = shared_values(validate_settings({"tool": "generate", "prompt": "a cat", "negative_prompt": "dogs",
                                              "true_cfg_scale": 2.0, "seed": 3, "styles": ["Cinematic"]}))
    _, cells = plot_requests({**values, "x_kind": "prompt-sr", "x_values": "cat, fox"}, context)
    assert [cell.request.prompt for cell in cells] == ["cinematic still of a cat, film grain",
                                                       "cinematic still of a fox, film grain"]
    assert {cell.request.negative_prompt for cell in cells} == {"dogs, cartoon, blurry"}
    with pytest.raises(InvalidRequest, match="neither the prompt nor the negative prompt contains 'film'"):
        plot_requests({**values, "x_kind": "prompt-sr", "x_values": "film, video"}, context)

    args = ["generate", "--path", str(tiny_dev), "--prompt", "a cat", "--styles", "Old", "--styles-dir",
            str(styles_dir), "--seed", "1", "--steps", "1", "--width", "32", "--height", "32", "--metadata"]
    assert cli_main([*args, "--x-axis", "prompt-sr=cat,fox", "--output", str(tmp_path / "plot.png")]) == 0
    assert json.loads((tmp_path / "plot_x1_y0_z0.json").read_text())["request"]["prompt"] == "a fox, sepia tones"
    assert cli_main([*args, "--x-axis", "prompt-sr=sepia,blue", "--output", str(tmp_path / "no.png")]) == 1
    assert "neither the prompt nor the negative prompt contains 'sepia'" in capsys.readouterr().err


def test_a_styles_axis_plots_each_style_after_the_other_axes_as_a1111_does(styles_dir, tiny_dev, tmp_path, capsys):
    """A1111's Styles axis: each cell's prompts with that style merged in ('none': as they are), after the other axes
    (a Prompt S/R term is not looked for in the style's text); a name the styles folder lacks is refused before
    anything runs (the page and the CLI)."""
    from webui.panels.plot import plot_requests
    from webui.requests import InputStore

    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), styles=styles_dir, draw_seed=lambda: 0)
    values = shared_values(validate_settings({"tool": "generate", "prompt": "a cat", "negative_prompt": "dogs",
                                              "true_cfg_scale": 2.0, "seed": 3}))
    axes, cells = plot_requests({**values, "x_kind": "styles", "x_values": "none, Cinematic, Old",
                                 "y_kind": "prompt-sr", "y_values": "cat, fox"}, context)
    assert [cell.request.prompt for cell in cells if cell.position[1] == 1] == [
        "a fox", "cinematic still of a fox, film grain", "a fox, sepia tones"]
    assert [cell.request.negative_prompt for cell in cells if cell.position[1] == 0] == [
        "dogs", "dogs, cartoon, blurry", "dogs"]
    assert [axes[0].heading(value) for value in axes[0].values] == ["Styles: none", "Styles: Cinematic", "Styles: Old"]
    with pytest.raises(InvalidRequest, match="The Styles axis: there is no style named 'Noir'"):
        plot_requests({**values, "x_kind": "styles", "x_values": "Cinematic, Noir"}, context)
    # A1111 appends the axis's style to the request's own (p.styles), so the request's merge first
    _, (old_only, both) = plot_requests({**values, "styles": ["Old"], "x_kind": "styles",
                                         "x_values": "none, Cinematic"}, context)
    assert (old_only.request.prompt, both.request.prompt) == ("a cat, sepia tones",
                                                              "cinematic still of a cat, sepia tones, film grain")

    args = ["generate", "--path", str(tiny_dev), "--prompt", "a cat", "--styles-dir", str(styles_dir), "--seed", "1",
            "--steps", "1", "--width", "32", "--height", "32", "--metadata"]
    assert cli_main([*args, "--x-axis", "styles=none, Old", "--output", str(tmp_path / "styled.png")]) == 0
    assert json.loads((tmp_path / "styled_x1_y0_z0.json").read_text())["request"]["prompt"] == "a cat, sepia tones"
    assert cli_main([*args, "--x-axis", "styles=Noir", "--output", str(tmp_path / "no.png")]) == 1
    assert "there is no style named 'Noir'" in capsys.readouterr().err


def test_a_plot_takes_the_hires_fix_and_its_axes(styles_dir, tmp_path):
    """A1111's X/Y/Z over hires settings: with the hires fix on, its denoising strength as an axis; without it, a
    hires axis is refused in a sentence."""
    from webui.panels.plot import plot_requests
    from webui.requests import InputStore

    context = RequestContext(inputs=InputStore(tmp_path / "inputs"), styles=styles_dir, draw_seed=lambda: 0)
    values = shared_values(validate_settings({"tool": "generate", "prompt": "a cat", "seed": 3}))
    hires = {"hires": True, "hires_scale": 2.0, "hires_steps": 3, "hires_strength": 0.5, "hires_upscaler": "Lanczos",
             "hires_prompt": ""}
    _, cells = plot_requests({**values, **hires, "x_kind": "hires-strength", "x_values": "0.3, 0.6"}, context)
    assert [(cell.request.hires_scale, cell.request.hires_strength) for cell in cells] == [(2.0, 0.3), (2.0, 0.6)]
    with pytest.raises(InvalidRequest, match="belong to the hires fix: turn it on"):
        plot_requests({**values, "x_kind": "hires-steps", "x_values": "2, 4"}, context)
