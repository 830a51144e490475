"""The FLUX ControlNet in MLX and the `controlnet` / `upscale` tools, against diffusers.

- The ControlNet's residuals equal FluxControlNetModel's: max |ours - diffusers| / max |diffusers|
  <= 1e-5 per residual (float32, through a save/load round trip), with and without a guidance
  embedding; the control latents, the timestep and the scale are each checked to matter.
- Whole images from the CLI equal FluxControlNetPipeline's (and with an input image
  FluxControlNetImg2ImgPipeline's) (uint8 max |diff| <= 2) with the same
  initial noise and the VAE posterior mean; the control image moves diffusers' image by more than
  3x that tolerance, so a tool that ignored it could not pass.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core.cli import main as cli_main
from mflux_core.errors import ModelLoadError
from mflux_core.images.canny import canny_edges
from mflux_core.models.controlnet import load_controlnet
from mflux_core.presets import settings_from_a1111
from tests.fixtures.tiny_controlnet import build_tiny_controlnet, load_transformer
from tests.fixtures.tiny_flux import TinyFluxSpec, build_transformer
from tests.parity import UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, pack, run_cli

RELATIVE_TOLERANCE = 1e-5
MEANINGFUL_CHANGE = 1e-2  # relative change an input must cause in the reference residuals
CONDITIONING_EFFECT = 3 * UINT8_TOLERANCE  # a changed control image must move diffusers' image more
PROMPT = "a red house by a lake"


def random_image(width, height, seed) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR)


def save(image: Image.Image, path):
    image.save(path)
    return path


@pytest.fixture
def posterior_mean(monkeypatch):
    """diffusers samples the VAE posterior for the control image; our engine uses the mean."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)


@pytest.fixture(scope="module")
def controlnet_for_dev(tiny_dev, tmp_path_factory):
    """One double and one single block for tiny_dev's two of each: residual i serves blocks 2i and 2i+1."""
    folder = tmp_path_factory.mktemp("tiny-controlnet")
    return build_tiny_controlnet(folder, load_transformer(tiny_dev), num_layers=1, num_single_layers=1)


# --- the model ------------------------------------------------------------------------------


