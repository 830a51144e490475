"""Model folders saved by mflux (`mflux-save`, quantized or not) load with `--path` or from the models folder.

The names and shapes: the parameter trees of mflux 0.4.1's, 0.9.6's and 0.18's own FLUX.1 classes (built lazily at
full size, quantized to 4 bits by nn.quantize as mflux-save does, their tree_flatten written to
tests/fixtures/mflux_trees.json.gz) fit our models exactly, and the configs read from them are FLUX.1-dev's published
ones. The numbers: a tiny FLUX.1 written in mflux's layout makes diffusers' image from the tensors the folder holds
(bfloat16, 4-bit layers dequantized; uint8 max |diff| <= 2)."""

import gzip
import json
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mflux_core.models import clip, t5, transformer, vae
from mflux_core.registry import list_models
from mflux_core.weights.loading import cast_floats
from mflux_core.weights.flux_config import config_from_shapes
from mflux_core.weights.mflux_saved import checkpoint_tensors, published_shapes
from mflux_core.weights.quantize import quantize_like_checkpoint
from tests.fixtures.fake_hub import hub  # noqa: F401 (a fixture)
from tests.fixtures.mflux_folders import load_into, write_mflux_folder
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux, load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, random_image, run_cli, save
from tests.test_inpaint_area import rectangle_mask

TREES = json.loads(gzip.decompress((Path(__file__).parent / "fixtures" / "mflux_trees.json.gz").read_bytes()))
BITS = 4  # the trees' quantization
# FLUX.1-dev's published config.json values (black-forest-labs/FLUX.1-dev)
FLUX1_DEV = {
    "transformer": {"in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
                    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                    "guidance_embeds": True, "axes_dims_rope": [16, 56, 56], "out_channels": None},
    "vae": {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "norm_num_groups": 32, "scaling_factor": 0.3611, "shift_factor": 0.1159,
            "use_quant_conv": False, "use_post_quant_conv": False},
    "text_encoder_2": {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
                       "num_heads": 64, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
                       "feed_forward_proj": "gated-gelu"},
    "text_encoder": {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                     "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
}
MODELS = {
    "transformer": (lambda config: transformer.FluxTransformer(transformer.FluxTransformerConfig.from_dict(config)),
                    transformer.sanitize),
    "vae": (lambda config: vae.AutoencoderKL(vae.VAEConfig.from_dict(config)), vae.sanitize),
    "text_encoder_2": (lambda config: t5.T5Encoder(t5.T5Config.from_dict(config)), t5.sanitize),
    "text_encoder": (lambda config: clip.CLIPTextModel(clip.CLIPTextConfig.from_dict(config)), clip.sanitize),
}


def packed_placeholders(shapes: dict[str, list[int]]) -> dict[str, mx.array]:
    """Unevaluated tensors of the tree's shapes (a quantized weight's uint32): nothing is allocated."""
    return {name: mx.zeros(shape, dtype=mx.uint32 if f"{name.removesuffix('.weight')}.scales" in shapes
                           else mx.bfloat16) for name, shape in shapes.items()}


@pytest.mark.parametrize("version", sorted(TREES))
@pytest.mark.parametrize("component", list(MODELS))
def test_every_mflux_versions_tree_fits_our_model_with_flux1s_config(version, component):
    stored = TREES[version][component]
    shapes = published_shapes(stored)
    config = config_from_shapes(shapes, BITS)
    assert {key: config[key] for key in FLUX1_DEV[component]} == FLUX1_DEV[component]
    assert config["quantization"] == {"bits": BITS, "group_size": 64}
    build, sanitize = MODELS[component]
    model = build(config)
    weights = cast_floats(sanitize(checkpoint_tensors(packed_placeholders(stored), shapes, BITS)), mx.float32)
    quantize_like_checkpoint(model, weights)
    expected = {name: tuple(value.shape) for name, value in tree_flatten(model.parameters())}
    assert {name: tuple(value.shape) for name, value in weights.items()} == expected


SPEC = TinyFluxSpec(heads=1, head_dim=128, axes_dims_rope=(16, 56, 56), num_layers=1, num_single_layers=1,
                    text_dim=64, pooled_dim=64, clip_heads=1, clip_intermediate=128, t5_heads=1, t5_d_kv=64,
                    t5_d_ff=128, vae_blocks=(32, 64), vae_norm_groups=32, seed=5)
HEIGHT, WIDTH, STEPS = 48, 64, 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("mflux-base"), SPEC)


