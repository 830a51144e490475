"""Forge's "VAE / Text Encoder" choice (`modules`): files of the models folder used instead of a model's own VAE and
text encoders. Each chosen file makes the image that the same file makes when it is the model's own (the only one
of its kind in the folder, or the diffusers folder's component); a wrong choice is one sentence before any load."""

import shutil

import pytest
from PIL import Image
import torch
from safetensors.torch import load_file, save_file

from mflux_core import cli
from mflux_core.errors import InvalidRequest
from mflux_core.manager import ModelManager
from mflux_core.metadata import a1111_parameters
from mflux_core.presets import PresetError, settings_from_a1111, settings_from_request, validate_settings
from mflux_core.request import GenerationRequest
from mflux_core.weights.module_files import listed_name, module_files
from tests.fixtures.comfy_split_files import bfl_vae_state
from tests.parity import max_uint8_diff, run_cli
from tests.test_comfyui_split_files import GGUF, comfy_models, tiny, with_tokenizers  # noqa: F401 (fixtures)
from tests.test_mflux_saved_folders import HEIGHT, WIDTH

OTHER_T5 = "clip/t5xxl_other_fp16.safetensors"
OTHER_VAE = "vae/ae_other.safetensors"


def perturbed(state: dict[str, torch.Tensor], seed: int, dtype=None) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: (value + value.std(correction=0).nan_to_num() * torch.randn(value.shape, generator=generator)
                   ).to(dtype or value.dtype).contiguous() for name, value in state.items()}


@pytest.fixture
def models(tiny, comfy_models):  # noqa: F811
    """The ComfyUI-like folder plus a second T5 (other weights, float16: smaller, so not the automatic pick) and a
    second VAE (other weights, the same size; listed after ae.safetensors, which stays the automatic pick)."""
    models = with_tokenizers(comfy_models, tiny)
    save_file(perturbed(load_file(models / "clip" / "t5xxl.safetensors"), 1, torch.float16), models / OTHER_T5)
    other_vae = perturbed(load_file(tiny / "vae" / "diffusion_pytorch_model.safetensors"), 2)
    (models / "other-vae").mkdir()
    save_file(other_vae, models / "other-vae" / "diffusion_pytorch_model.safetensors")
    shutil.copy(tiny / "vae" / "config.json", models / "other-vae" / "config.json")
    save_file(bfl_vae_state(models / "other-vae"), models / OTHER_VAE)
    return models


def request(**changes) -> GenerationRequest:
    return GenerationRequest(**{"prompt": "a red house", "seed": 3, "steps": 2, "width": WIDTH, "height": HEIGHT,
                                "guidance": 3.5, **changes})


def image(models, **changes):
    return ModelManager(models_dir=models).generate(request(**changes)).image.convert("RGB")


def test_the_models_folders_vae_and_text_encoder_files_are_listed_by_their_place(models):
    assert sorted(module_files(models)) == ["clip/clip_l.safetensors", "clip/t5xxl.safetensors", OTHER_T5,
                                            "vae/ae.safetensors", OTHER_VAE]


def test_a_chosen_t5_file_is_used_instead_of_the_largest(models, tmp_path):
    """By its place, its file name, or its name without the extension (as Forge's infotext has it); on the CLI by
    path too. The transformer stays resident when only the text encoders change."""
    manager = ModelManager(models_dir=models)
    automatic = manager.generate(request(model=GGUF)).image.convert("RGB")
    chosen = [manager.generate(request(model=GGUF, modules=(name,))).image.convert("RGB")
              for name in (OTHER_T5, "t5xxl_other_fp16.safetensors", "t5xxl_other_fp16")]
    assert [entry["name"] for entry in manager.status()["resident"] if "transformer" in entry["name"]] == \
        [f"transformer {models / GGUF}"], manager.status()["resident"]
    (models / "clip" / "t5xxl.safetensors").rename(tmp_path / "t5xxl.safetensors")  # the other one, alone
    alone = image(models, model=GGUF)
    by_path = run_cli("generate", "--path", models / GGUF, "--base-model", models, "--modules", models / OTHER_T5,
                      "--prompt", "a red house", "--seed", 3, "--steps", 2, "--height", HEIGHT, "--width", WIDTH,
                      "--guidance", 3.5, "--models-dir", models, "--output", tmp_path / "cli.png")
    assert all(max_uint8_diff(each, alone) == 0 for each in [*chosen, by_path])
    assert max_uint8_diff(automatic, alone) > 0  # the choice mattered


def test_a_vae_file_replaces_a_diffusers_folders_own(tiny, models, tmp_path):  # noqa: F811
    folder = tmp_path / "tiny-other-vae"
    shutil.copytree(tiny, folder)
    shutil.rmtree(folder / "vae")
    shutil.copytree(models / "other-vae", folder / "vae")
    chosen = image(models, model=str(tiny), modules=(OTHER_VAE,))
    assert max_uint8_diff(chosen, image(models, model=str(folder))) == 0
    assert max_uint8_diff(chosen, image(models, model=str(tiny))) > 0


