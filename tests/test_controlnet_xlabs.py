"""XLabs' FLUX ControlNets in diffusers' layout (XLabs-AI/flux-controlnet-canny-diffusers and its depth and hed
siblings: config `conditioning_embedding_channels`) against diffusers.

- The residuals equal FluxControlNetModel's given the control image in pixels (relative error <= 1e-5, float32,
  through a save/load round trip); the pixels are checked to matter.
- Whole images from the CLI equal FluxControlNetPipeline's (uint8 max |diff| <= 2) on a base of four double blocks
  and a ControlNet of three, where diffusers' repeat (samples 0, 1, 2, 0) differs from the spread of the other
  ControlNets (0, 0, 1, 1) by 93 levels: a tool that spread them, or encoded the image with the VAE, could not pass;
  another control image moves diffusers' image by more than 3x the tolerance.
- A base whose tokens are not the hint block's size is refused in a sentence.
- XLabs' own single files (flux-canny-controlnet-v3.safetensors: BFL names, one Sequential hint block) make the same
  image as the diffusers-layout ControlNet they were written from, picked from the models folder by name, where they
  are listed as ControlNets; another single file given as a ControlNet is refused in a sentence.
"""

import mlx.core as mx
import numpy as np
import pytest
import torch

from mflux_core.cli import main as cli_main
from mflux_core.models.controlnet import load_controlnet
from tests.fixtures.tiny_controlnet import build_tiny_controlnet, load_transformer
from tests.fixtures.tiny_flux import TinyFluxSpec, build_tiny_flux
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, run_cli
from tests.test_controlnet import (
    CONDITIONING_EFFECT, MEANINGFUL_CHANGE, PROMPT, RELATIVE_TOLERANCE, diffusers_pipeline, random_image,
    random_inputs, reference_image, relative_error, save,
)
from tests.test_transformer import diffusers_to_bfl


@pytest.fixture(scope="module")
def four_block_base(tmp_path_factory):
    return build_tiny_flux(tmp_path_factory.mktemp("tiny-four-blocks"), TinyFluxSpec(num_layers=4, seed=2))


@pytest.fixture(scope="module")
def xlabs_controlnet(four_block_base, tmp_path_factory):
    return build_tiny_controlnet(tmp_path_factory.mktemp("tiny-xlabs"), load_transformer(four_block_base),
                                 num_layers=3, num_single_layers=0, seed=4, hint_patch=2)


def test_xlabs_residuals_match_diffusers_from_pixels(xlabs_controlnet):
    from diffusers import FluxControlNetModel

    reference = FluxControlNetModel.from_pretrained(xlabs_controlnet, torch_dtype=torch.float32).eval()
    ours = load_controlnet(xlabs_controlnet)
    assert ours.takes_pixels and reference.input_hint_block is not None
    inputs = random_inputs(reference.config, seed=5)  # a 3 x 5 token grid: pixels of 48 x 80
    pixels = np.random.default_rng(6).uniform(-1, 1, (1, 3, 48, 80)).astype(np.float32)

    def both(pixels):
        tensors = {k: None if v is None else torch.from_numpy(v) for k, v in {**inputs, "controlnet_cond": pixels}.items()}
        with torch.no_grad():
            expected, expected_singles = reference(**tensors, conditioning_scale=0.7, return_dict=False)
        arrays = {k: None if v is None else mx.array(v) for k, v in inputs.items()}
        tokens = ours.hint_tokens(mx.array(pixels.transpose(0, 2, 3, 1)))
        blocks, singles = ours(**{**arrays, "controlnet_cond": tokens}, conditioning_scale=0.7)
        assert len(blocks) == len(expected) == 3 and not singles and expected_singles is None
        for mine, theirs in zip(blocks, expected):
            assert relative_error(np.array(mine), theirs.numpy()) <= RELATIVE_TOLERANCE
        return expected[-1].numpy()

    assert relative_error(both(pixels), both(pixels[:, :, ::-1].copy())) > MEANINGFUL_CHANGE


