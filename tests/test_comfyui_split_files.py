"""ComfyUI's and Forge's separate FLUX.1 files (ae.safetensors, clip_l.safetensors, t5xxl_*.safetensors) are a single
transformer file's base: picked from the models folder by the page and the APIs, named as `--base-model FOLDER` on
the CLI. The VAE's BFL names are converted as diffusers' own single-file loader converts them; the image equals the
one made with the diffusers folder the files came from; FLUX.1's tokenizers, in none of the files, come from a FLUX.1
folder on disk or are fetched alone (a fake hub here)."""

import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch

from mflux_core import cli
from mflux_core.errors import WordedTwice
from mflux_core.manager import ModelManager
from mflux_core.registry import list_models
from mflux_core.request import GenerationRequest
from mflux_core.weights import split_base
from mflux_core.weights.split_files import file_weights
from tests.fixtures.comfy_split_files import bfl_vae_state, write_split_files
from tests.fixtures.fake_hub import hub  # noqa: F401 (a fixture)
from tests.fixtures.tiny_flux import build_tiny_flux
from tests.parity import max_uint8_diff, run_cli
from tests.test_mflux_saved_folders import HEIGHT, SPEC, WIDTH
from tests.test_quantized_single_files import Q8_0, write_gguf
from tests.test_transformer import diffusers_to_bfl

GGUF = "flux1-tiny-Q8_0.gguf"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("comfy-base"), SPEC)


@pytest.fixture
def comfy_models(tiny, tmp_path, monkeypatch):
    """A ComfyUI-like models folder: the transformer as GGUF, vae/ae, clip/clip_l and clip/t5xxl, no FLUX.1 folder
    (this machine's downloads aside)."""
    from diffusers import FluxTransformer2DModel
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    models = tmp_path / "models"
    write_split_files(tiny, models)
    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    write_gguf(models / GGUF, diffusers_to_bfl(state), {"": Q8_0})
    return models


def with_tokenizers(models, tiny):
    for name in ("tokenizer", "tokenizer_2"):
        shutil.copytree(tiny / name, models / "flux1-tokenizers" / name)
    return models


def test_the_vae_file_converts_as_diffusers_single_file_loader_converts_it(tiny, tmp_path):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
    from safetensors.torch import load_file, save_file

    original = load_file(tiny / "vae" / "diffusion_pytorch_model.safetensors")
    bfl = bfl_vae_state(tiny / "vae")
    reference = convert_ldm_vae_checkpoint(bfl, AutoencoderKL.load_config(tiny / "vae"))
    assert set(reference) == set(original)
    assert all(torch.equal(reference[name].reshape(original[name].shape), original[name]) for name in original)
    save_file({f"vae.{name}": value for name, value in bfl.items()}, tmp_path / "all-in-one-vae.safetensors")
    ours = file_weights(tmp_path / "all-in-one-vae.safetensors")  # an all-in-one checkpoint's VAE part
    assert set(ours) == set(original)
    assert all(np.array_equal(np.array(ours[name]).reshape(original[name].shape), original[name].numpy())
               for name in original)


def test_a_gguf_file_in_a_comfyui_models_folder_makes_the_image_of_its_diffusers_folder(tiny, comfy_models, tmp_path):
    """The page's and the APIs' way (the file named alone) and the CLI's (`--base-model` the folder) equal the image
    the same transformer file makes on the diffusers folder the VAE and text encoders came from."""
    models = with_tokenizers(comfy_models, tiny)
    request = GenerationRequest(model=GGUF, prompt="a red house", seed=3, steps=2, width=WIDTH, height=HEIGHT,
                                guidance=3.5)
    picked = ModelManager(models_dir=models).generate(request).image.convert("RGB")
    args = ["--prompt", "a red house", "--seed", 3, "--steps", 2, "--height", HEIGHT, "--width", WIDTH,
            "--guidance", 3.5]
    named = run_cli("generate", "--path", models / GGUF, "--base-model", models, *args,
                    "--output", tmp_path / "named.png")
    folder = run_cli("generate", "--path", models / GGUF, "--base-model", tiny, *args, "--output", tmp_path / "f.png")
    assert max_uint8_diff(picked, folder) == 0
    assert max_uint8_diff(named, folder) == 0
    kinds = {entry.name: entry.kind for entry in list_models(models)}
    assert kinds[GGUF] == "single-file" and "ae.safetensors" not in kinds  # the VAE is no transformer to offer


def test_the_vae_and_text_encoders_are_listed_by_kind_at_the_models_folders_top(tiny, comfy_models):
    """Not offered as transformers: a GGUF T5 included, which only its tensor names tell from a GGUF transformer."""
    from gguf import GGMLQuantizationType

    from tests.fixtures.comfy_split_files import write_gguf_t5

    for path in (comfy_models / "vae").iterdir():
        shutil.move(path, comfy_models / path.name)
    shutil.move(comfy_models / "clip" / "clip_l.safetensors", comfy_models / "clip_l.safetensors")
    write_gguf_t5(tiny, comfy_models / "t5-v1_1-xxl-encoder-Q8_0.gguf", {"": GGMLQuantizationType.Q8_0})
    kinds = {entry.name: entry.kind for entry in list_models(comfy_models)}
    assert (kinds["ae.safetensors"], kinds["clip_l.safetensors"], kinds["t5-v1_1-xxl-encoder-Q8_0.gguf"],
            kinds[GGUF]) == ("vae", "text-encoder", "text-encoder", "single-file")


