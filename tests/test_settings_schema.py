"""One schema for every door: a request (CLI, page, Python API), a preset and the LoRA training config accept and
refuse a shared setting alike, and the page's controls span the same range."""

import math
from pathlib import Path

import pytest

from mflux_core.errors import InvalidRequest
from mflux_core.presets import PresetError, settings_from_request, validate_settings
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import MAX_BATCH, MAX_LORA_SCALE
from mflux_core.training.lora_config import TrainingConfig

TRAINING = {"model": "dev", "training_loop": {"steps": 1}, "examples": {"images": [{"image": "a.png", "prompt": "x"}]},
            "lora_layers": {"transformer_blocks": {"blocks": [0], "layer_types": ["attn.to_q"]}}}


def request_refusal(**fields) -> str | None:
    try:
        GenerationRequest(**fields).validated()
    except InvalidRequest as error:
        return str(error)
    return None


def preset_refusal(**settings) -> str | None:
    try:
        validate_settings(settings)
    except PresetError as error:
        return str(error)
    return None


def training_refusal(**changes) -> str | None:
    try:
        TrainingConfig.from_dict({**TRAINING, **changes}, Path("."))
    except InvalidRequest as error:
        return str(error)
    return None


@pytest.mark.parametrize("scale", [-MAX_LORA_SCALE, -1.5, 0, 1, MAX_LORA_SCALE])
def test_a_lora_scale_in_range_is_accepted_by_request_and_preset(scale):
    assert request_refusal(lora_paths=("style",), lora_scales=(scale,)) is None
    assert preset_refusal(lora_paths=["style"], lora_scales=[scale]) is None


@pytest.mark.parametrize("scale", [-4.01, 4.5, 100])
def test_a_lora_scale_out_of_range_is_refused_by_request_and_preset(scale):
    assert request_refusal(lora_paths=("style",), lora_scales=(scale,)) == (
        f"LoRA scale {scale} is out of range: use -4 to 4.")
    assert f"'lora_scales' has an item that must be a number from -4 to 4: {scale}" in preset_refusal(
        lora_paths=["style"], lora_scales=[scale])


# (setting, how a request names it, a bad value, the rest of the sentence refusing it, the preset's phrase)
SHARED_REFUSALS = [
    ("seed", "Seed", -1, " must be a whole number from 0 to 4294967295, not -1.", "must be a whole number from 0 to"),
    ("width", "Width", 50, " 50 is not a multiple of 16; try 48.", "must be a multiple of 16 from 16 to 4096"),
    ("width", "Width", 99999, " 99999 is out of range: use 16 to 4096 pixels.",  # the range first, not "try 100000"
     "must be a multiple of 16 from 16 to 4096"),
    ("height", "Height", 8192, " 8192 is out of range: use 16 to 4096 pixels.", "must be a multiple of 16"),
    ("guidance", "Guidance", math.nan, " must be a finite number, not nan.", "must be a number from 0 to 100"),
    ("guidance", "Guidance", 101, " 101 is out of range: use 0 to 100.", "must be a number from 0 to 100"),
    ("max_sequence_length", "The T5 sequence length", 513, " must be from 1 to 512 tokens.",
     "must be a whole number from 1 to 512"),
    ("quantize", "Quantize", 7, " must be one of 3, 4, 5, 6, 8, not 7.", "must be one of 3, 4, 5, 6, 8"),
    ("quantize", "Quantize", 8.0, " must be one of 3, 4, 5, 6, 8, not 8.0.", "must be one of 3, 4, 5, 6, 8"),
]


@pytest.mark.parametrize("name, label, value, rest, phrase", SHARED_REFUSALS,
                         ids=[f"{case[0]}={case[2]}" for case in SHARED_REFUSALS])
def test_a_shared_setting_is_refused_alike_by_request_preset_and_training_config(name, label, value, rest, phrase):
    assert request_refusal(**{name: value}) == label + rest
    assert f"'{name}' {phrase}" in preset_refusal(**{name: value})
    assert training_refusal(**{name: value}) == f"The training config's {name}{rest}"


def test_the_training_configs_validation_steps_are_a_requests_steps():
    assert request_refusal(steps=501) == "Steps must be a whole number from 1 to 500, not 501."
    assert training_refusal(instrumentation={"validation_steps": 501}) == (
        "The training config's instrumentation.validation_steps must be a whole number from 1 to 500, not 501.")


@pytest.mark.parametrize("base_model", ["schnell", "dev", "krea-dev", "someone/flux-base"])
def test_request_and_preset_accept_the_same_base_model_names(base_model):
    assert request_refusal(base_model=base_model) is None
    assert preset_refusal(base_model=base_model) is None


def test_a_base_model_folder_works_on_the_cli_and_is_saved_in_a_preset_by_its_name():
    request = GenerationRequest(model="/models/finetune.safetensors", base_model="/models/my-dev").validated()
    settings = validate_settings(settings_from_request(request))
    assert (settings["model"], settings["base_model"]) == ("finetune.safetensors", "my-dev")
    assert "'base_model' must be a model name" in preset_refusal(base_model="/models/my-dev")


def test_a_batch_is_refused_by_presets_past_the_pages_limit():
    from webui.widgets import shared_settings

    assert preset_refusal(batch_count=MAX_BATCH) is None
    assert "'batch_count' must be a whole number from 1 to 16" in preset_refusal(batch_count=MAX_BATCH + 1)
    assert shared_settings({"batch_count": MAX_BATCH + 5})["batch_count"] == MAX_BATCH


def test_the_pages_lora_scale_slider_spans_the_schemas_range(tmp_path):
    import gradio as gr

    from mflux_core.manager import ModelManager
    from webui.app import build_app
    from webui.studio import StudioFolders

    app = build_app(ModelManager(models_dir=tmp_path), StudioFolders.default(tmp_path / "out", loras=[]))
    sliders = [block for block in app.blocks.values()
               if isinstance(block, gr.Slider) and "lora-scale" in (block.elem_id or "")]
    assert sliders and {(s.minimum, s.maximum) for s in sliders} == {(-MAX_LORA_SCALE, MAX_LORA_SCALE)}
