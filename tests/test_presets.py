"""Presets: the schema, validation of what others send us, files, and settings restored from PNGs."""

import json
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from mflux_core.images.io import save_png_atomic
from mflux_core.metadata import a1111_parameters, png_text_chunks
from mflux_core.presets import (
    INPUT_PATH_FIELDS, MAX_PRESET_BYTES, SETTING_FIELDS, Preset, PresetError, delete_preset, json_depth,
    list_presets, parse_preset, preset_json, read_preset_file, save_preset, settings_from_a1111, settings_from_png,
    settings_from_request, validate_settings,
)
from mflux_core.request import TOOLS, GenerationRequest
from mflux_core.settings_schema import MAX_PROMPT_CHARS

SHIPPED = Path(__file__).resolve().parent.parent / "presets"


def preset_text(settings: dict, **top) -> str:
    return json.dumps({"format": 1, "name": "Mine", "settings": settings, **top})


def test_schema_is_the_request_settings_without_input_paths():
    assert set(SETTING_FIELDS) | INPUT_PATH_FIELDS == set(GenerationRequest.field_names())
    assert not set(SETTING_FIELDS) & INPUT_PATH_FIELDS
    assert {"prompt", "seed", "steps", "guidance", "width", "height", "lora_scales", "extra"} <= set(SETTING_FIELDS)


def test_shipped_presets_are_valid_and_cover_the_tools():
    presets, problems = list_presets([(SHIPPED, "shipped")])
    assert problems == []
    assert len(presets) >= 8
    names = {p.name for p in presets}
    assert {"Fast schnell draft", "Dev quality", "Inpaint", "Outpaint wide", "Depth restyle", "Kontext edit",
            "Canny from sketch", "Upscale 2x"} <= names
    assert {p.tool for p in presets} == {"generate", "fill", "depth", "kontext", "controlnet", "upscale"}
    for preset in presets:  # every shipped preset makes a valid request
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in preset.settings.items() if k != "batch_count"}
        GenerationRequest(**{**fields, "seed": fields.get("seed") or 0}).validated()


def test_a_valid_preset_round_trips_through_json():
    settings = {"tool": "fill", "model": "black-forest-labs/FLUX.1-Fill-dev", "prompt": "a cat\nwith a hat",
                "seed": None, "steps": 20, "guidance": 30.0, "width": 512, "height": 768, "keep_unmasked": True,
                "outpaint_padding": "0,25%,0,25%", "lora_paths": ["style-a"], "lora_scales": [0.8], "quantize": 8,
                "batch_count": 3, "extra": {"mask_grow_px": 4, "mask_invert": False, "tags": ["a", 1]}}
    preset = parse_preset(preset_text(settings, description="for cats"))
    assert preset.settings == settings and preset.description == "for cats"
    assert parse_preset(preset_json(preset)) == preset