@pytest.mark.parametrize("bits, version", [(4, "0.18.0"), (8, "0.9.6"), (None, "0.4.1")])
def test_an_mflux_saved_folder_makes_diffusers_image_from_its_tensors(tiny, tmp_path, bits, version):
    folder = tmp_path / "flux-mflux"
    read_back = write_mflux_folder(tiny, folder, bits, version)
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 2, WIDTH // 2), seed=3)
    ours = run_cli("generate", "--path", folder, "--prompt", "a red house", "--steps", STEPS, "--height", HEIGHT,
                   "--width", WIDTH, "--guidance", 3.5, "--init-noise", noise, "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)

    def image():
        return pipe("a red house", height=HEIGHT, width=WIDTH, num_inference_steps=STEPS, guidance_scale=3.5,
                    latents=pack(np.load(noise)), output_type="pil").images[0]

    original = image()
    load_into(pipe, read_back)
    expected = image()
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    if bits == 4:
        assert max_uint8_diff(expected, original) > 3 * UINT8_TOLERANCE  # the folder's 4-bit values make this image


def test_a_schnell_kind_folder_runs_schnells_schedule_and_the_models_folder_lists_it(tmp_path):
    """No guidance embedding: schnell's unshifted schedule (the scheduler config mflux never saves)."""
    spec = TinyFluxSpec(**{**SPEC.__dict__, "guidance_embeds": False, "dynamic_shift": False})
    tiny = build_tiny_flux(tmp_path / "schnell", spec)
    models = tmp_path / "models"
    read_back = write_mflux_folder(tiny, models / "schnell-4bit", 4)
    noise = make_noise(tmp_path, (1, 4, HEIGHT // 2, WIDTH // 2), seed=4)
    ours = run_cli("generate", "--model", "schnell-4bit", "--models-dir", models, "--prompt", "a blue circle",
                   "--steps", 2, "--height", HEIGHT, "--width", WIDTH, "--init-noise", noise,
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(tiny)
    load_into(pipe, read_back)
    expected = pipe("a blue circle", height=HEIGHT, width=WIDTH, num_inference_steps=2, guidance_scale=0.0,
                    latents=pack(np.load(noise)), output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    entry = next(entry for entry in list_models(models) if entry.name == "schnell-4bit")
    assert (entry.kind, entry.available) == ("base", True)


def test_a_broken_mflux_folder_is_refused_in_a_sentence(tiny, tmp_path, capsys):
    from mflux_core import cli

    folder = tmp_path / "broken"
    write_mflux_folder(tiny, folder, 4)
    shutil.rmtree(folder / "vae")
    args = ["generate", "--path", str(folder), "--prompt", "x", "--steps", "1", "--height", "48", "--width", "64",
            "--output", str(tmp_path / "out.png")]
    assert cli.main(args) == 1
    assert "no vae/ folder" in capsys.readouterr().err
    write_mflux_folder(tiny, tmp_path / "odd", 4)
    odd = tmp_path / "odd" / "transformer" / "0.safetensors"
    mx.save_safetensors(str(odd), mx.load(str(odd)), {"quantization_level": "four"})
    assert cli.main([*args[:2], str(tmp_path / "odd"), *args[3:]]) == 1
    assert "says it is quantized to 'four' bits" in capsys.readouterr().err
    mx.save_safetensors(str(odd), mx.load(str(odd)), {"quantization_level": "7"})
    assert cli.main([*args[:2], str(tmp_path / "odd"), *args[3:]]) == 1
    assert "says it is quantized to 7 bits; MLX quantizes to 2, 3, 4, 5, 6, 8." in capsys.readouterr().err


def test_saving_an_mflux_folder_writes_a_studio_folder_that_makes_the_same_image(tiny, tmp_path):
    """`save` gives the transformer diffusers' names and config, writes the scheduler and model_index.json mflux
    never saved, and keeps the other components as they are (their mflux files load as before)."""
    from mflux_core import cli

    folder = tmp_path / "flux-mflux"
    write_mflux_folder(tiny, folder, 4)
    assert cli.main(["save", "--model-path", str(folder), "--path", str(tmp_path / "saved")]) == 0
    assert json.loads((tmp_path / "saved" / "transformer" / "config.json").read_text())["quantization"]["bits"] == 4
    assert json.loads((tmp_path / "saved" / "scheduler" / "scheduler_config.json").read_text())["use_dynamic_shifting"]
    args = ["--prompt", "a red house", "--steps", 2, "--height", HEIGHT, "--width", WIDTH, "--seed", 1]
    saved = run_cli("generate", "--path", tmp_path / "saved", *args, "--output", tmp_path / "saved.png")
    assert max_uint8_diff(saved, run_cli("generate", "--path", folder, *args, "--output", tmp_path / "o.png")) == 0


def test_an_mflux_saved_fill_model_is_listed_as_fill_and_inpaints_as_its_diffusers_folder(tmp_path):
    """mflux-save of FLUX.1-Fill (float32, mflux 0.9.6): the models folder lists it for Fill (by its transformer's input
    channels: no model_index.json says so), and Fill makes the very image of the diffusers folder it came from."""
    spec = TinyFluxSpec(**{**SPEC.__dict__, "in_channels": 2 * 16 + 4 * 2 * 2, "out_channels": 16})
    tiny = build_tiny_flux(tmp_path / "fill", spec, "FluxFillPipeline")
    models = tmp_path / "models"
    write_mflux_folder(tiny, models / "fill-mflux", None, "0.9.6", dtype=mx.float32)  # 0.16+ drops a bias
    assert next(entry for entry in list_models(models) if entry.name == "fill-mflux").kind == "fill"
    image, mask = save(random_image(64, 48, seed=2), tmp_path / "i.png"), tmp_path / "m.png"
    save(rectangle_mask((64, 48), (8, 8, 40, 32)), mask)
    args = ["--prompt", "a red circle", "--image-path", image, "--masked-image-path", mask, "--steps", 2,
            "--seed", 3, "--guidance", 30]
    ours = run_cli("fill", "--path", models / "fill-mflux", *args, "--output", tmp_path / "a.png")
    assert max_uint8_diff(ours, run_cli("fill", "--path", tiny, *args, "--output", tmp_path / "b.png")) == 0


def test_a_gguf_file_picked_by_name_takes_an_mflux_folder_on_disk_as_its_base(tiny, tmp_path, monkeypatch):
    """With no FLUX.1-dev download, an mflux-saved dev in the models folder supplies a single file's VAE, text
    encoders and (written) scheduler, as `--base-model` naming it does."""
    from diffusers import FluxTransformer2DModel
    from huggingface_hub import constants

    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest
    from tests.test_quantized_single_files import Q8_0, write_gguf
    from tests.test_transformer import diffusers_to_bfl

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # this machine's FLUX.1 downloads aside
    models = tmp_path / "models"
    write_mflux_folder(tiny, models / "dev-mflux-8bit", 8)
    state = FluxTransformer2DModel.from_pretrained(tiny / "transformer").state_dict()
    write_gguf(models / "flux1-tiny-Q8_0.gguf", diffusers_to_bfl(state), {"": Q8_0})
    request = GenerationRequest(model="flux1-tiny-Q8_0.gguf", prompt="a red house", seed=3, steps=2, width=WIDTH,
                                height=HEIGHT, guidance=3.5)
    picked = ModelManager(models_dir=models).generate(request).image
    explicit = run_cli("generate", "--path", models / "flux1-tiny-Q8_0.gguf", "--base-model", models / "dev-mflux-8bit",
                       "--prompt", "a red house", "--seed", 3, "--steps", 2, "--height", HEIGHT, "--width", WIDTH,
                       "--guidance", 3.5, "--output", tmp_path / "explicit.png")
    assert max_uint8_diff(picked.convert("RGB"), explicit) == 0


@pytest.fixture
def source(tiny, tmp_path_factory):
    """What the fake hub serves: a 4-bit mflux save of the tiny model, as the "…-mflux-4bit" repos hold them."""
    folder = tmp_path_factory.mktemp("hub-repo") / "repo"
    write_mflux_folder(tiny, folder, 4)
    return folder


def test_an_mflux_repo_named_by_its_id_downloads_and_runs(hub, source, tmp_path):  # noqa: F811
    """As the Models tab or a request naming "owner/name" gets it: the snapshot is a base model and makes the image
    the folder makes."""
    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest
    from tests.fixtures.fake_hub import REPO

    models = tmp_path / "models"
    request = GenerationRequest(model=REPO, prompt="a red house", seed=3, steps=2, width=WIDTH, height=HEIGHT)
    downloaded = ModelManager(models_dir=models).generate(request).image.convert("RGB")
    assert next(entry for entry in list_models(models) if entry.name == REPO).kind == "base"
    local = run_cli("generate", "--path", source, "--prompt", "a red house", "--seed", 3, "--steps", 2, "--height",
                    HEIGHT, "--width", WIDTH, "--output", tmp_path / "local.png")
    assert max_uint8_diff(downloaded, local) == 0