def test_forges_folders_hold_them_too(comfy_models):
    """Forge keeps the VAE in models/VAE/ and the text encoders in models/text_encoder/."""
    (comfy_models / "vae").rename(comfy_models / "VAE")
    (comfy_models / "clip").rename(comfy_models / "text_encoder")
    found = split_base.split_files_in(comfy_models)
    assert {kind: path.relative_to(comfy_models).as_posix() for kind, path in found.items()} == {
        "vae": "VAE/ae.safetensors", "text_encoder": "text_encoder/clip_l.safetensors",
        "text_encoder_2": "text_encoder/t5xxl.safetensors"}


def test_the_tokenizers_are_fetched_alone_when_no_flux1_folder_has_them(tiny, comfy_models, hub, source,  # noqa: F811
                                                                        monkeypatch):
    monkeypatch.setattr(split_base, "TOKENIZER_REPO", "acme/tiny-flux")
    request = GenerationRequest(model=GGUF, prompt="a red house", seed=3, steps=2, width=WIDTH, height=HEIGHT,
                                guidance=3.5)
    ModelManager(models_dir=comfy_models).generate(request)
    fetched = sorted(str(path.relative_to(comfy_models / "flux1-tokenizers"))
                     for path in (comfy_models / "flux1-tokenizers").rglob("*") if path.is_file())
    assert fetched and all(name.startswith(("tokenizer/", "tokenizer_2/")) for name in fetched)
    assert not any("transformer" in path for _, path, _ in hub.seen if "/resolve/" in path)


@pytest.fixture
def source(tiny):
    """What the fake hub serves: the tiny FLUX.1 folder (its tokenizers, and a transformer not to fetch)."""
    return tiny


