"""A1111 `<lora:name:scale>` tags: written into the PNG `parameters` text for each LoRA, read back as LoRAs by
name, and taken from a prompt as its LoRAs."""

from PIL import Image, PngImagePlugin

from mflux_core.lora.a1111 import take_lora_tags, with_prompt_loras
from mflux_core.metadata import A1111_KEY, a1111_parameters
from mflux_core.presets import settings_from_a1111, settings_from_png
from mflux_core.request import GenerationRequest


def a1111_png(path, text):
    info = PngImagePlugin.PngInfo()
    info.add_text(A1111_KEY, text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_the_parameters_text_tags_each_lora_and_a_png_restores_them_by_name(tmp_path):
    request = GenerationRequest(model="dev", prompt="a lighthouse, at dusk", seed=7, steps=12, width=512, height=512,
                                lora_paths=("/anywhere/watercolor.safetensors", "not-in-library"),
                                lora_scales=(0.8, -0.5))
    text = a1111_parameters(request)
    assert text.split("\n")[0] == "a lighthouse, at dusk <lora:watercolor:0.8> <lora:not-in-library:-0.5>"

    settings = settings_from_png(a1111_png(tmp_path / "a.png", text))
    assert settings["prompt"] == "a lighthouse, at dusk"
    # by name: the page looks them up in its LoRA library and names those it lacks (presets_ui.apply_settings)
    assert (settings["lora_paths"], settings["lora_scales"]) == (["watercolor", "not-in-library"], [0.8, -0.5])


def test_a_prompt_s_tags_become_its_loras_after_those_it_has():
    request = GenerationRequest(prompt="a fox <lora:ink:0.8>, <lyco:soft light>", lora_paths=("oil",))
    moved = with_prompt_loras(request)
    assert (moved.prompt, moved.lora_paths, moved.lora_scales) == ("a fox,", ("oil", "ink", "soft light"),
                                                                   (1.0, 0.8, 1.0))
    assert with_prompt_loras(moved) == moved and with_prompt_loras(GenerationRequest(prompt="a  fox ")).prompt == \
        "a  fox "  # no tags: untouched


def test_forge_and_lycoris_tag_spellings():
    text = ("portrait <lora:ink:1:0.6>, <lyco:soft light:7>\nsecond line <lora:ink>\n"
            "Steps: 20, Seed: 3, Size: 512x512")
    settings = settings_from_a1111(text)
    assert settings["prompt"] == "portrait,\nsecond line"
    assert settings["lora_paths"] == ["ink", "soft light", "ink"]
    assert settings["lora_scales"] == [0.6, 4, 1.0]  # the unet scale of <lora:name:te:unet>; 7 clamped to 4
    assert settings["lora_text_encoder_scales"] == [1, 4, 1.0]  # its te scale
    assert take_lora_tags("x <lora:a:nan> <lora:b:unet=0.5> <lora:c:0.7:unet=0.2> <lora:d:0.7:te=0.2>")[1] == [
        ("a", 1.0, 1.0), ("b", 0.5, 1.0), ("c", 0.2, 0.7), ("d", 0.2, 0.2)]  # A1111's: unet defaults to te


def test_a_text_encoder_scale_of_its_own_travels_in_the_tags_and_back():
    request = GenerationRequest(prompt="a fox <lora:ink:0.3:0.9>", lora_paths=("oil",), lora_scales=(0.5,))
    moved = with_prompt_loras(request)
    assert (moved.lora_paths, moved.lora_scales, moved.lora_text_encoder_scales) == (
        ("oil", "ink"), (0.5, 0.9), (0.5, 0.3))
    text = a1111_parameters(moved)
    assert text.split("\n")[0] == "a fox <lora:oil:0.5> <lora:ink:0.3:0.9>"
    restored = settings_from_a1111(text)
    assert (restored["lora_scales"], restored["lora_text_encoder_scales"]) == ([0.5, 0.9], [0.5, 0.3])
    plain = with_prompt_loras(GenerationRequest(prompt="a fox <lora:ink:0.4>"))
    assert plain.lora_text_encoder_scales == ()  # listed only when one differs