@pytest.mark.parametrize("settings, expected", [
    ({"stepz": 4}, "unknown setting 'stepz'"),
    ({"image_path": "/etc/passwd"}, "'image_path' is an input file path"),
    ({"redux_image_paths": ["a.png"]}, "'redux_image_paths' is an input file path"),
    ({"model": "/home/me/models/flux"}, "'model' must be a model name"),
    ({"model": "../../outside"}, "'model' must be a model name"),
    ({"model": "owner/repo/../x"}, "'model' must be a model name"),
    ({"lora_paths": ["../secret.safetensors"]}, "'lora_paths' has an item that must be a LoRA library name"),
    ({"lora_paths": ["/abs/lora.safetensors"]}, "'lora_paths' has an item"),
    ({"steps": 0}, "'steps' must be a whole number from 1 to 500"),
    ({"steps": 4.5}, "'steps' must be a whole number"),
    ({"steps": True}, "'steps' must be a whole number"),
    ({"width": 1000}, "'width' must be a multiple of 16"),
    ({"guidance": "3.5"}, "'guidance' must be a number"),
    ({"guidance": float("nan")}, "'guidance' must be a number"),
    ({"image_strength": 1.0}, "'image_strength' must be a number from 0 to below 1"),
    ({"tool": "shell"}, "'tool' must be one of"),
    ({"quantize": 7}, "'quantize' must be one of"),
    ({"outpaint_padding": "-5"}, "'outpaint_padding' must be pixels or percentages"),
    ({"extra": {"Bad Key": 1}}, "'extra' has a bad key"),
    ({"extra": {"code": {"nested": 1}}}, "'extra' code must be a number"),
    ({"extra": {"garment_image_path": "/home/me/g.png"}}, "'extra' garment_image_path must name a model"),
    ({"extra": {"controlnet_path": "../weights"}}, "'extra' controlnet_path must name a model"),
    ({"batch_count": 100}, "'batch_count' must be a whole number from 1 to 16"),
    ({"lora_paths": ["a", "b"], "lora_scales": [1.0]}, "2 LoRAs but 1 scales"),
])
def test_bad_settings_are_reported_by_name(settings, expected):
    with pytest.raises(PresetError, match="cannot be used") as caught:
        parse_preset(preset_text(settings))
    assert expected in str(caught.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(PresetError) as caught:
        parse_preset(json.dumps({"name": "x", "settings": {"steps": 0, "width": 7, "evil": 1}, "run": "rm -rf"}))
    message = str(caught.value)
    for expected in ("unknown key 'run'", "unknown setting 'evil'", "'steps'", "'width'"):
        assert expected in message


@pytest.mark.parametrize("text, expected", [
    ("[" * 5000 + "]" * 5000, "nests deeper than 4 levels"),
    ('{"name": "x", "settings": {"extra": {"a": [[1]]}}}', "nests deeper than 4 levels"),
    (json.dumps({"name": "x", "settings": {"prompt": "y" * MAX_PRESET_BYTES}}), "larger than 64 KiB"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({"name": "", "settings": {}}), "preset name must be"),
    (json.dumps({"name": "x", "settings": {}, "format": 2}), "format 2 is not 1"),
])
def test_malformed_files_are_refused(text, expected):
    with pytest.raises(PresetError, match=expected):
        parse_preset(text)


def test_json_depth_ignores_brackets_inside_strings():
    assert json_depth('{"a": "[[[[[[[[", "b": [1, {"c": "\\"]]]"}]}') == 3


def test_save_list_and_delete_user_presets(tmp_path):
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    save_preset(shipped, Preset("Draft", {"tool": "generate", "steps": 4}, source="shipped"))
    path = save_preset(user, Preset("My Draft!", {"tool": "generate", "steps": 8}))
    assert path.name == "my-draft.json"
    (user / "broken.json").write_text("{")
    presets, problems = list_presets([(shipped, "shipped"), (user, "user")])
    assert [(p.label, p.settings["steps"]) for p in presets] == [("My Draft!", 8), ("Draft (shipped)", 4)]
    assert len(problems) == 1 and "broken.json" in problems[0]
    save_preset(user, Preset("My Draft!", {"tool": "generate", "steps": 9}))  # saving again replaces it
    assert read_preset_file(path).settings["steps"] == 9
    for action in (lambda: save_preset(user, Preset("my draft", {"tool": "fill", "steps": 2})),
                   lambda: delete_preset(user, "MY-DRAFT")):  # the same file name, another preset's: it replaced it
        with pytest.raises(PresetError, match=r"^The preset '(my draft|MY-DRAFT)' would go into my-draft.json, which "
                                              r"holds the preset 'My Draft!'"):
            action()
    assert read_preset_file(path).settings["steps"] == 9
    delete_preset(user, "My Draft!")
    assert not path.exists()
    with pytest.raises(PresetError, match="no user preset"):
        delete_preset(user, "Draft")


def test_settings_from_a_request_drop_input_paths_and_keep_lora_names():
    request = GenerationRequest(tool="fill", model="/models/tiny-fill", prompt="p", seed=7, steps=3,
                                image_path="/in/a.png", masked_image_path="/in/m.png", keep_unmasked=True,
                                lora_paths=("/loras/style/ink.safetensors",), lora_scales=(0.5,),
                                extra={"garment_image_path": "/in/g.png", "controlnet_path": "canny", "canny_low": 9})
    settings = settings_from_request(request)
    assert not INPUT_PATH_FIELDS & set(settings)
    assert settings["extra"] == {"controlnet_path": "canny", "canny_low": 9}
    assert settings["model"] == "tiny-fill"  # a folder path keeps only its name
    assert settings["lora_paths"] == ["ink"] and settings["lora_scales"] == [0.5]
    assert validate_settings(settings) == settings


def test_metadata_round_trip_through_a_png(tmp_path):
    request = GenerationRequest(model="dev", prompt="a lighthouse, at dusk\nsecond line", seed=42, steps=14,
                                width=512, height=768, guidance=4.0, image_path="/x/in.png", image_strength=0.3)
    path = save_png_atomic(Image.new("RGB", (16, 16)), tmp_path / "r.png", png_text_chunks(request, {"steps": 14}))
    assert settings_from_png(path) == settings_from_request(request)


def test_a1111_parameters_give_prompt_steps_seed_size_guidance(tmp_path):
    text = ("masterpiece, a castle\non a hill\nNegative prompt: blurry, low quality\n"
            'Steps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, Distilled CFG Scale: 3.5, '
            'Seed: 1234567, Size: 832x1216, Model hash: abc, Model: flux1-dev, Lora hashes: "a: 1, b: 2", '
            "Version: f2.0")
    assert settings_from_a1111(text) == {"prompt": "masterpiece, a castle\non a hill", "steps": 20, "seed": 1234567,
                                         "width": 832, "height": 1216, "guidance": 3.5, "sampler": "euler",
                                         "schedule": "simple",
                                         "negative_prompt": "blurry, low quality", "true_cfg_scale": 1.0}
    sd = settings_from_a1111("a cat\nSteps: 30, CFG scale: 7, Seed: 5, Size: 500x500")
    assert sd == {"prompt": "a cat", "steps": 30, "seed": 5, "width": 496, "height": 496}  # SD's CFG is not FLUX's
    long = settings_from_a1111("a cat " * 5000 + "\nSteps: 30, Seed: 5, Size: 512x512")  # 30,000 characters
    assert (len(long["prompt"]), long["steps"]) == (MAX_PROMPT_CHARS, 30)  # cut as the page's prompt box is
    odd = settings_from_a1111("a cat\nSteps: ², Seed: " + "9" * 5000 + ", Size: 64x64, Hires steps: ³")
    assert odd == {"prompt": "a cat", "width": 64, "height": 64}  # numbers int() cannot read are left out
    one_line = "a cat " * 33_000  # 198,000 characters on the line read for items: read in one pass, not one per start
    assert settings_from_a1111(one_line) == {"prompt": one_line.strip()[:MAX_PROMPT_CHARS]}
    no_items = settings_from_a1111("a cat\nNegative prompt: a dog\nSteps: 30")  # A1111: under three items is text
    assert no_items == {"prompt": "a cat", "negative_prompt": "a dog\nSteps: 30"}
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(tmp_path / "a1111.png", pnginfo=info)
    assert settings_from_png(tmp_path / "a1111.png")["seed"] == 1234567


def test_pngs_without_settings_are_refused(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(PresetError, match="carries no settings"):
        settings_from_png(tmp_path / "plain.png")
    digits = PngImagePlugin.PngInfo()
    digits.add_text("mflux_studio", '{"format": 2, "request": {"seed": ' + "9" * 5000 + "}}")
    Image.new("RGB", (8, 8)).save(tmp_path / "digits.png", pnginfo=digits)
    with pytest.raises(PresetError, match="not valid JSON"):  # a number past the 4,300 digits Python reads
        settings_from_png(tmp_path / "digits.png")
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(PresetError, match="not an image"):
        settings_from_png(tmp_path / "fake.png")


def test_every_tool_has_a_valid_minimal_preset():
    for tool in TOOLS:
        assert parse_preset(preset_text({"tool": tool})).tool == tool


def test_a1111_cfg_scale_is_true_cfg_with_a_negative_prompt_and_distilled_cfg_is_guidance():
    forge = settings_from_a1111("a fox\nNegative prompt: blurry,\nlow quality\n"
                                "Steps: 20, CFG scale: 3.5, Distilled CFG Scale: 2.5, Seed: 1, Size: 512x512")
    assert (forge["negative_prompt"], forge["true_cfg_scale"], forge["guidance"]) == ("blurry,\nlow quality", 3.5, 2.5)
    sd = settings_from_a1111("a fox\nNegative prompt: ugly\nSteps: 30, CFG scale: 30, Seed: 2, Size: 512x512")
    assert (sd["negative_prompt"], sd["true_cfg_scale"]) == ("ugly", 20.0) and "guidance" not in sd  # clamped
    fill = settings_from_a1111("a fox\nNegative prompt: ugly\nSteps: 3, CFG scale: 4, Distilled CFG Scale: 30, "
                               "Tool: fill, Version: mflux-studio")
    assert fill["guidance"] == 30 and "negative_prompt" not in fill and "true_cfg_scale" not in fill  # none in Fill
    ours = GenerationRequest(prompt="a fox", negative_prompt="blurry", true_cfg_scale=4.0, guidance=3.0, steps=3)
    back = settings_from_a1111(a1111_parameters(ours))
    assert (back["negative_prompt"], back["true_cfg_scale"], back["guidance"]) == ("blurry", 4.0, 3.0)


def test_the_a1111_controlnet_extensions_first_unit_sets_the_controlnet_tool():
    unit = ('ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.8, Resize Mode: Just '
            'Resize, Processor Res: 512, Threshold A: 50.0, Threshold B: 150.0, Guidance Start: 0.0, Guidance End: '
            '1.0, Pixel Perfect: False, Control Mode: Balanced"')
    text = f"a cat\nSteps: 20, Seed: 1, Size: 512x768, {unit}, Hires upscale: 2, Version: v1.10.1"
    canny = settings_from_a1111(text)
    assert (canny["tool"], canny["controlnet_strength"], canny["resize_mode"]) == ("controlnet", 0.8, "just resize")
    assert canny["extra"] == {"canny_low": 50.0, "canny_high": 150.0} and canny["hires_scale"] == 2.0
    assert settings_from_a1111(text.replace("Module: canny", "Module: depth_anything_v2"))["extra"] == {
        "controlnet_mode": "depth"}
    assert settings_from_a1111(text.replace("Module: canny", "Module: none"))["extra"] == {
        "controlnet_skip_canny": True}  # the image as given, as the extension used it
    lineart = settings_from_a1111(text.replace("Module: canny", "Module: lineart_standard"))
    assert "tool" not in lineart and lineart["seed"] == 1  # a preprocessor no FLUX.1 ControlNet here takes
    heavy = settings_from_a1111(text.replace("Weight: 0.8", "Weight: 7").replace("Threshold A: 50.0",
                                                                                  "Threshold A: nan"))
    assert heavy["controlnet_strength"] == 2.0 and heavy["extra"] == {"canny_high": 150.0}
    assert settings_from_a1111(f"a cat\nSteps: 20, {unit}, Tool: upscale")["tool"] == "upscale"  # ours names it
