"""Offline on the shipped demo family (demo_models/), with an empty Hugging Face cache and downloads off: every
tool's default model, one-sentence messages for what is missing, the demo depth estimator, and the one size
(64x64) the demo models can make."""

import shutil

import mlx.core as mx
import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from mflux_core.demo import dataset
from mflux_core.demo.recipe import STAGES
from mflux_core.demo.size_stages import SIZES_STAGES, listed_sizes
from mflux_core.demo.depth_estimator import SIZE, mean_iou
from mflux_core.errors import InvalidRequest, ModelLoadError
from mflux_core.manager import ModelManager
from mflux_core.metadata import request_from_metadata
from mflux_core.models.depth import DepthEstimator, depth_to_image
from mflux_core.native_sizes import native_panel_for, native_size_for, read_native_sizes, size_note
from mflux_core.registry import list_models
from mflux_core.request import GenerationRequest
from mflux_core.tools.ic_edit import DEMO_LORA_FILE as IC_EDIT_DEMO_LORA_FILE
from mflux_core.tools.in_context_lora import DEMO_LORA_FILE
from mflux_core.tools.specs import TOOL_SPECS, default_depth_estimator, default_model_for
from mflux_core.weights.resolve import DEMO_MODELS_ENV, demo_models_dir
from tests.parity import run_cli
from webui.panels.depth import require_estimator
from webui.widgets import default_model