@pytest.mark.parametrize("modules, words", [
    ((OTHER_T5, "clip/t5xxl.safetensors"), f"{OTHER_T5} and clip/t5xxl.safetensors are both a T5 text encoder: "
                                           "pick one of each kind."),
    (("t5xxl_fp8_e4m3fn",), "The VAE / text encoder file t5xxl_fp8_e4m3fn is not in the models folder"),
])
def test_a_wrong_choice_is_one_sentence(models, modules, words):
    with pytest.raises(InvalidRequest, match="^" + words.replace("(", r"\(").replace(".", r"\.")):
        ModelManager(models_dir=models).generate(request(model=GGUF, modules=modules))


def test_a_file_of_another_width_is_refused_before_loading_on_the_cli_and_the_page(models, capsys):
    """The tiny VAE's 4 latent channels on the demo model, whose transformer reads 16."""
    words = ("ae.safetensors does not fit this model: the VAE gives 4 latent channels where the model's own gives "
             "16; pick a file made for it.")
    manager = ModelManager(models_dir=models)
    with pytest.raises(InvalidRequest, match=words.replace(".", r"\.")):
        manager.generate(request(model="demo", modules=("vae/ae.safetensors",), width=64, height=64))
    assert manager.status()["resident"] == []
    assert cli.main(["generate", "--model", "demo", "--modules", "ae", "--prompt", "x", "--steps", "1",
                     "--models-dir", str(models), "--output", str(models / "no.png")]) == 1
    assert capsys.readouterr().err.strip().endswith(words)


def test_a_preset_names_the_files_never_a_path(models):
    settings = settings_from_request(request(model=GGUF, modules=(OTHER_T5, str(models / OTHER_VAE))))
    assert settings["modules"] == [OTHER_T5, "ae_other.safetensors"]
    with pytest.raises(PresetError, match="modules"):
        validate_settings({"modules": ["/etc/passwd"]})


def test_forges_infotext_names_them_by_stem_and_the_models_folder_finds_them(models):
    text = a1111_parameters(request(model=GGUF, modules=(OTHER_VAE, OTHER_T5)))
    assert "Module 1: ae_other, Module 2: t5xxl_other_fp16" in text
    settings = settings_from_a1111(text)
    assert settings["modules"] == ["ae_other", "t5xxl_other_fp16"]
    assert [listed_name(name, models) for name in settings["modules"]] == [OTHER_VAE, OTHER_T5]
    assert listed_name("t5xxl_fp16", models) is None and listed_name("/elsewhere/ae_other.safetensors", models) == \
        OTHER_VAE  # a Forge path: the file of that name here


def test_a_gguf_t5_replaces_an_all_in_one_checkpoints_own(tiny, models, tmp_path):  # noqa: F811
    """city96's GGUF T5 (listed beside the safetensors files) in place of the T5 an all-in-one checkpoint bundles:
    the image the checkpoint makes with the diffusers folder as its base and the same GGUF T5 as that base's."""
    from gguf import GGMLQuantizationType

    from tests.fixtures.comfy_split_files import write_gguf_t5
    from tests.test_all_in_one_checkpoints import all_in_one_state

    checkpoint = models / "tiny-all-in-one.safetensors"
    save_file(all_in_one_state(tiny, nf4=False), checkpoint)
    (models / "text_encoders").mkdir()
    write_gguf_t5(tiny, models / "text_encoders" / "t5-v1_1-xxl-encoder-Q8_0.gguf", {"": GGMLQuantizationType.Q8_0})
    gguf_t5 = "text_encoders/t5-v1_1-xxl-encoder-Q8_0.gguf"
    assert gguf_t5 in module_files(models)
    chosen = image(models, model=checkpoint.name, modules=(gguf_t5,))
    based = image(models, model=checkpoint.name, base_model=str(tiny), modules=("t5-v1_1-xxl-encoder-Q8_0",))
    assert max_uint8_diff(chosen, based) == 0
    assert max_uint8_diff(chosen, image(models, model=checkpoint.name)) > 0


def test_a_plot_compares_t5_files_cell_by_cell_on_the_cli(models, tmp_path):
    """The X/Y/Z plot's VAE / Text Encoder axis: each cell is the image of a plain run with its files."""
    assert cli.main(["generate", "--path", str(models / GGUF), "--base-model", str(models), "--models-dir",
                     str(models), "--prompt", "a red house", "--seed", "3", "--steps", "2", "--height", str(HEIGHT),
                     "--width", str(WIDTH), "--guidance", "3.5", "--x-axis", "modules=none, t5xxl_other_fp16",
                     "--output", str(tmp_path / "plot.png")]) == 0
    cells = [Image.open(tmp_path / f"plot_x{i}_y0_z0.png").convert("RGB") for i in (0, 1)]
    assert max_uint8_diff(cells[0], image(models, model=GGUF)) == 0
    assert max_uint8_diff(cells[1], image(models, model=GGUF, modules=(OTHER_T5,))) == 0