def relative_error(ours, reference) -> float:
    return float(np.abs(np.asarray(ours) - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module", params=[True, False], ids=["guidance", "no-guidance"])
def controlnets(request, tmp_path_factory):
    """(ours, diffusers') ControlNet of two double and two single blocks, made from a 3 + 3 block transformer."""
    from diffusers import FluxControlNetModel

    spec = TinyFluxSpec(num_layers=3, num_single_layers=3, guidance_embeds=request.param)
    transformer = build_transformer(spec, torch.Generator().manual_seed(5))
    folder = build_tiny_controlnet(tmp_path_factory.mktemp("controlnet"), transformer, num_layers=2,
                                   num_single_layers=2, seed=6)
    reference = FluxControlNetModel.from_pretrained(folder, torch_dtype=torch.float32).eval()
    return load_controlnet(folder), reference


def random_inputs(config, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    height, width, text_tokens = 3, 5, 7
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    img_ids = np.stack([np.zeros_like(rows), rows, cols], axis=-1).reshape(-1, 3).astype(np.float32)
    tokens = height * width
    return {
        "hidden_states": rng.standard_normal((1, tokens, config.in_channels)).astype(np.float32),
        "controlnet_cond": rng.standard_normal((1, tokens, config.in_channels)).astype(np.float32),
        "encoder_hidden_states": rng.standard_normal((1, text_tokens, config.joint_attention_dim)).astype(np.float32),
        "pooled_projections": rng.standard_normal((1, config.pooled_projection_dim)).astype(np.float32),
        "timestep": np.array([0.7], np.float32),
        "img_ids": img_ids,
        "txt_ids": np.zeros((text_tokens, 3), np.float32),
        "guidance": np.array([3.5], np.float32) if config.guidance_embeds else None,
    }


def run_reference(reference, inputs: dict, scale: float):
    tensors = {k: None if v is None else torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        blocks, singles = reference(**tensors, conditioning_scale=scale, return_dict=False)
    return [b.numpy() for b in blocks], [s.numpy() for s in singles]


def run_ours(ours, inputs: dict, scale: float):
    arrays = {k: None if v is None else mx.array(v) for k, v in inputs.items()}
    blocks, singles = ours(**arrays, conditioning_scale=scale)
    return [np.array(b) for b in blocks], [np.array(s) for s in singles]


def test_controlnet_residuals_match_diffusers(controlnets):
    ours, reference = controlnets
    inputs = random_inputs(reference.config, seed=0)
    expected_blocks, expected_singles = run_reference(reference, inputs, scale=0.7)
    blocks, singles = run_ours(ours, inputs, scale=0.7)
    assert len(blocks) == len(expected_blocks) == 2 and len(singles) == len(expected_singles) == 2
    for mine, theirs in zip(blocks + singles, expected_blocks + expected_singles):
        assert relative_error(mine, theirs) <= RELATIVE_TOLERANCE

    changed = {"controlnet_cond": inputs["controlnet_cond"][:, ::-1].copy(), "timestep": np.array([0.2], np.float32)}
    for name, value in changed.items():
        moved_blocks, moved_singles = run_reference(reference, {**inputs, name: value}, scale=0.7)
        assert relative_error(moved_singles[-1], expected_singles[-1]) > MEANINGFUL_CHANGE, name
        assert relative_error(run_ours(ours, {**inputs, name: value}, 0.7)[1][-1], moved_singles[-1]) <= RELATIVE_TOLERANCE
    scaled = run_ours(ours, inputs, scale=1.4)[0][0]
    np.testing.assert_allclose(scaled, 2 * blocks[0], rtol=1e-6, atol=1e-6)


def write_config(folder, config: dict):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_loading_refuses_what_is_not_a_plain_flux_controlnet(controlnet_for_dev, tiny_dev, tmp_path):
    config = json.loads((controlnet_for_dev / "config.json").read_text())
    cases = {
        tiny_dev: "is a full model folder",
        tiny_dev / "transformer": "describes FluxTransformer2DModel",
        write_config(tmp_path / "empty", {}): "describes an unnamed model",
        tmp_path: "has no config.json",
        write_config(tmp_path / "union", {**config, "num_mode": 0}): "needs a whole number of control modes",
        write_config(tmp_path / "hint", {**config, "conditioning_embedding_channels": 5, "patch_size": 2}):
            "input hint block gives 5 channels in patches of 2, which does not make its 16 input channels",
    }
    for folder, message in cases.items():
        with pytest.raises(ModelLoadError, match=message):
            load_controlnet(folder)


# --- whole images -------------------------------------------------------------------------------


def diffusers_pipeline(base, controlnet_folder):
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    controlnet = FluxControlNetModel.from_pretrained(controlnet_folder, torch_dtype=torch.float32)
    return FluxControlNetPipeline.from_pretrained(base, controlnet=controlnet, torch_dtype=torch.float32,
                                                  local_files_only=True)


def reference_image(pipe, control, noise_path, height, width, steps, guidance, strength):
    return pipe(PROMPT, control_image=control, height=height, width=width, num_inference_steps=steps,
                guidance_scale=guidance, controlnet_conditioning_scale=strength, latents=pack(np.load(noise_path)),
                output_type="pil").images[0]


@pytest.mark.parametrize("height, width, control_size, steps", [(64, 64, (64, 64), 3), (48, 80, (100, 60), 2)])
def test_controlnet_matches_diffusers(tiny_dev, controlnet_for_dev, tmp_path, posterior_mean,
                                      height, width, control_size, steps):
    control = random_image(*control_size, seed=11)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=12)
    ours = run_cli(
        "controlnet", "--path", tiny_dev, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
        "--controlnet-image-path", save(control, tmp_path / "control.png"), "--controlnet-skip-canny",
        "--controlnet-strength", 0.8, "--steps", steps, "--height", height, "--width", width, "--guidance", 4.0,
        "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    pipe = diffusers_pipeline(tiny_dev, controlnet_for_dev)
    expected = reference_image(pipe, control, noise_path, height, width, steps, 4.0, 0.8)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    other = reference_image(pipe, random_image(*control_size, seed=13), noise_path, height, width, steps, 4.0, 0.8)
    assert max_uint8_diff(expected, other) > CONDITIONING_EFFECT


@pytest.mark.parametrize("image_strength, steps", [(0.4, 4), (0.7, 5)])
def test_image_to_image_with_a_controlnet_matches_diffusers(tiny_dev, controlnet_for_dev, tmp_path, image_strength,
                                                            steps):
    """`--image-path` on the controlnet tool is FluxControlNetImg2ImgPipeline: start from the noised input image,
    steered by the control image; both inputs move the image, so a tool that dropped either could not pass."""
    from diffusers import FluxControlNetImg2ImgPipeline, FluxControlNetModel
    from diffusers.pipelines.flux import pipeline_flux_controlnet_image_to_image as module

    height, width = 48, 64
    control, init = random_image(80, 60, seed=22), random_image(96, 72, seed=23)  # both resized by both sides
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=24)
    ours = run_cli(
        "controlnet", "--path", tiny_dev, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
        "--controlnet-image-path", save(control, tmp_path / "control.png"), "--controlnet-skip-canny",
        "--image-path", save(init, tmp_path / "init.png"), "--image-strength", image_strength,
        "--controlnet-strength", 0.8, "--steps", steps, "--height", height, "--width", width, "--guidance", 4.0,
        "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    controlnet = FluxControlNetModel.from_pretrained(controlnet_for_dev, torch_dtype=torch.float32)
    pipe = FluxControlNetImg2ImgPipeline.from_pretrained(tiny_dev, controlnet=controlnet, torch_dtype=torch.float32,
                                                         local_files_only=True)

    def reference(image, control_image):
        with deterministic_diffusers(module, np.load(noise_path)):
            return pipe(PROMPT, image=image, control_image=control_image, height=height, width=width,
                        strength=1 - image_strength, num_inference_steps=steps, guidance_scale=4.0,
                        controlnet_conditioning_scale=0.8, output_type="pil").images[0]

    expected = reference(init, control)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference(random_image(96, 72, seed=25), control)) > CONDITIONING_EFFECT
    assert max_uint8_diff(expected, reference(init, random_image(80, 60, seed=26))) > CONDITIONING_EFFECT


def test_canny_edges_are_taken_at_the_output_size_and_saved(tiny_dev, controlnet_for_dev, tmp_path, posterior_mean):
    """The saved edges are what the ControlNet saw: diffusers given them makes the same image."""
    photo = random_image(96, 96, seed=14)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=15)
    ours = run_cli(
        "controlnet", "--path", tiny_dev, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
        "--controlnet-image-path", save(photo, tmp_path / "photo.png"), "--controlnet-save-canny",
        "--canny-low", 60, "--canny-high", 120, "--steps", 2, "--height", 64, "--width", 64, "--guidance", 4.0,
        "--init-noise", noise_path, "--output", tmp_path / "ours.png",
    )
    with Image.open(tmp_path / "ours_controlnet_canny.png") as saved:
        edges = saved.convert("RGB")
    expected_edges = canny_edges(photo.resize((64, 64), Image.Resampling.LANCZOS), 60, 120)
    assert np.array_equal(np.asarray(edges), np.asarray(expected_edges))
    assert 0 < (np.asarray(edges) > 0).mean() < 0.5
    expected = reference_image(diffusers_pipeline(tiny_dev, controlnet_for_dev), edges, noise_path, 64, 64, 2, 4.0, 0.4)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    with Image.open(tmp_path / "ours.png") as saved:  # A1111's ControlNet extension reads its unit back from this
        parameters = saved.text["parameters"]
    assert (f'ControlNet 0: "Module: canny, Model: {Path(controlnet_for_dev).name}, Weight: 0.4, Resize Mode: Crop and '
            'Resize, Processor Res: 64, Threshold A: 60, Threshold B: 120, Guidance Start: 0.0, Guidance End: 1.0, '
            'Pixel Perfect: False, Control Mode: Balanced"') in parameters
    restored = settings_from_a1111(parameters)
    assert (restored["tool"], restored["controlnet_strength"], restored["extra"]) == (
        "controlnet", 0.4, {"canny_low": 60.0, "canny_high": 120.0})


def test_schnell_base_passes_the_guidance_to_a_controlnet_that_embeds_it(tiny_schnell, controlnet_for_dev, tmp_path,
                                                                         posterior_mean):
    control = random_image(64, 64, seed=16)
    noise_path = make_noise(tmp_path, (1, 4, 8, 8), seed=17)
    ours = run_cli(
        "controlnet", "--path", tiny_schnell, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
        "--controlnet-image-path", save(control, tmp_path / "c.png"), "--controlnet-skip-canny", "--steps", 2,
        "--guidance", 6.0, "--controlnet-strength", 1.0, "--init-noise", noise_path, "--output", tmp_path / "o.png",
    )
    pipe = diffusers_pipeline(tiny_schnell, controlnet_for_dev)
    assert max_uint8_diff(ours, reference_image(pipe, control, noise_path, 64, 64, 2, 6.0, 1.0)) <= UINT8_TOLERANCE


def test_upscale_matches_diffusers_at_the_larger_size(tiny_dev, controlnet_for_dev, tmp_path, posterior_mean):
    small = random_image(32, 24, seed=18)
    noise_path = make_noise(tmp_path, (1, 4, 6, 8), seed=19)
    ours = run_cli(
        "upscale", "--path", tiny_dev, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
        "--image-path", save(small, tmp_path / "small.png"), "--upscale-factor", 2, "--steps", 2, "--guidance", 3.5,
        "--init-noise", noise_path, "--metadata", "--output", tmp_path / "big.png",
    )
    assert ours.size == (64, 48)
    metadata = json.loads((tmp_path / "big.json").read_text())
    recorded = metadata["request"]
    assert (recorded["width"], recorded["height"], recorded["controlnet_strength"]) == (64, 48, 0.6)
    assert metadata["controlnets"] == [{"controlnet": str(controlnet_for_dev), "type": "tile", "strength": 0.6,
                                        "preprocessor": None}]
    pipe = diffusers_pipeline(tiny_dev, controlnet_for_dev)
    expected = reference_image(pipe, small.resize((64, 48), Image.Resampling.LANCZOS), noise_path, 48, 64, 2, 3.5, 0.6)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE


def test_upscale_keeps_the_aspect_ratio_from_one_side(tiny_dev, controlnet_for_dev, tmp_path):
    small = save(random_image(40, 24, seed=20), tmp_path / "small.png")
    out = run_cli("upscale", "--path", tiny_dev, "--controlnet-path", controlnet_for_dev, "--prompt", PROMPT,
                  "--controlnet-image-path", small, "--width", 80, "--steps", 1, "--output", tmp_path / "o.png")
    assert out.size == (80, 48)


def test_bad_inputs_fail_with_a_clear_message_and_no_output(tiny_dev, controlnet_for_dev, tmp_path, capsys):
    from diffusers import FluxControlNetModel

    control = save(random_image(32, 32, seed=21), tmp_path / "c.png")
    common = ["--path", tiny_dev, "--prompt", PROMPT, "--steps", 1, "--height", 32, "--width", 32]
    config = {key: value for key, value in json.loads((controlnet_for_dev / "config.json").read_text()).items()
              if not key.startswith("_") and key != "out_channels"}
    other_text = tmp_path / "other-text"  # as wide as the base, made for text encodings 8 wider
    FluxControlNetModel(**{**config, "joint_attention_dim": config["joint_attention_dim"] + 8}).save_pretrained(
        other_text)
    cases = [
        (["controlnet", *common, "--controlnet-path", other_text, "--controlnet-image-path", control],
         f"reads text encodings {config['joint_attention_dim'] + 8} wide"),
        (["controlnet", *common, "--controlnet-path", tiny_dev / "transformer", "--controlnet-image-path", control],
         "is not a FLUX ControlNet"),
        (["controlnet", *common, "--controlnet-path", tmp_path, "--controlnet-image-path", control],
         "has no config.json"),
        (["controlnet", *common, "--controlnet-path", controlnet_for_dev], "needs a control image"),
        (["controlnet", *common, "--controlnet-path", controlnet_for_dev, "--controlnet-image-path",
          tmp_path / "missing.png"], "does not exist"),
        (["upscale", *common, "--controlnet-path", controlnet_for_dev], "needs an image to upscale"),
        (["controlnet", *common, "--controlnet-path", controlnet_for_dev, "--controlnet-image-path", control,
          "--canny-low", -1, "--canny-high", 100], "must not be negative"),
        (["upscale", "--path", tiny_dev, "--prompt", PROMPT, "--controlnet-path", controlnet_for_dev,
          "--image-path", control, "--upscale-factor", -1], "Upscale factor"),
        (["upscale", "--path", tiny_dev, "--prompt", PROMPT, "--controlnet-path", controlnet_for_dev,
          "--image-path", save(random_image(600, 32, seed=24), tmp_path / "wide.png"), "--upscale-factor", 8],
         "past the 4096-pixel limit"),
    ]
    for index, (args, message) in enumerate(cases):
        output = tmp_path / f"out_{index}.png"
        assert cli_main([str(a) for a in [*args, "--output", output]]) == 1, message
        assert message in capsys.readouterr().err
        assert not output.exists()


def test_an_fp8_controlnet_is_held_in_fp8_and_steers_as_its_dense_twin(tiny_dev, controlnet_for_dev, tmp_path):
    """A ControlNet stored in FP8 (ComfyUI users' *-fp8 files) keeps a byte per matrix weight once loaded, as the
    memory plan reads its headers, and makes the image its float32 twin (the same values) makes."""
    import shutil

    from safetensors.torch import load_file, save_file

    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest
    from mflux_core.resident import side_model_files
    from mflux_core.weights.resolve import resident_bytes_of

    twins = {}
    for name, to_fp8 in (("fp8", True), ("dense", False)):
        folder = shutil.copytree(controlnet_for_dev, tmp_path / name)
        for path in folder.glob("*.safetensors"):
            state = {key: value.to(torch.float8_e4m3fn) if value.ndim == 2 else value
                     for key, value in load_file(path).items()}
            save_file(state if to_fp8 else {key: value.float() for key, value in state.items()}, path)
        twins[name] = folder
    control = save(random_image(64, 64, seed=11), tmp_path / "control.png")
    images, held = {}, {}
    for name, folder in twins.items():
        manager = ModelManager()
        images[name] = manager.generate(GenerationRequest(
            tool="controlnet", model=str(tiny_dev), prompt=PROMPT, seed=3, steps=2, width=64, height=64,
            controlnet_image_path=str(control), controlnet_strength=0.8, extra={"controlnet_path": str(folder)})).image
        [held[name]] = [entry["bytes"] for entry in manager.status()["resident"] if entry["kind"] == "auxiliary"]
    assert max_uint8_diff(images["fp8"], images["dense"]) == 0
    assert held["fp8"] == resident_bytes_of(side_model_files(twins["fp8"]), 4) < 0.5 * held["dense"]


def test_control_latents_are_encoded_once_per_image_and_vae(tiny_dev, controlnet_for_dev, tmp_path):
    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest

    manager = ModelManager()
    request = GenerationRequest(tool="controlnet", model=str(tiny_dev), prompt=PROMPT, steps=1)
    model = manager.resident.model_for(manager.resolve(request), mx.float32)
    image = random_image(32, 32, seed=22)
    first = manager.encoded_image(model, image, 32, 32)
    assert manager.encoded_image(model, image.copy(), 32, 32) is first
    assert manager.encoded_image(model, image, 48, 48) is not first
    assert manager.encoded_image(model, random_image(32, 32, seed=23), 32, 32) is not first
