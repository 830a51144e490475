"""All-in-one FLUX.1 checkpoints (Forge's flux1-dev-bnb-nf4, Comfy-Org's flux1-dev-fp8, any checkpoint ComfyUI
saves: the transformer under `model.diffusion_model.`, the VAE under `vae.`, CLIP-L and T5 under
`text_encoders.clip_l.transformer.` / `text_encoders.t5xxl.transformer.`) run on their own VAE and text encoders:
picked from the models folder, or `--path file` alone. The image equals the same transformer's on the diffusers folder
the bundled parts came from, pixel for pixel; the memory plan counts each part once."""

import mlx.core as mx
import pytest
import torch
from safetensors.torch import load_file, save_file

from mflux_core import cli
from mflux_core.manager import ModelManager
from mflux_core.registry import list_models
from mflux_core.request import GenerationRequest
from mflux_core.weights.bfl import COMFY_PREFIX
from tests.fixtures.comfy_split_files import bfl_vae_state
from tests.fixtures.tiny_flux import build_tiny_flux
from tests.parity import max_uint8_diff, run_cli
from tests.test_bnb_files import is_linear_weight, nf4_state
from tests.test_comfyui_split_files import with_tokenizers
from tests.test_mflux_saved_folders import HEIGHT, SPEC, WIDTH
from tests.test_transformer import diffusers_to_bfl