ESTIMATOR_IOU = 0.65  # mean IoU of the near shapes on 50 held-out scenes; measured 0.69 (README, "Demo models")
PARITY_RTOL = 1e-4  # the shipped float32 estimator in transformers vs ours (measured ~1e-6)
FAST = {"steps": 2, "seed": 4, "dtype": "float32"}


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """The shipped demo folders, an empty Hugging Face cache and an empty models folder; downloads off."""
    monkeypatch.delenv(DEMO_MODELS_ENV, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


@pytest.fixture
def manager(offline):
    return ModelManager(models_dir=offline)


def scene_picture(tmp_path, index: int = 0, size: int = SIZE) -> str:
    """A held-out picture of the shapes world (the demo family's), saved as a PNG at `size`."""
    picture = Image.fromarray(dataset.depth_example(100, index, SIZE, held_out=True).image)
    path = tmp_path / f"scene-{index}-{size}.png"
    picture.resize((size, size), Image.Resampling.LANCZOS).save(path)
    return str(path)


def is_one_sentence(text: str) -> bool:
    return text.endswith((".", ")")) and ". " not in text[:-1] and "\n" not in text


# ----- every tool starts on a demo model ----------------------------------------------------------


@pytest.mark.parametrize("tool", sorted(TOOL_SPECS))
def test_every_tool_defaults_to_its_demo_model_in_the_engine_and_the_page(offline, tool):
    demo = TOOL_SPECS[tool].demo_model
    assert demo is not None and demo.startswith("demo")
    assert default_model_for(tool, offline) == demo
    assert default_model(list_models(offline), tool) == demo


def test_a_missing_side_model_is_one_sentence_that_names_the_models_folder(manager, tmp_path):
    with pytest.raises(ModelLoadError) as error:  # FLUX.1-Redux-dev's weights (not demo-redux) are not on disk
        manager.generate(GenerationRequest(tool="redux", prompt="a circle", **FAST, extra={"redux_path": "redux"},
                                           redux_image_paths=(scene_picture(tmp_path),)))
    message = str(error.value)
    assert "FLUX.1-Redux-dev" in message and "models folder" in message and "--path" not in message
    assert is_one_sentence(message), message


# ----- the demo depth estimator ---------------------------------------------------------------------


def test_the_demo_estimator_is_the_default_until_depth_anything_is_on_disk(offline):
    assert default_depth_estimator(offline) == "demo-depth-estimator"
    (offline / "depth-estimator").mkdir()
    assert default_depth_estimator(offline) == "depth-estimator"


def test_the_demo_estimator_finds_the_shapes_of_held_out_scenes():
    estimator = DepthEstimator.from_folder(demo_models_dir() / "demo-depth-estimator")
    score = mean_iou(lambda picture: depth_to_image(estimator.estimate(picture)))
    assert score >= ESTIMATOR_IOU, score


def test_the_demo_estimator_loads_in_transformers_and_matches_ours(tmp_path):
    import torch
    from transformers import DepthAnythingForDepthEstimation, DPTImageProcessorPil

    folder = demo_models_dir() / "demo-depth-estimator"
    reference, info = DepthAnythingForDepthEstimation.from_pretrained(folder, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    picture = Image.open(scene_picture(tmp_path, 3))
    pixels = DPTImageProcessorPil.from_pretrained(folder)(images=picture, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = reference.eval()(pixel_values=pixels).predicted_depth[0].numpy()
    ours = np.array(DepthEstimator.from_folder(folder).model(mx.array(pixels.numpy().transpose(0, 2, 3, 1))))[0]
    assert np.abs(ours - expected).max() <= PARITY_RTOL * np.abs(expected).max()


def test_the_depth_tool_estimates_a_photos_map_offline(manager, tmp_path):
    result = manager.generate(GenerationRequest(tool="depth", prompt="a red square on a blue background",
                                                image_path=scene_picture(tmp_path), **FAST))
    assert result.request.model == "demo-depth" and result.image.size == (SIZE, SIZE) and not result.notes
    require_estimator(manager.models_dir)  # the page lets a photo through: the demo estimator is on disk


def test_without_any_estimator_the_page_says_what_to_do_in_one_sentence(offline, tmp_path, monkeypatch):
    monkeypatch.setenv(DEMO_MODELS_ENV, str(tmp_path / "no-demo-models"))
    with pytest.raises(InvalidRequest) as error:
        require_estimator(offline)
    message = str(error.value)
    assert "upload a depth map" in message and "models folder" in message and "--path" not in message
    assert is_one_sentence(message), message


# ----- the demo upscaler ControlNet ----------------------------------------------------------------


def test_upscale_runs_on_the_demo_upscaler_from_a_small_picture(manager, tmp_path):
    example = dataset.upscale_example(100, 0, SIZE, held_out=True)
    dataset.low_resolution(example.image, 32).save(tmp_path / "small.png")
    result = manager.generate(GenerationRequest(tool="upscale", prompt=example.caption, **FAST,
                                                image_path=str(tmp_path / "small.png")))
    assert result.request.model == "demo" and result.image.size == (SIZE, SIZE)
    assert result.notes == ("Input 32x32 resized to 64x64.",)  # no native-size note, no error
    assert result.request.controlnet_strength == 0.6  # the tool's default: the strength it was trained at
    side_models = [r["name"] for r in manager.status()["resident"] if r["kind"] == "auxiliary"]
    assert len(side_models) == 1 and side_models[0].startswith("demo-upscaler float32 ("), side_models


def test_the_demo_upscaler_loads_in_diffusers_with_every_weight():
    from diffusers import FluxControlNetModel

    _, info = FluxControlNetModel.from_pretrained(demo_models_dir() / "demo-upscaler", output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info


# ----- native sizes --------------------------------------------------------------------------------


def shipped_sizes(member: str) -> tuple[tuple[int, int], ...]:
    return read_native_sizes(demo_models_dir() / member)


def test_the_native_size_nearest_in_shape_is_chosen():
    sides = range(48, 129, 16)
    sizes = tuple((width, height) for height in sides for width in sides)
    assert native_size_for((), 80, 48) is None  # FLUX.1 lists none: any size
    assert native_size_for(((64, 64),), 64, 64) is None
    assert native_size_for(((64, 64),), 1024, 1024) == (64, 64)
    assert native_size_for(((64, 64), (96, 64), (64, 96)), 160, 96) == (96, 64)
    assert native_size_for(sizes, 80, 48) is None and native_size_for(sizes, 256, 144) == (112, 64)
    assert native_size_for(sizes, 1024, 1024) == (128, 128)
    assert size_note("demo", sizes, (256, 144), (112, 64)) == (
        "demo makes 48x48 to 128x128 images only, so this one is 112x64 instead of 256x144; other sizes need a "
        "FLUX.1 model.")


def test_a_diptych_tool_gets_the_panel_of_the_nearest_native_canvas():
    sides = (48, 64, 80, 96)
    sizes = tuple((width, height) for height in sides for width in sides)
    assert native_panel_for(sizes, (48, 48), (96, 48)) is None
    assert native_panel_for(sizes, (512, 384), (1024, 384)) == (48, 48)  # 96x48 is the only canvas of two panels
    assert native_panel_for(((64, 64),), (64, 64), (128, 64)) == (32, 64)
    assert native_panel_for(((48, 48),), (64, 64), (128, 64)) is None  # no canvas of whole-token panels: as asked


def test_an_in_context_tool_on_the_demo_paints_a_native_canvas_with_a_note(manager, tmp_path):
    request = GenerationRequest(tool="in-context", prompt="the same shape on another background", width=96,
                                height=96, image_path=scene_picture(tmp_path, 2), **FAST)
    made = native_panel_for(shipped_sizes("demo-fill"), (96, 96), (192, 96))
    result = manager.generate(request)
    assert result.request.model == "demo-fill" and result.image.size == made == (64, 64)
    assert result.notes == (size_note("demo-fill", shipped_sizes("demo-fill"), (96, 96), made),)

    native = manager.generate(request.with_(width=64, height=64))  # demo-fill lists the 128x64 diptych
    assert native.image.size == (64, 64) and native.notes == ()


BIG = 2000  # a photo's side, far past what the demo models make


@pytest.mark.parametrize("tool, inputs", [
    ("controlnet", {"controlnet_image_path": 0}),
    ("kontext", {"image_path": 0}),
    ("fill", {"image_path": 0, "masked_image_path": 1}),
    ("generate", {"image_path": 0}),
    ("ic-edit", {"image_path": 0}),
    ("fill", {"image_path": 0, "outpaint_padding": "100"}),  # the padded canvas (2208 px) is brought to a native size
])
def test_a_big_photo_on_the_demo_is_read_at_the_size_the_model_makes(manager, tmp_path, tool, inputs):
    """The size is decided before the inputs are prepared: a 2000x2000 photo is not encoded (nor edge-detected, nor
    a Kontext reference of 15,625 tokens) at its own size first, so MLX's measured peak is the plan's for the native
    size (it was 0.4 GB against a plan of 18 MB for a 1024 px control image, and a 4000x3000 one took 335 s)."""
    paths = [scene_picture(tmp_path, index, size=BIG) for index in range(2)]
    request = GenerationRequest(tool=tool, prompt="a red circle", **FAST, **{
        key: paths[value] if isinstance(value, int) else value for key, value in inputs.items()})
    result = manager.generate(request)
    assert max(result.image.size) <= 128 and any("images only, so this one is" in note for note in result.notes)
    memory = manager.status()["last_memory"]
    assert memory["measured_bytes"] <= 1.25 * memory["planned_bytes"], memory


def made_and_replayed(offline, request: GenerationRequest):
    """The result of `request`, checked to keep the tool's own LoRA out of its recorded request (the page's LoRA list
    names only the user's library) and to come back the same when that request is replayed."""
    made = ModelManager(models_dir=offline).generate(request)
    assert made.request.lora_paths == () and made.metadata["request"]["lora_paths"] == []
    replayed = ModelManager(models_dir=offline).generate(request_from_metadata(made.metadata))
    assert np.array_equal(np.asarray(replayed.image), np.asarray(made.image))
    return made


def use_demo_fill_without(file_name: str, tmp_path, monkeypatch) -> None:
    """Point the studio at a copy of the demo family whose demo-fill lacks `file_name`."""
    bare = tmp_path / "demo_models"
    shutil.copytree(demo_models_dir(), bare)
    (bare / "demo-fill" / file_name).unlink()
    monkeypatch.setenv(DEMO_MODELS_ENV, str(bare))


def test_in_context_on_demo_fill_applies_its_own_lora_and_replays_from_the_images_request(offline, tmp_path,
                                                                                         monkeypatch):
    """demo-fill's In-Context LoRA (demo_models/demo-fill/in_context_lora.safetensors) is applied when no style is
    picked, kept out of the recorded request and applied again when that request is replayed; the same call on a copy
    of demo-fill without the file paints something else."""
    assert (demo_models_dir() / "demo-fill" / DEMO_LORA_FILE).is_file()
    request = GenerationRequest(tool="in-context", prompt="[IMAGE1] a red circle in the centre on a blue background; "
                                "[IMAGE2] a red circle in the centre on a white background", width=64, height=64,
                                image_path=scene_picture(tmp_path, 2, 64), **FAST)
    with_lora = made_and_replayed(offline, request)
    use_demo_fill_without(DEMO_LORA_FILE, tmp_path, monkeypatch)
    without = ModelManager(models_dir=offline).generate(request)
    assert np.abs(np.asarray(without.image, dtype=int) - np.asarray(with_lora.image, dtype=int)).max() > 40


def test_ic_edit_on_demo_fill_applies_its_own_lora_at_the_references_size(offline, tmp_path, monkeypatch):
    """demo-fill's IC-Edit LoRA (demo_models/demo-fill/ic_edit_lora.safetensors) stands in for RiverZ's offline: the
    edit is made at the reference's size (the demo LoRA's 64 px panels, not RiverZ's 512, so no size note), kept out
    of the recorded request and applied again when it is replayed; without the file the tool names RiverZ's LoRA as
    missing, in a sentence."""
    assert (demo_models_dir() / "demo-fill" / IC_EDIT_DEMO_LORA_FILE).is_file()
    request = GenerationRequest(tool="ic-edit", prompt="", extra={"instruction": "make the background white"},
                                image_path=scene_picture(tmp_path, 2, 64), **FAST)
    edited = made_and_replayed(offline, request)
    assert edited.request.model == "demo-fill" and edited.image.size == (64, 64) and edited.notes == ()
    use_demo_fill_without(IC_EDIT_DEMO_LORA_FILE, tmp_path, monkeypatch)
    with pytest.raises(ModelLoadError, match="RiverZ/normal-lora") as error:
        ModelManager(models_dir=offline).generate(request)
    assert is_one_sentence(str(error.value)), error.value


def test_every_shipped_member_lists_the_sizes_its_stage_lists():
    tuned = {listed_sizes(stage, STAGES[stage]) for stage in SIZES_STAGES}
    for member in ("demo", "demo-fill", "demo-depth", "demo-kontext"):
        assert shipped_sizes(member) in tuned | {((64, 64),)}, member  # a sizes stage's or the 64 px recipe's


def test_a_size_the_demo_cannot_make_runs_at_its_native_size_with_a_note(manager, tmp_path):
    request = GenerationRequest(tool="generate", prompt="a red circle on a blue background", width=256, height=144,
                                **FAST)
    made = native_size_for(shipped_sizes("demo"), 256, 144)
    result = manager.generate(request)
    assert result.image.size == made and (result.request.width, result.request.height) == made
    (note,) = result.notes
    assert note == size_note("demo", shipped_sizes("demo"), (256, 144), made) and is_one_sentence(note), note
    at_native = manager.generate(request.with_(width=made[0], height=made[1]))
    assert not at_native.notes and np.array_equal(np.asarray(at_native.image), np.asarray(result.image))


def test_an_input_image_of_another_size_is_brought_to_the_native_size(manager, tmp_path):
    mask = np.zeros((192, 192), np.uint8)
    mask[48:144, 48:144] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = manager.generate(GenerationRequest(tool="fill", prompt="a green square", **FAST,
                                                image_path=scene_picture(tmp_path, 1, size=192),
                                                masked_image_path=str(tmp_path / "mask.png")))
    assert result.request.model == "demo-fill"
    assert result.image.size == native_size_for(shipped_sizes("demo-fill"), 192, 192)
    assert "192x192" in result.notes[-1]


def test_the_cli_says_so_on_stderr(offline, tmp_path, capsys):
    image = run_cli("generate", "--prompt", "a blue square", "--width", 256, "--height", 256, "--steps", 2,
                    "--models-dir", offline, "--output", tmp_path / "out.png")
    made = native_size_for(shipped_sizes("demo"), 256, 256)
    assert image.size == made
    assert f"Note: {size_note('demo', shipped_sizes('demo'), (256, 256), made)}" in capsys.readouterr().err
