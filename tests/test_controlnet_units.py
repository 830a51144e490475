"""Several ControlNets at once (further ControlNet units, mflux_core/controlnet_units.py) against diffusers'
FluxMultiControlNetModel.

- Whole images from the CLI (`--controlnet-unit`) equal FluxControlNetPipeline's with a list of ControlNets,
  control images and strengths (uint8 max |diff| <= 2, float32, the same initial noise, the VAE posterior mean):
  two different ControlNets, and one Union ControlNet in two modes (diffusers' one-network path). Each unit alone
  makes an image farther than the tolerance from both together, so a tool that dropped a unit could not pass.
- ControlNets with different block counts: each one's samples cover the main blocks as they would alone, then
  add up (diffusers would cut the longer list); blocks with the same samples share one sum.
- Refusals in one sentence, before any image is made: a unit on another tool, a unit without an image, too many
  units, a bad unit setting on the command line; presets keep a unit's settings, never its image.
"""

import re
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.cli import main as cli_main
from mflux_core.controlnet_units import MAX_UNITS, unit_from_flag
from mflux_core.errors import InvalidRequest
from mflux_core.images.canny import canny_edges
from mflux_core.presets import settings_from_request, settings_problems
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import UNION_CONTROL_TYPES
from mflux_core.tools.controlnet_conditioning import summed_samples
from tests.fixtures.tiny_controlnet import build_tiny_controlnet, load_transformer
from tests.parity import UINT8_TOLERANCE, make_noise, max_uint8_diff, pack, run_cli
from tests.test_controlnet import (  # noqa: F401  (controlnet_for_dev and posterior_mean are fixtures)
    PROMPT, controlnet_for_dev, posterior_mean, random_image, save,
)
from tests.test_controlnet_union import MODES, TEXT_TOKENS, union_for_dev  # noqa: F401  (a fixture)

STRENGTHS = (0.9, 1.3)


@pytest.fixture(scope="module")
def second_controlnet(tiny_dev, tmp_path_factory):
    """Another ControlNet of the same shape, other weights (as a depth ControlNet beside a Canny one)."""
    folder = tmp_path_factory.mktemp("tiny-controlnet-2")
    return build_tiny_controlnet(folder, load_transformer(tiny_dev), num_layers=1, num_single_layers=1, seed=9)


def multi_reference(base, folders, images, strengths, noise_path, modes=None):
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    nets = [FluxControlNetModel.from_pretrained(folder, torch_dtype=torch.float32) for folder in folders]
    pipe = FluxControlNetPipeline.from_pretrained(base, controlnet=nets, torch_dtype=torch.float32,
                                                  local_files_only=True)
    # One start and end per image: left out, diffusers makes one per network, and with a single (Union) network its
    # per-step scales then keep the first image's only, so the later images are silently dropped.
    return pipe(PROMPT, control_image=list(images), control_mode=modes, height=64, width=64, num_inference_steps=2,
                guidance_scale=4.0, controlnet_conditioning_scale=list(strengths), max_sequence_length=TEXT_TOKENS,
                control_guidance_start=[0.0] * len(images), control_guidance_end=[1.0] * len(images),
                latents=pack(np.load(noise_path)), output_type="pil").images[0]


def multi_cli(base, tmp_path, noise_path, first: tuple, *units: str):
    path, image, strength, *flags = first
    return run_cli(
        "controlnet", "--path", base, "--controlnet-path", path, "--prompt", PROMPT,
        "--controlnet-image-path", save(image, tmp_path / "control.png"), "--controlnet-strength", strength,
        "--steps", 2, "--height", 64, "--width", 64, "--guidance", 4.0, "--init-noise", noise_path,
        "--max-sequence-length", TEXT_TOKENS, "--output", tmp_path / "ours.png", *flags,
        *(arg for unit in units for arg in ("--controlnet-unit", unit)),
    )


def test_two_controlnets_match_diffusers_multi_controlnet(tiny_dev, controlnet_for_dev, second_controlnet, tmp_path,
                                                          posterior_mean):
    """Unit 1 finds Canny edges; unit 2 (another image, 80x80: resized to the output size) is handed over as it is."""
    photo, other = random_image(64, 64, seed=41), random_image(80, 80, seed=42)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=43)
    ours = multi_cli(tiny_dev, tmp_path, noise_path, (controlnet_for_dev, photo, STRENGTHS[0]),
                     f"{save(other, tmp_path / 'other.png')},path={second_controlnet},strength={STRENGTHS[1]},"
                     "skip-canny")
    images = (canny_edges(photo), other)
    folders = (controlnet_for_dev, second_controlnet)
    expected = multi_reference(tiny_dev, folders, images, STRENGTHS, noise_path)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    for alone in range(2):
        single = multi_reference(tiny_dev, folders[alone:alone + 1], images[alone:alone + 1],
                                 STRENGTHS[alone:alone + 1], noise_path)
        assert max_uint8_diff(ours, single) > UINT8_TOLERANCE, alone