CHECKPOINT = "flux1-tiny-bnb-nf4-v2.safetensors"
ARGS = ["--prompt", "a red house", "--seed", 3, "--steps", 2, "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("all-in-one-base"), SPEC)


def all_in_one_state(folder, nf4: bool = True) -> dict[str, torch.Tensor]:
    """The tiny FLUX.1 as Forge writes an NF4 checkpoint (the transformer's linear weights in NF4, the rest as is), or
    as ComfyUI saves a checkpoint (all as is)."""
    from diffusers import FluxTransformer2DModel

    state = {}
    transformer = FluxTransformer2DModel.from_pretrained(folder / "transformer").state_dict()
    for name, value in diffusers_to_bfl(transformer).items():
        state.update(nf4_state(COMFY_PREFIX + name, value) if nf4 and is_linear_weight(name, value)
                     else {COMFY_PREFIX + name: value.contiguous()})
    state.update({f"vae.{name}": value for name, value in bfl_vae_state(folder / "vae").items()})
    clip = load_file(folder / "text_encoder" / "model.safetensors")
    state.update({f"text_encoders.clip_l.transformer.{name}": value for name, value in clip.items()})
    for path in sorted((folder / "text_encoder_2").glob("*.safetensors")):
        state.update({f"text_encoders.t5xxl.transformer.{name}": value for name, value in load_file(path).items()})
    return state


@pytest.fixture
def models(tiny, tmp_path, monkeypatch):
    """A models folder holding the checkpoint and FLUX.1's tokenizers, nothing else (this machine's downloads aside)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    models = with_tokenizers(tmp_path / "models", tiny)
    save_file(all_in_one_state(tiny), models / CHECKPOINT)
    return models


def test_the_checkpoint_runs_on_its_own_parts_as_on_the_folder_they_came_from(tiny, models, tmp_path):
    request = GenerationRequest(model=CHECKPOINT, prompt="a red house", seed=3, steps=2, width=WIDTH, height=HEIGHT,
                                guidance=3.5)
    picked = ModelManager(models_dir=models).generate(request).image.convert("RGB")
    alone = run_cli("generate", "--path", models / CHECKPOINT, *ARGS, "--output", tmp_path / "alone.png")
    folder = run_cli("generate", "--path", models / CHECKPOINT, "--base-model", tiny, *ARGS,
                     "--output", tmp_path / "folder.png")
    assert max_uint8_diff(picked, folder) == 0
    assert max_uint8_diff(alone, folder) == 0
    kinds = {entry.name: entry.kind for entry in list_models(models)}
    assert kinds[CHECKPOINT] == "single-file"


def test_the_memory_plan_counts_each_part_once(models):
    from mflux_core import loader
    from mflux_core.resident import model_weight_bytes
    from mflux_core.weights.quantize import parameter_bytes, text_encoder_bytes
    from mflux_core.weights.resolve import resolve_model

    source = resolve_model(path=str(models / CHECKPOINT), models_dir=models)
    loaded = (parameter_bytes(loader.load_source_transformer(source, mx.float32))
              + parameter_bytes(loader.load_source_vae(source, mx.float32))
              + text_encoder_bytes(loader.load_source_text_encoders(source, mx.float32)))
    assert model_weight_bytes(source, mx.float32, None) == loaded


def test_saving_it_writes_a_diffusers_folder_with_its_vae(tiny, models, tmp_path):
    from diffusers import AutoencoderKL

    assert cli.main(["save", "--model-path", str(models / CHECKPOINT), "--path", str(tmp_path / "saved")]) == 0
    saved_vae = AutoencoderKL.from_pretrained(tmp_path / "saved" / "vae").state_dict()
    original_vae = AutoencoderKL.from_pretrained(tiny / "vae").state_dict()
    assert all(torch.equal(saved_vae[name], original_vae[name]) for name in original_vae)
    saved = run_cli("generate", "--path", tmp_path / "saved", *ARGS, "--output", tmp_path / "saved.png")
    original = run_cli("generate", "--path", models / CHECKPOINT, *ARGS, "--output", tmp_path / "original.png")
    assert max_uint8_diff(saved, original) == 0


def test_a_truncated_checkpoint_says_so_rather_than_asking_for_a_base(models):
    """Half a download: its header lists more than the file holds, and it could not even tell what it bundles."""
    from mflux_core.errors import ModelLoadError

    path = models / CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    request = GenerationRequest(model=CHECKPOINT, prompt="x", seed=1, steps=1, width=WIDTH, height=HEIGHT)
    with pytest.raises(ModelLoadError, match=f"The weights file {path} is incomplete: .* fewer than its header lists"):
        ModelManager(models_dir=models).generate(request)


def test_a_merge_takes_a_comfyui_checkpoint_as_model_a_and_refuses_an_nf4_one(tiny, models, tmp_path, capsys):
    """A ComfyUI checkpoint brings its own VAE and text encoders as model A; NF4 layers are refused in a sentence
    before minutes of decoding."""
    save_file(all_in_one_state(tiny, nf4=False), models / "flux1-tiny-comfy.safetensors")
    merge = ["merge", "--dtype", "float32", "--model-b", str(tiny), "--path"]
    assert cli.main([*merge, str(tmp_path / "merged"), "--model-a", str(models / "flux1-tiny-comfy.safetensors")]) == 0
    assert {path.name for path in (tmp_path / "merged").iterdir()} >= {"transformer", "vae", "text_encoder_2"}
    assert cli.main([*merge, str(tmp_path / "never"), "--model-a", str(models / CHECKPOINT)]) == 1
    assert f"{models / CHECKPOINT} holds bitsandbytes (NF4 or int8) layers: a merge or a LoRA extraction needs " \
           "float weights" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("unlike, sentence", [
    ({"vae_blocks": (16, 48), "vae_norm_groups": 16},
     "This file's VAE is not shaped as FLUX.1's: its blocks of 16, 48 channels do not split into the 32 norm groups"),
    ({"pooled_dim": 32, "clip_heads": 4},
     "This file's CLIP text encoder is not shaped as FLUX.1's: its width 32 does not split into CLIP-L's 64-wide"),
])
def test_a_checkpoint_whose_parts_are_not_shaped_as_flux1s_is_refused_in_a_sentence(unlike, sentence, tmp_path,
                                                                                     monkeypatch, capsys):
    """Without a config.json, FLUX.1's VAE norm groups and CLIP-L's head width are assumed: parts they cannot fit
    (norm groups or heads a file does not record) are refused before anything runs, rather than fail inside."""
    from huggingface_hub import constants

    from tests.fixtures.tiny_flux import TinyFluxSpec

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    tiny = build_tiny_flux(tmp_path / "unlike", TinyFluxSpec(**{**SPEC.__dict__, **unlike}))
    models = with_tokenizers(tmp_path / "models", tiny)
    save_file(all_in_one_state(tiny, nf4=False), models / "flux1-unlike.safetensors")
    assert cli.main(["generate", "--path", str(models / "flux1-unlike.safetensors"), *map(str, ARGS),
                     "--output", str(tmp_path / "never.png")]) == 1
    assert sentence in capsys.readouterr().err
    assert not (tmp_path / "never.png").exists()