def test_an_xlabs_controlnet_matches_diffusers_and_repeats_its_samples(four_block_base, xlabs_controlnet, tmp_path):
    control = random_image(80, 48, seed=7)
    noise_path = make_noise(tmp_path, (1, 4, 6, 10), seed=8)
    ours = run_cli(
        "controlnet", "--path", four_block_base, "--controlnet-path", xlabs_controlnet, "--prompt", PROMPT,
        "--controlnet-image-path", save(control, tmp_path / "control.png"), "--controlnet-skip-canny",
        "--controlnet-strength", 0.8, "--steps", 2, "--height", 48, "--width", 80, "--guidance", 4.0,
        "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    pipe = diffusers_pipeline(four_block_base, xlabs_controlnet)
    expected = reference_image(pipe, control, noise_path, 48, 80, 2, 4.0, 0.8)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    other = reference_image(pipe, random_image(80, 48, seed=9), noise_path, 48, 80, 2, 4.0, 0.8)
    assert max_uint8_diff(expected, other) > CONDITIONING_EFFECT


def test_a_base_whose_tokens_are_not_the_hint_blocks_size_is_refused(xlabs_controlnet, tmp_path, capsys):
    # a VAE of two levels: a token covers 4 px, the hint block's 16
    small_vae = build_tiny_flux(tmp_path / "small-vae", TinyFluxSpec(vae_blocks=(8, 16), num_layers=4, seed=2))
    output = tmp_path / "out.png"
    args = ["controlnet", "--path", small_vae, "--controlnet-path", xlabs_controlnet, "--prompt", PROMPT,
            "--controlnet-image-path", save(random_image(32, 32, seed=10), tmp_path / "c.png"),
            "--controlnet-skip-canny", "--steps", 1, "--height", 32, "--width", 32, "--output", output]
    assert cli_main([str(a) for a in args]) == 1
    assert (f"The ControlNet {xlabs_controlnet} makes a token of each 16 px square; this model's tokens are 4 px "
            "squares.") in capsys.readouterr().err
    assert not output.exists()


def test_the_hint_blocks_planned_peak_holds_what_it_takes(xlabs_controlnet):
    """Planned against MLX's measured peak for a 1024 x 1024 control image: at least it, at most 1.25x (the plan
    refuses a run that would not fit, before the pixels are read)."""
    ours = load_controlnet(xlabs_controlnet)
    pixels = mx.random.uniform(-1, 1, (1, 1024, 1024, 3))
    mx.eval(pixels)
    mx.clear_cache()
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    mx.eval(ours.hint_tokens(pixels))
    measured = mx.get_peak_memory() - before
    assert measured <= ours.hint_peak_bytes(1024, 1024) <= 1.25 * measured


# --- XLabs' own single files ----------------------------------------------------------------------


def as_xlabs_file(folder, path):
    """The diffusers-layout ControlNet in `folder` saved as XLabs' own single file: its trunk in BFL's names (the
    mapping tests/test_transformer.py checks against diffusers' converter) and XLabs' names for the rest, as
    x-flux's ControlNetFlux has them (pos_embed_input; input_hint_block as one Sequential, a SiLU after each
    convolution but the last)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    own = {k: state.pop(k) for k in list(state) if k.startswith(("controlnet_", "input_hint_block."))}
    hint_layers = ["conv_in", *(f"blocks.{i}" for i in range(6)), "conv_out"]
    xlabs = diffusers_to_bfl(state)
    for key, value in own.items():
        if key.startswith("controlnet_x_embedder."):
            key = key.replace("controlnet_x_embedder", "pos_embed_input")
        elif key.startswith("input_hint_block."):
            layer, param = key[len("input_hint_block."):].rsplit(".", 1)
            key = f"input_hint_block.{2 * hint_layers.index(layer)}.{param}"
        xlabs[key] = value
    save_file({k: v.contiguous() for k, v in xlabs.items()}, str(path))
    return path


def test_xlabs_own_single_file_matches_diffusers_and_is_listed_as_a_controlnet(four_block_base, xlabs_controlnet,
                                                                              tmp_path, capsys):
    """The file, picked from the models folder by name, makes diffusers' image of the same ControlNet in diffusers'
    layout; another single file given as a ControlNet is refused in a sentence."""
    from mflux_core.registry import list_models

    models = tmp_path / "models"
    models.mkdir()
    as_xlabs_file(xlabs_controlnet, models / "flux-canny-controlnet-v3.safetensors")
    control = random_image(80, 48, seed=11)
    noise_path = make_noise(tmp_path, (1, 4, 6, 10), seed=12)
    ours = run_cli(
        "controlnet", "--path", four_block_base, "--models-dir", models, "--controlnet-path",
        "flux-canny-controlnet-v3.safetensors", "--prompt", PROMPT, "--controlnet-image-path",
        save(control, tmp_path / "control.png"), "--controlnet-skip-canny", "--controlnet-strength", 0.8, "--steps",
        2, "--height", 48, "--width", 80, "--guidance", 4.0, "--init-noise", noise_path, "--output",
        tmp_path / "ours.png",
    )
    expected = reference_image(diffusers_pipeline(four_block_base, xlabs_controlnet), control, noise_path, 48, 80, 2,
                               4.0, 0.8)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    listed = {entry.name: entry.kind for entry in list_models(models) if entry.where == "models folder"}
    assert listed == {"flux-canny-controlnet-v3.safetensors": "controlnet"}

    from safetensors.numpy import save_file
    save_file({"img_in.weight": np.zeros((4, 4), np.float32)}, str(models / "other.safetensors"))
    args = ["controlnet", "--path", four_block_base, "--controlnet-path", models / "other.safetensors", "--prompt",
            PROMPT, "--controlnet-image-path", tmp_path / "control.png", "--steps", 1, "--output", tmp_path / "x.png"]
    assert cli_main([str(a) for a in args]) == 1
    assert (f"{models / 'other.safetensors'} is not a FLUX ControlNet: its tensors are neither diffusers' "
            "FluxControlNetModel's (controlnet_x_embedder, controlnet_blocks) nor XLabs' (pos_embed_input, "
            "input_hint_block, controlnet_blocks).") in capsys.readouterr().err
