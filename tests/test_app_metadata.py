"""SwarmUI's and InvokeAI's PNG settings restore into the studio's (ComfyUI's graph: test_comfy_workflow.py): what
each app writes for a FLUX.1 image, its names mapped to ours, limits applied as for A1111's, and JSON that is no use
refused in a sentence (a SwarmUI PNG's JSON was read as an A1111 text before, its whole JSON becoming the prompt)."""

import json

import pytest
from PIL import Image, PngImagePlugin

from mflux_core.presets import PresetError, settings_from_png

PROMPT = "a lighthouse at dusk, film photo"


def png(tmp_path, key: str, value) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text(key, value if isinstance(value, str) else json.dumps(value))
    path = tmp_path / f"{key}.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)


def swarm(**changes) -> dict:
    """What SwarmUI writes into "parameters" for a FLUX.1-dev image (list values as text, as it writes them)."""
    params = {"prompt": PROMPT, "negativeprompt": "", "model": "flux1-dev", "seed": 305223794, "steps": 25,
              "cfgscale": 1.0, "aspectratio": "Custom", "width": 832, "height": 1216, "sampler": "euler",
              "scheduler": "simple", "fluxguidancescale": 3.5, "loras": ["Flux/ink-style", "detail"],
              "loraweights": ["0.8", "1.2"], "swarm_version": "0.9.6.2", "date": "2026-11-30"}
    return {"sui_image_params": {**params, **changes}, "sui_extra_data": {"date": "2026-11-30"}}


def invoke(**changes) -> dict:
    """InvokeAI's core metadata of a FLUX.1 image."""
    metadata = {"generation_mode": "flux_txt2img", "positive_prompt": PROMPT, "negative_prompt": "", "width": 1024,
                "height": 768, "seed": 1234, "steps": 30, "cfg_scale": 1.0, "guidance": 4.0, "scheduler": "euler",
                "model": {"key": "abc", "hash": "blake3:00", "name": "FLUX Dev", "base": "flux", "type": "main"},
                "loras": [{"model": {"key": "k", "hash": "h", "name": "ink-style", "base": "flux", "type": "lora"},
                           "weight": 0.75}],
                "app_version": "5.4.0"}
    return {**metadata, **changes}


def test_a_swarmui_png_restores_its_settings(tmp_path):
    settings = settings_from_png(png(tmp_path, "parameters", swarm()))
    assert settings == {"prompt": PROMPT, "seed": 305223794, "steps": 25, "width": 832, "height": 1216,
                        "sampler": "euler", "schedule": "simple", "guidance": 3.5,
                        "lora_paths": ["ink-style", "detail"], "lora_scales": [0.8, 1.2]}
    other = settings_from_png(png(tmp_path, "parameters", swarm(
        negativeprompt="blurry", cfgscale=4.0, sampler="dpmpp_2m", scheduler="karras", initimagecreativity=0.6,
        seed=2**40, loras=[], width=1000)))
    assert other["negative_prompt"] == "blurry" and other["true_cfg_scale"] == 4.0
    assert (other["sampler"], other["schedule"], other["image_strength"]) == ("dpm++2m", "karras", 0.4)
    assert "seed" not in other and "lora_paths" not in other and other["width"] == 992  # SwarmUI's 64-bit seed


def test_an_invokeai_png_restores_its_settings(tmp_path):
    settings = settings_from_png(png(tmp_path, "invokeai_metadata", invoke()))
    assert settings == {"prompt": PROMPT, "seed": 1234, "steps": 30, "width": 1024, "height": 768,
                        "sampler": "euler", "guidance": 4.0, "lora_paths": ["ink-style"], "lora_scales": [0.75]}
    img2img = settings_from_png(png(tmp_path, "invokeai_metadata", invoke(
        generation_mode="flux_img2img", strength=0.7, scheduler="dpmpp_2m_k", negative_prompt="text", cfg_scale=3)))
    assert img2img["image_strength"] == 0.3 and (img2img["sampler"], img2img["schedule"]) == ("dpm++2m", "karras")
    assert img2img["negative_prompt"] == "text" and img2img["true_cfg_scale"] == 3.0


@pytest.mark.parametrize("key, text, message", [
    ("parameters", '{"sui_image_params": [1]}', "The SwarmUI settings in the image cannot be read: it has no "
                                                "sui_image_params."),
    ("parameters", '{"sui_image_params": ' + "[" * 50_000, "The SwarmUI settings in the image cannot be read: it is "
                                                            "not valid JSON."),
    ("invokeai_metadata", "[1, 2]", "The InvokeAI settings in the image cannot be read: it is not a JSON object."),
])
def test_settings_that_are_no_use_are_refused_in_a_sentence(tmp_path, key, text, message):
    with pytest.raises(PresetError, match=f"^{message}$"):
        settings_from_png(png(tmp_path, key, text))


def test_values_of_the_wrong_kind_are_left_out(tmp_path):
    settings = settings_from_png(png(tmp_path, "invokeai_metadata", invoke(
        seed="1", steps=-3, width=1024, height=None, guidance=float("nan"), scheduler=7, loras=[{"model": 3}, 5])))
    assert settings == {"prompt": PROMPT}