def test_without_tokenizers_offline_or_a_missing_file_the_page_gets_a_sentence(comfy_models, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    request = GenerationRequest(model=GGUF, prompt="x", seed=1, steps=1, width=WIDTH, height=HEIGHT)
    with pytest.raises(WordedTwice, match="^FLUX.1's tokenizers are not on disk .* download any FLUX.1 model from "
                                          "the Models tab while online, or put a FLUX.1 folder into the models"):
        ModelManager(models_dir=comfy_models).generate(request)
    (comfy_models / "clip" / "t5xxl.safetensors").unlink()
    with pytest.raises(WordedTwice, match=r"into the models folder \(it holds ae.safetensors, clip_l.safetensors but no "
                                          r"T5-XXL text encoder \(t5xxl_\*.safetensors\)\).$"):
        ModelManager(models_dir=comfy_models).generate(request)
    code = cli.main(["generate", "--path", str(comfy_models / GGUF), "--base-model", str(comfy_models), "--prompt",
                     "x", "--steps", "1", "--height", str(HEIGHT), "--width", str(WIDTH)])
    assert code == 1
    assert "missing: T5-XXL text encoder (t5xxl_*.safetensors)." in capsys.readouterr().err


def test_saving_a_single_file_with_comfyui_files_writes_a_diffusers_folder(tiny, comfy_models, tmp_path):
    """`save` writes the VAE and text encoders as diffusers folders (config.json, published names): diffusers loads
    the VAE back equal to the one the file came from, and the saved folder makes the file's image."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from safetensors.torch import save_file

    models = with_tokenizers(comfy_models, tiny)
    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    save_file({name: value.contiguous() for name, value in diffusers_to_bfl(state).items()},
              tmp_path / "flux1.safetensors")
    assert cli.main(["save", "--model-path", str(tmp_path / "flux1.safetensors"), "--base-model", str(models),
                     "--path", str(tmp_path / "saved")]) == 0
    saved_vae = AutoencoderKL.from_pretrained(tmp_path / "saved" / "vae").state_dict()
    original_vae = AutoencoderKL.from_pretrained(tiny / "vae").state_dict()
    assert all(torch.equal(saved_vae[name], original_vae[name]) for name in original_vae)
    args = ["--prompt", "a red house", "--seed", 3, "--steps", 2, "--height", HEIGHT, "--width", WIDTH]
    saved = run_cli("generate", "--path", tmp_path / "saved", *args, "--output", tmp_path / "saved.png")
    folder = run_cli("generate", "--path", tmp_path / "flux1.safetensors", "--base-model", tiny, *args,
                     "--output", tmp_path / "folder.png")
    assert max_uint8_diff(saved, folder) == 0


@pytest.mark.parametrize("kinds", [{"": "Q8_0"}, {"token_embd": "Q8_0", "enc.blk.0.ffn": "Q5_0", "": "Q4_1"}])
def test_a_gguf_t5_encoder_makes_diffusers_image_from_its_dequantized_weights(tiny, comfy_models, tmp_path, kinds):
    """city96's T5 GGUF in place of t5xxl_fp16 (llama.cpp's names; its layers stay quantized, read by MLX's own
    reader when all are Q8_0, by the studio's decoder for the others): the image equals diffusers' with the T5
    weights the gguf package dequantizes from the file (uint8 max |diff| <= 2)."""
    from gguf import GGMLQuantizationType

    import mlx.nn as nn

    from mflux_core.models.t5 import load_t5_encoder
    from tests.fixtures.comfy_split_files import write_gguf_t5
    from tests.fixtures.tiny_flux import load_diffusers_pipeline
    from tests.parity import UINT8_TOLERANCE, make_noise, pack

    models = with_tokenizers(comfy_models, tiny)
    (models / "clip" / "t5xxl.safetensors").unlink()
    read_back = write_gguf_t5(tiny, models / "text_encoders" / "t5-v1_1-xxl-encoder-Q8_0.gguf",
                              {prefix: GGMLQuantizationType[kind] for prefix, kind in kinds.items()})
    path = models / "text_encoders" / "t5-v1_1-xxl-encoder-Q8_0.gguf"
    layers = {name: module.bits for name, module in load_t5_encoder(path).named_modules()
              if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding))}
    bits = {"Q8_0": 8, "Q5_0": 5, "Q4_1": 4}
    assert layers["shared"] == bits[kinds.get("token_embd", kinds[""])]
    assert layers["encoder.block.0.layer.1.DenseReluDense.wo"] == bits[kinds.get("enc.blk.0.ffn", kinds[""])]
    assert layers["encoder.block.0.layer.0.SelfAttention.q"] == bits[kinds[""]]
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 2, WIDTH // 2), seed=4)
    ours = run_cli("generate", "--path", models / GGUF, "--base-model", models, "--prompt", "a red house", "--steps", 2,
                   "--height", HEIGHT, "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)

    def image():
        return pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=2, guidance_scale=3.5,
                    latents=pack(np.load(noise)), output_type="pil").images[0]

    from tests.test_quantized_single_files import dequantized_diffusers_state

    pipe.transformer.load_state_dict(dequantized_diffusers_state(pipe.transformer.state_dict(), {"": Q8_0}))
    float_t5 = image()
    pipe.text_encoder_2.load_state_dict(read_back)
    expected = image()
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, float_t5) > 0


def test_a_comfyui_all_in_one_checkpoint_stays_a_transformer(tiny, comfy_models, tmp_path):
    """Comfy-Org's flux1-dev-fp8.safetensors kind of file bundles the VAE and both text encoders beside the
    transformer (model.diffusion_model., vae., text_encoders.clip_l/t5xxl.transformer.): it is listed and run as a
    transformer (its own parts are not used), not taken for a VAE."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file, save_file

    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    bundle = {f"model.diffusion_model.{name}": value.contiguous() for name, value in diffusers_to_bfl(state).items()}
    bundle.update({f"vae.{name}": value for name, value in load_file(comfy_models / "vae" / "ae.safetensors").items()})
    for part, file in (("clip_l", "clip_l.safetensors"), ("t5xxl", "t5xxl.safetensors")):
        bundle.update({f"text_encoders.{part}.transformer.{name}": value
                       for name, value in load_file(comfy_models / "clip" / file).items()})
    save_file(bundle, comfy_models / "flux1-tiny-all-in-one.safetensors")
    kinds = {entry.name: entry.kind for entry in list_models(comfy_models)}
    assert kinds["flux1-tiny-all-in-one.safetensors"] == "single-file"
    assert split_base.split_files_in(comfy_models)["vae"].name == "ae.safetensors"
    args = ["--prompt", "a red house", "--seed", 3, "--steps", 2, "--height", HEIGHT, "--width", WIDTH]
    bundled = run_cli("generate", "--path", comfy_models / "flux1-tiny-all-in-one.safetensors", "--base-model", tiny,
                      *args, "--output", tmp_path / "bundled.png")
    save_file({name: value.contiguous() for name, value in diffusers_to_bfl(state).items()},
              tmp_path / "plain.safetensors")
    plain = run_cli("generate", "--path", tmp_path / "plain.safetensors", "--base-model", tiny, *args,
                    "--output", tmp_path / "plain.png")
    assert max_uint8_diff(bundled, plain) == 0


def test_a_scaled_fp8_t5_file_reads_as_comfyui_computes_it(tiny, tmp_path):
    """t5xxl_fp8_e4m3fn_scaled.safetensors: each matrix its stored FP8 values times its scale."""
    from safetensors.torch import load_file, save_file

    from tests.test_quantized_single_files import comfy_scaled_fp8

    t5 = {}
    for path in sorted((tiny / "text_encoder_2").glob("*.safetensors")):
        t5.update(load_file(path))
    stored, _, used = comfy_scaled_fp8(t5, "legacy")
    path = tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"
    save_file({name: value.contiguous() for name, value in stored.items()}, path)
    ours = file_weights(path)
    assert set(ours) == set(used)
    assert all(np.array_equal(np.array(ours[name].astype(mx.float32)), used[name].float().numpy()) for name in used)
