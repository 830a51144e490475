"""Union ControlNets (InstantX/Shakker-Labs FLUX.1-dev-ControlNet-Union: one network, a control mode embedding
per kind of control image) against diffusers.

- The residuals equal FluxControlNetModel's with `controlnet_mode` in each mode (relative error <= 1e-5, float32,
  through a save/load round trip); the mode is checked to matter.
- Whole images from the CLI equal FluxControlNetPipeline's with `control_mode` (uint8 max |diff| <= 2): the
  controlnet tool in its own mode (canny) and in gray, depth (the map the depth estimator made) and tile, the upscale
  tool in tile; diffusers' image in every other mode is farther than the tolerance from ours, so a tool that sent
  the wrong mode could not pass. (A random mode token is one of few text tokens here, and moves a tiny model's
  image by 5-10 levels: less than a control image does.)
- A ControlNet without modes (as Union-Pro-2.0) gets the image prepared for the asked type, with a note; a mode a
  Union ControlNet lacks is refused in one sentence, before any image is made.
"""

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.cli import main as cli_main
from mflux_core.models.controlnet import load_controlnet
from mflux_core.settings_schema import UNION_CONTROL_TYPES
from tests.fixtures.tiny_controlnet import build_tiny_controlnet, load_transformer
from tests.fixtures.tiny_flux import TinyFluxSpec, build_transformer
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli
from tests.test_controlnet import (  # noqa: F401  (controlnet_for_dev and posterior_mean are fixtures)
    MEANINGFUL_CHANGE, controlnet_for_dev, PROMPT, RELATIVE_TOLERANCE, diffusers_pipeline, posterior_mean,
    random_image, random_inputs, relative_error, run_reference, save,
)

MODES = 7  # InstantX's Union: canny, tile, depth, blur, pose, gray, low quality
TEXT_TOKENS = 8  # few text tokens beside the one mode token, so the mode moves a tiny model's image visibly
STRENGTH = 1.6


@pytest.fixture(scope="module")
def union_for_dev(tiny_dev, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-union")
    return build_tiny_controlnet(folder, load_transformer(tiny_dev), num_layers=2, num_single_layers=2, seed=3,
                                 num_mode=MODES)


def test_union_residuals_match_diffusers_in_each_mode(tmp_path):
    from diffusers import FluxControlNetModel

    transformer = build_transformer(TinyFluxSpec(num_layers=3, num_single_layers=3), torch.Generator().manual_seed(5))
    folder = build_tiny_controlnet(tmp_path, transformer, num_layers=2, num_single_layers=2, seed=7, num_mode=10)
    reference = FluxControlNetModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    ours = load_controlnet(folder)
    assert ours.is_union and ours.num_modes == 10
    inputs = random_inputs(reference.config, seed=3)
    arrays = {k: None if v is None else mx.array(v) for k, v in inputs.items()}
    by_mode = {}
    for mode in (0, 2, 9):
        expected = run_reference(reference, {**inputs, "controlnet_mode": np.array([[mode]])}, scale=0.7)
        blocks, singles = ours(**arrays, conditioning_scale=0.7, mode=mode)
        for mine, theirs in zip(blocks + singles, expected[0] + expected[1]):
            assert relative_error(np.array(mine), theirs) <= RELATIVE_TOLERANCE, mode
        by_mode[mode] = expected[1][-1]
    assert relative_error(by_mode[2], by_mode[0]) > MEANINGFUL_CHANGE
    with pytest.raises(ValueError, match="needs a control mode"):
        ours(**arrays)


def union_reference(tiny_dev, union_for_dev, control, mode, noise_path, size=64, steps=2):
    pipe = diffusers_pipeline(tiny_dev, union_for_dev)
    return pipe(PROMPT, control_image=control, control_mode=mode, height=size, width=size, num_inference_steps=steps,
                guidance_scale=4.0, controlnet_conditioning_scale=STRENGTH, max_sequence_length=TEXT_TOKENS,
                latents=pack(np.load(noise_path)), output_type="pil").images[0]


def union_cli(tiny_dev, union_for_dev, tmp_path, control: Image.Image, noise_path, *flags):
    return run_cli(
        "controlnet", "--path", tiny_dev, "--controlnet-path", union_for_dev, "--prompt", PROMPT,
        "--controlnet-image-path", save(control, tmp_path / "control.png"), "--controlnet-strength", STRENGTH,
        "--steps", 2, "--height", 64, "--width", 64, "--guidance", 4.0, "--init-noise", noise_path,
        "--max-sequence-length", TEXT_TOKENS, "--controlnet-save-canny", "--output", tmp_path / "ours.png", *flags,
    )


@pytest.mark.parametrize("kind", ["canny", "gray", "tile", "depth"])
def test_the_controlnet_tool_runs_a_union_controlnet_in_the_asked_mode(tiny_dev, union_for_dev, tmp_path,
                                                                       posterior_mean, kind):
    """What the ControlNet saw (saved by --controlnet-save-canny: Canny's edges, the photo made gray, the image as
    it is, the depth estimator's map), given to diffusers in the same mode, makes the same image."""
    photo = random_image(64, 64, seed=31)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=32)
    flags = () if kind == "canny" else ("--controlnet-mode", kind)  # canny: the tool's own mode
    ours = union_cli(tiny_dev, union_for_dev, tmp_path, photo, noise_path, *flags)
    with Image.open(tmp_path / f"ours_controlnet_{kind}.png") as saved:
        seen = saved.convert("RGB")
    if kind == "gray":
        assert np.array_equal(np.asarray(seen), np.asarray(photo.convert("L").convert("RGB")))
    if kind == "tile":
        assert np.array_equal(np.asarray(seen), np.asarray(photo))
    mode = UNION_CONTROL_TYPES.index(kind)
    expected = union_reference(tiny_dev, union_for_dev, seen, mode, noise_path)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    for other in set(range(MODES)) - {mode}:
        assert max_uint8_diff(ours, union_reference(tiny_dev, union_for_dev, seen, other, noise_path)) > UINT8_TOLERANCE


