"""Demo model folders written by our own code load in diffusers and in our engine, with equal images."""

import json

import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from mflux_core.demo import family
from mflux_core.demo.tokenizers import T5_MAX_LENGTH
from mflux_core.weights.safetensors_io import load_folder_weights
from tests.fixtures.demo_folders import write_random_demo_folders
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli


@pytest.fixture(scope="module")
def demo_folders(tmp_path_factory):
    return write_random_demo_folders(tmp_path_factory.mktemp("demo-export"))


def test_components_are_written_under_the_published_names(demo_folders):
    folder = demo_folders["base"]
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    clip = load_folder_weights(folder / "text_encoder")
    assert all(name.startswith("text_model.") for name in clip)
    vae = load_folder_weights(folder / "vae")
    assert vae["encoder.conv_in.weight"].shape == (family.vae_config()["block_out_channels"][0], 3, 3, 3)  # OIHW
    assert "shared.weight" in load_folder_weights(folder / "text_encoder_2")
    assert json.loads((folder / "text_encoder_2" / "config.json").read_text())["tie_word_embeddings"] is False
    assert {p.name for p in (folder / "tokenizer").iterdir()} >= {"vocab.json", "merges.txt"}
    assert (folder / "tokenizer_2" / "spiece.model").is_file()
    fill_config = json.loads((demo_folders["fill"] / "transformer" / "config.json").read_text())
    assert fill_config["in_channels"] == 384 and fill_config["out_channels"] == 64


def test_a_demo_folder_generates_the_same_image_in_diffusers_and_in_our_engine(demo_folders, tmp_path):
    folder = demo_folders["base"]
    noise_path = make_noise(tmp_path, (1, family.LATENT_CHANNELS, 8, 8), seed=3)
    prompt = "a red circle in the top left on a blue background"
    ours = run_cli("generate", "--path", folder, "--prompt", prompt, "--steps", 3, "--height", 64, "--width", 64,
                   "--guidance", 3.5, "--init-noise", noise_path, "--dtype", "float32",
                   "--output", tmp_path / "ours.png")
    pipe = load_diffusers_pipeline(folder)
    # diffusers pads T5 to 512 unless told; our engine takes the demo tokenizer's model_max_length
    reference = pipe(prompt, height=64, width=64, num_inference_steps=3, guidance_scale=3.5,
                     max_sequence_length=T5_MAX_LENGTH, latents=pack(np.load(noise_path)), output_type="pil").images[0]
    assert max_uint8_diff(ours, reference) <= UINT8_TOLERANCE
    assert np.asarray(reference).std() > 1  # not a blank image: the comparison means something


def test_the_fill_folder_loads_in_diffusers_fill_pipeline(demo_folders):
    pipe = load_diffusers_pipeline(demo_folders["fill"], "FluxFillPipeline")
    assert pipe.transformer.config.in_channels == 384
    weights = dict(tree_flatten(family.build_transformer(family.transformer_config("fill")).parameters()))
    assert sum(p.numel() for p in pipe.transformer.parameters()) == sum(v.size for v in weights.values())
    assert pipe.vae.dtype == torch.float32


def test_the_canny_controlnet_folder_matches_diffusers(tmp_path):
    import mlx.core as mx
    from diffusers import FluxControlNetModel

    from mflux_core.demo import export
    from mflux_core.models.controlnet import load_controlnet
    from tests.fixtures.demo_folders import perturbed

    config = family.controlnet_config()
    folder = export.write_controlnet(tmp_path / "demo-canny",
                                     perturbed(family.seeded(5, family.build_controlnet, config), 5), config)
    ours = load_controlnet(folder)
    reference = FluxControlNetModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    x, control = (rng.standard_normal((1, 16, 64)).astype(np.float32) for _ in range(2))
    text, pooled = rng.standard_normal((1, 7, 64)).astype(np.float32), rng.standard_normal((1, 64)).astype(np.float32)
    img_ids = np.stack(np.meshgrid(np.zeros(1), np.arange(4), np.arange(4), indexing="ij"), -1).reshape(-1, 3)
    txt_ids = np.zeros((7, 3), np.float32)
    blocks, _ = ours(mx.array(x), mx.array(control), mx.array(text), mx.array(pooled), mx.array([0.6]),
                     mx.array(img_ids.astype(np.float32)), mx.array(txt_ids), guidance=mx.array([3.5]),
                     conditioning_scale=0.4)
    with torch.no_grad():
        expected = reference(hidden_states=torch.from_numpy(x), controlnet_cond=torch.from_numpy(control),
                             conditioning_scale=0.4, encoder_hidden_states=torch.from_numpy(text),
                             pooled_projections=torch.from_numpy(pooled), timestep=torch.tensor([0.6]),
                             img_ids=torch.from_numpy(img_ids.astype(np.float32)), txt_ids=torch.from_numpy(txt_ids),
                             guidance=torch.tensor([3.5]), return_dict=False)[0]
    assert len(blocks) == len(expected) == 2
    for got, want in zip(blocks, expected):
        want = want.numpy()
        assert np.abs(np.array(got) - want).max() <= 1e-4 * np.abs(want).max()