def test_one_union_controlnet_in_two_modes_matches_diffusers(tiny_dev, union_for_dev, tmp_path, posterior_mean):
    """diffusers' FluxMultiControlNetModel with one Union network runs it once per image and mode: here unit 1 in its
    own canny mode and unit 2, the same network (loaded once), in gray mode."""
    photo, other = random_image(64, 64, seed=44), random_image(64, 64, seed=45)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=46)
    ours = multi_cli(tiny_dev, tmp_path, noise_path, (union_for_dev, photo, STRENGTHS[0]),
                     f"{save(other, tmp_path / 'other.png')},path={union_for_dev},mode=gray,strength={STRENGTHS[1]}")
    images = (canny_edges(photo), other.convert("L").convert("RGB"))
    modes = [UNION_CONTROL_TYPES.index("canny"), UNION_CONTROL_TYPES.index("gray")]
    expected = multi_reference(tiny_dev, (union_for_dev,), images, STRENGTHS, noise_path, modes)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    other_mode = multi_reference(tiny_dev, (union_for_dev,), images, STRENGTHS, noise_path, [modes[0], MODES - 1])
    assert max_uint8_diff(ours, other_mode) > UINT8_TOLERANCE
    with Image.open(tmp_path / "ours.png") as saved:
        parameters = saved.text["parameters"]
    units = re.findall(r'ControlNet (\d): "([^"]*)"', parameters)  # A1111's ControlNet extension's items
    assert [number for number, _ in units] == ["0", "1"]
    first, second = (dict(item.split(": ") for item in text.split(", ")) for _, text in units)  # as it reads them
    assert first["Module"] == "canny" and first["Weight"] == f"{STRENGTHS[0]:g}" and first["Threshold A"] == "100"
    assert second["Module"] == "recolor_luminance" and second["Weight"] == f"{STRENGTHS[1]:g}"
    assert first["Model"] == second["Model"] == Path(union_for_dev).name


def test_samples_of_controlnets_with_other_block_counts_add_up_per_main_block():
    a = [mx.array([1.0]), mx.array([2.0])]  # two samples over four blocks: each covers two
    b = [mx.array([10.0])]  # one sample covers all four
    summed = summed_samples([a, b, []], 4)
    assert [float(x.item()) for x in summed] == [11.0, 11.0, 12.0, 12.0]
    assert summed[0] is summed[1] and summed[2] is summed[3]  # one sum per distinct pair of samples
    assert summed_samples([[], []], 4) == []


def test_save_canny_writes_what_each_unit_saw(tiny_dev, controlnet_for_dev, tmp_path, capsys):
    photo, other = random_image(64, 64, seed=47), random_image(64, 64, seed=48)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=49)
    multi_cli(tiny_dev, tmp_path, noise_path, (controlnet_for_dev, photo, 0.5, "--controlnet-save-canny"),
              f"{save(other, tmp_path / 'other.png')},path={controlnet_for_dev},canny-low=10,canny-high=40")
    with Image.open(tmp_path / "ours_controlnet2_canny.png") as seen:
        assert np.array_equal(np.asarray(seen.convert("RGB")), np.asarray(canny_edges(other, 10, 40)))
    assert (tmp_path / "ours_controlnet_canny.png").is_file()


def test_bad_units_are_refused_in_a_sentence(tiny_dev, controlnet_for_dev, tmp_path, capsys):
    image = save(random_image(64, 64, seed=50), tmp_path / "image.png")
    unit = {"controlnet_image_path": str(image)}
    refusals = [
        (GenerationRequest(tool="generate", controlnet_units=(unit,)),
         "Further ControlNet units are for the controlnet tool, not generate."),
        (GenerationRequest(tool="controlnet", controlnet_units=({"controlnet_strength": 1.0},)),
         "ControlNet unit 2 has no control image: give it a controlnet_image_path."),
        (GenerationRequest(tool="controlnet", controlnet_units=(unit,) * MAX_UNITS),
         f"The further ControlNet units are at most {MAX_UNITS - 1} (ControlNet units 2 to {MAX_UNITS}), "
         f"not {MAX_UNITS}."),
        (GenerationRequest(tool="controlnet", controlnet_units=(unit, {**unit, "controlnet_strength": float("nan")})),
         "The further ControlNet units have a problem in unit 3: 'controlnet_strength' must be a number from 0 to 2."),
        (GenerationRequest(tool="controlnet", controlnet_units=({**unit, "weight": 1},)),
         "The further ControlNet units have a problem in unit 2: unknown setting 'weight'."),
    ]
    for request, sentence in refusals:
        with pytest.raises(InvalidRequest) as error:
            request.validated()
        assert str(error.value) == sentence
    with pytest.raises(InvalidRequest, match=r"The ControlNet unit 'image.png,strength=3': strength must be a number "
                                             r"from 0 to 2\."):
        unit_from_flag("image.png,strength=3")
    assert unit_from_flag("a,b.png,mode=depth,skip-canny") == {
        "controlnet_image_path": "a,b.png", "controlnet_mode": "depth", "controlnet_skip_canny": True}
    assert cli_main(["controlnet", "--path", str(tiny_dev), "--controlnet-path", str(controlnet_for_dev), "--prompt",
                     PROMPT, "--controlnet-image-path", str(image), "--controlnet-unit", f"{image},mode=sketch",
                     "--output", str(tmp_path / "out.png")]) == 1
    assert "The ControlNet control type 'sketch' is not one of canny, tile" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


def test_presets_keep_a_units_settings_but_not_its_image(tmp_path):
    unit = {"controlnet_image_path": str(tmp_path / "depth.png"), "controlnet_strength": 0.7,
            "controlnet_mode": "depth", "controlnet_path": "union"}
    settings = settings_from_request(GenerationRequest(tool="controlnet", controlnet_units=(unit,)))
    assert settings["controlnet_units"] == [{"controlnet_strength": 0.7, "controlnet_mode": "depth",
                                             "controlnet_path": "union"}]
    assert settings_problems(settings) == []
    assert settings_problems({"controlnet_units": [unit]}) == [
        "'controlnet_units' hold unit 2's control image path; presets hold settings only (images are input files)"]