def test_upscale_runs_a_union_controlnet_in_tile_mode(tiny_dev, union_for_dev, tmp_path, posterior_mean):
    small = random_image(32, 32, seed=33)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=34)
    ours = run_cli(
        "upscale", "--path", tiny_dev, "--controlnet-path", union_for_dev, "--prompt", PROMPT,
        "--image-path", save(small, tmp_path / "small.png"), "--upscale-factor", 2, "--steps", 2, "--guidance", 4.0,
        "--controlnet-strength", STRENGTH, "--init-noise", noise_path, "--max-sequence-length", TEXT_TOKENS,
        "--output", tmp_path / "big.png",
    )
    control = small.resize((64, 64), Image.Resampling.LANCZOS)
    tile = UNION_CONTROL_TYPES.index("tile")
    assert max_uint8_diff(ours, union_reference(tiny_dev, union_for_dev, control, tile, noise_path)) <= UINT8_TOLERANCE
    canny = union_reference(tiny_dev, union_for_dev, control, UNION_CONTROL_TYPES.index("canny"), noise_path)
    assert max_uint8_diff(ours, canny) > UINT8_TOLERANCE


def test_a_controlnet_without_modes_gets_the_prepared_image_with_a_note(tiny_dev, controlnet_for_dev, tmp_path,
                                                                        posterior_mean, capsys):
    """As Union-Pro-2.0 is used: the asked type prepares the image (here: made gray), no mode is sent."""
    from tests.test_controlnet import reference_image

    photo = random_image(64, 64, seed=36)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=37)
    ours = run_cli(
        "controlnet", "--path", tiny_dev, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
        "--controlnet-image-path", save(photo, tmp_path / "photo.png"), "--controlnet-mode", "gray", "--steps", 2,
        "--guidance", 4.0, "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    assert (f"Note: {controlnet_for_dev} has no control modes: it was given the gray control image as its input (as "
            "Union-Pro-2.0 takes any kind).") in capsys.readouterr().err
    gray = photo.convert("L").convert("RGB")
    expected = reference_image(diffusers_pipeline(tiny_dev, controlnet_for_dev), gray, noise_path, 64, 64, 2, 4.0, 0.4)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE


def test_a_mode_a_union_controlnet_lacks_is_refused_in_a_sentence(tiny_dev, tmp_path, capsys):
    three = build_tiny_controlnet(tmp_path / "three", load_transformer(tiny_dev), num_layers=1, num_single_layers=1,
                                  num_mode=3)
    control = save(random_image(32, 32, seed=35), tmp_path / "c.png")
    output = tmp_path / "out.png"
    args = ["controlnet", "--path", tiny_dev, "--prompt", PROMPT, "--steps", 1, "--height", 32, "--width", 32,
            "--controlnet-image-path", control, "--controlnet-path", three, "--controlnet-mode", "pose",
            "--output", output]
    assert cli_main([str(a) for a in args]) == 1
    assert "This Union ControlNet has 3 control modes, so it has no pose mode (number 4)." in capsys.readouterr().err
    assert not output.exists()


def test_control_type_names_and_aliases():
    from mflux_core.errors import InvalidRequest
    from mflux_core.request import GenerationRequest
    from mflux_core.tools.controlnet_conditioning import control_type

    def kind(value):
        return control_type(GenerationRequest(tool="controlnet", extra={"controlnet_mode": value}), "canny")

    assert [kind(v) for v in (None, "", "Depth", "openpose", "low_quality", "Low Quality", "grey")] == [
        "canny", "canny", "depth", "pose", "low-quality", "low-quality", "gray"]
    with pytest.raises(InvalidRequest, match="The ControlNet control type 'normal' is not one of canny, tile, depth"):
        kind("normal")


@pytest.mark.parametrize("kind", ["union", "xlabs"])
def test_a_controlnet_saved_as_one_file_without_its_config_runs_as_its_folder(tiny_dev, union_for_dev, tmp_path,
                                                                           posterior_mean, kind):
    """As ComfyUI users keep them (instantx_flux_union.safetensors: diffusers' names, no config.json): the config
    comes from the shapes (a Union ControlNet's modes from its mode embedder, an XLabs one's hint block from its
    convolutions) and the RoPE axes from the base; the image equals diffusers' with the folder, in a mode other than
    the tool's own, and the models folder lists the file as a ControlNet."""
    import shutil

    from mflux_core.registry import list_models

    folder = union_for_dev if kind == "union" else build_tiny_controlnet(
        tmp_path / "xlabs", load_transformer(tiny_dev), num_layers=1, num_single_layers=0, seed=8, hint_patch=2)
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(folder / "diffusion_pytorch_model.safetensors", models / f"{kind}.safetensors")
    photo = random_image(64, 64, seed=38)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=39)
    flags = ("--controlnet-mode", "gray") if kind == "union" else ("--controlnet-skip-canny",)
    ours = run_cli(
        "controlnet", "--path", tiny_dev, "--models-dir", models, "--controlnet-path", f"{kind}.safetensors",
        "--prompt", PROMPT, "--controlnet-image-path", save(photo, tmp_path / "photo.png"), "--controlnet-strength",
        STRENGTH, "--steps", 2, "--height", 64, "--width", 64, "--guidance", 4.0, "--init-noise", noise_path,
        "--max-sequence-length", TEXT_TOKENS, "--output", tmp_path / "ours.png", *flags,
    )
    if kind == "union":
        expected = union_reference(tiny_dev, folder, photo.convert("L").convert("RGB"),
                                   UNION_CONTROL_TYPES.index("gray"), noise_path)
    else:
        pipe = diffusers_pipeline(tiny_dev, folder)
        expected = pipe(PROMPT, control_image=photo, height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                        controlnet_conditioning_scale=STRENGTH, max_sequence_length=TEXT_TOKENS,
                        latents=pack(np.load(noise_path)), output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert [entry.kind for entry in list_models(models) if entry.where == "models folder"] == ["controlnet"]
