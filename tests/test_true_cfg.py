"""Negative prompt and true CFG (diffusers' `negative_prompt` and `true_cfg_scale`).

Whole images with true CFG equal the diffusers pipelines that have it (FluxPipeline, FluxImg2ImgPipeline,
FluxKontextPipeline, FluxControlNetPipeline; Redux through FluxPipeline) in float32, uint8 max |diff| <= 2,
and each test checks that the negative prompt really moves diffusers' image. Scale 1 or an empty negative
prompt leave the image exactly as it was; the flags, the page, presets and metadata carry both settings; tools
whose diffusers pipeline has no true CFG, and bad values, are refused with a sentence.
"""

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from mflux_core import cli
from mflux_core.errors import InvalidRequest
from mflux_core.metadata import a1111_parameters, request_from_metadata, request_metadata
from mflux_core.presets import parse_preset, preset_json, settings_from_request, validate_settings
from mflux_core.request import GenerationRequest
from mflux_core.tools.specs import TOOL_SPECS
from tests.fixtures.tiny_controlnet import build_tiny_controlnet, load_transformer
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.fixtures.tiny_redux import build_tiny_redux, load_redux_pipelines
from tests.parity import (
    UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, pack, random_image, run_cli, save,
)

PROMPT = "a red circle in the top left on a blue background"
NEGATIVE = "a green square, blurry"
SCALE = 3.0
CONDITIONING_EFFECT = 3 * UINT8_TOLERANCE  # the negative prompt must move diffusers' image more than this
TRUE_CFG_TOOLS = {"generate", "kontext", "controlnet", "upscale", "redux"}  # their diffusers pipelines have it


def true_cfg_flags(negative=NEGATIVE, scale=SCALE) -> list:
    return ["--negative-prompt", negative, "--true-cfg-scale", scale]


def check_parity(ours: Image.Image, reference) -> None:
    """`reference(**true_cfg)` is diffusers' image; with true CFG it equals ours and differs from without."""
    expected = reference(negative_prompt=NEGATIVE, true_cfg_scale=SCALE)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference()) > CONDITIONING_EFFECT


@pytest.fixture
def posterior_mean(monkeypatch):
    """diffusers samples the VAE posterior in some pipelines; our engine uses the mean."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mean)


# ----- parity with diffusers ------------------------------------------------------------------


@pytest.mark.parametrize("variant, height, width, steps, guidance",
                         [("dev", 64, 64, 3, 3.5), ("dev", 48, 80, 2, 5.0), ("schnell", 64, 32, 2, None)])
def test_text_to_image_with_true_cfg_matches_flux_pipeline(request, tmp_path, variant, height, width, steps,
                                                           guidance):
    folder = request.getfixturevalue(f"tiny_{variant}")
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=steps)
    args = ["generate", "--path", folder, "--prompt", PROMPT, *true_cfg_flags(), "--steps", steps, "--height",
            height, "--width", width, "--init-noise", noise_path, "--dtype", "float32", "--output", tmp_path / "o.png"]
    ours = run_cli(*args, *(["--guidance", guidance] if guidance is not None else []))
    pipe = load_diffusers_pipeline(folder)
    check_parity(ours, lambda **true_cfg: pipe(
        PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance or 3.5,
        latents=pack(np.load(noise_path)), output_type="pil", **true_cfg).images[0])


def test_image_to_image_with_true_cfg_matches_flux_img2img_pipeline(tiny_dev, tmp_path):
    import diffusers
    from diffusers.pipelines.flux import pipeline_flux_img2img

    height, width, steps, strength = 64, 48, 4, 0.4
    init = random_image(56, 80, seed=1)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=7)
    ours = run_cli(
        "generate", "--path", tiny_dev, "--prompt", PROMPT, *true_cfg_flags(), "--steps", steps, "--height", height,
        "--width", width, "--image-path", save(init, tmp_path / "init.png"), "--image-strength", strength,
        "--init-noise", noise_path, "--guidance", 4.0, "--resize-mode", "just resize", "--output", tmp_path / "o.png",
    )
    pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)

    def reference(**true_cfg):
        with deterministic_diffusers(pipeline_flux_img2img, np.load(noise_path)):
            return pipe(PROMPT, image=init, height=height, width=width, strength=1 - strength,
                        num_inference_steps=steps, guidance_scale=4.0, output_type="pil", **true_cfg).images[0]

    check_parity(ours, reference)


def test_kontext_with_true_cfg_matches_flux_kontext_pipeline(tiny_kontext, tmp_path):
    import diffusers

    height, width = 48, 64
    reference_image = random_image(80, 40, seed=8)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=9)
    ours = run_cli(
        "kontext", "--path", tiny_kontext, "--prompt", PROMPT, *true_cfg_flags(), "--image-path",
        save(reference_image, tmp_path / "r.png"), "--steps", 3, "--height", height, "--width", width,
        "--guidance", 2.5, "--init-noise", noise_path, "--output", tmp_path / "o.png",
    )
    pipe = diffusers.FluxKontextPipeline.from_pretrained(tiny_kontext, torch_dtype=torch.float32, local_files_only=True)
    check_parity(ours, lambda **true_cfg: pipe(
        image=reference_image, prompt=PROMPT, height=height, width=width, num_inference_steps=3, guidance_scale=2.5,
        latents=pack(np.load(noise_path)), max_area=height * width, _auto_resize=False, output_type="pil",
        **true_cfg).images[0])


def test_controlnet_with_true_cfg_matches_flux_controlnet_pipeline(tiny_dev, tmp_path, posterior_mean):
    """The ControlNet runs once a step, on the prompt; both transformer passes take its residuals."""
    from diffusers import FluxControlNetModel, FluxControlNetPipeline

    controlnet_folder = build_tiny_controlnet(tmp_path / "controlnet", load_transformer(tiny_dev), num_layers=1,
                                              num_single_layers=1)
    height, width, steps = 64, 64, 3
    control = random_image(width, height, seed=11)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=12)
    ours = run_cli(
        "controlnet", "--path", tiny_dev, "--controlnet-path", controlnet_folder, "--prompt", PROMPT,
        *true_cfg_flags(), "--controlnet-image-path", save(control, tmp_path / "c.png"), "--controlnet-skip-canny",
        "--controlnet-strength", 0.8, "--steps", steps, "--height", height, "--width", width, "--guidance", 4.0,
        "--init-noise", noise_path, "--output", tmp_path / "o.png",
    )
    controlnet = FluxControlNetModel.from_pretrained(controlnet_folder, torch_dtype=torch.float32)
    pipe = FluxControlNetPipeline.from_pretrained(tiny_dev, controlnet=controlnet, torch_dtype=torch.float32,
                                                  local_files_only=True)
    check_parity(ours, lambda **true_cfg: pipe(
        PROMPT, control_image=control, height=height, width=width, num_inference_steps=steps, guidance_scale=4.0,
        controlnet_conditioning_scale=0.8, latents=pack(np.load(noise_path)), output_type="pil",
        **true_cfg).images[0])


def test_redux_with_true_cfg_matches_the_prior_redux_and_flux_pipelines(tiny_dev, tmp_path):
    """The negative prompt's text is its T5 tokens alone, shorter than the prompt's with the Redux tokens."""
    redux_folder = build_tiny_redux(tmp_path / "redux", text_dim=32)
    height, width, steps = 64, 64, 3
    image = random_image(48, 40, seed=1)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=2)
    ours = run_cli(
        "redux", "--path", tiny_dev, "--redux-path", redux_folder, "--redux-image-paths", save(image, tmp_path / "a.png"),
        "--prompt", PROMPT, *true_cfg_flags(), "--steps", steps, "--height", height, "--width", width,
        "--init-noise", noise_path, "--output", tmp_path / "o.png",
    )
    pipe, prior = load_redux_pipelines(tiny_dev, redux_folder)
    prior_output = prior(image=Image.open(tmp_path / "a.png").convert("RGB"), prompt=PROMPT)
    check_parity(ours, lambda **true_cfg: pipe(
        prompt_embeds=prior_output.prompt_embeds, pooled_prompt_embeds=prior_output.pooled_prompt_embeds,
        height=height, width=width, num_inference_steps=steps, guidance_scale=2.5, latents=pack(np.load(noise_path)),
        output_type="pil", **true_cfg).images[0])


# ----- off changes nothing ----------------------------------------------------------------------


def test_scale_one_or_an_empty_negative_prompt_gives_exactly_the_image_without_them(tiny_dev, tmp_path):
    common = ["generate", "--path", tiny_dev, "--prompt", PROMPT, "--steps", 2, "--height", 32, "--width", 32,
              "--seed", 3, "--guidance", 3.5]
    plain = run_cli(*common, "--output", tmp_path / "plain.png")
    scale_one = run_cli(*common, *true_cfg_flags(scale=1), "--output", tmp_path / "scale-one.png")
    empty = run_cli(*common, *true_cfg_flags(negative=" "), "--output", tmp_path / "empty.png")
    on = run_cli(*common, *true_cfg_flags(), "--output", tmp_path / "on.png")
    assert max_uint8_diff(plain, scale_one) == 0 and max_uint8_diff(plain, empty) == 0
    assert max_uint8_diff(plain, on) > CONDITIONING_EFFECT


def test_true_cfg_is_on_only_above_one_with_a_negative_prompt():
    assert GenerationRequest(negative_prompt="x", true_cfg_scale=1.5).uses_true_cfg
    assert not GenerationRequest(negative_prompt="x").uses_true_cfg
    assert not GenerationRequest(negative_prompt=" \n", true_cfg_scale=4.0).uses_true_cfg
    assert not GenerationRequest().uses_true_cfg


# ----- the settings everywhere ------------------------------------------------------------------


def test_cli_flags_reach_the_request():
    parser = cli.build_parser()
    args = parser.parse_args(["kontext", "-p", "x", "--negative-prompt", "blur", "--true-cfg-scale", "2.5"])
    request = cli.base_request(args)
    assert (request.negative_prompt, request.true_cfg_scale) == ("blur", 2.5)
    plain = cli.base_request(parser.parse_args(["generate", "-p", "x"]))
    assert (plain.negative_prompt, plain.true_cfg_scale) == ("", 1.0)


def test_the_settings_survive_a_preset_and_metadata_round_trip():
    request = GenerationRequest(prompt="a fox", negative_prompt="blurry, text", true_cfg_scale=4.0, seed=2)
    text = json.dumps({"format": 1, "name": "t", "settings": settings_from_request(request)})
    preset = parse_preset(preset_json(parse_preset(text)))
    assert preset.settings["negative_prompt"] == "blurry, text" and preset.settings["true_cfg_scale"] == 4.0
    assert request_from_metadata(request_metadata(request)) == request


def test_a1111_parameters_have_a_negative_prompt_line_and_the_cfg_scale():
    on = a1111_parameters(GenerationRequest(prompt="a fox", negative_prompt="blurry", true_cfg_scale=4.0, steps=3))
    prompt, negative, line = on.split("\n")
    assert (prompt, negative) == ("a fox", "Negative prompt: blurry") and "CFG scale: 4.0," in line
    off = a1111_parameters(GenerationRequest(prompt="a fox", steps=3))
    assert "Negative prompt" not in off and "CFG scale: 1," in off and len(off.split("\n")) == 2


@pytest.mark.parametrize("changes, expected", [
    ({"true_cfg_scale": float("nan")}, "True CFG scale must be a finite number, not nan."),
    ({"true_cfg_scale": float("inf")}, "True CFG scale must be a finite number, not inf."),
    ({"true_cfg_scale": -2.0}, "True CFG scale -2.0 is out of range: use 1 (off) to 20."),
    ({"true_cfg_scale": 0.5}, "True CFG scale 0.5 is out of range: use 1 (off) to 20."),
    ({"true_cfg_scale": 25}, "True CFG scale 25 is out of range: use 1 (off) to 20."),
    ({"true_cfg_scale": "3"}, "True CFG scale must be a number, not '3'."),
    ({"negative_prompt": None}, "The negative prompt must be text, not None."),
    ({"negative_prompt": "x" * 20_001}, "The negative prompt is 20,001 characters long; the limit is 20,000."),
])
def test_bad_values_are_refused_with_a_sentence(changes, expected):
    with pytest.raises(InvalidRequest) as error:
        GenerationRequest(prompt="x", **changes).validated()
    assert str(error.value) == expected


def test_exactly_the_tools_whose_diffusers_pipeline_has_true_cfg_take_it():
    assert {name for name, spec in TOOL_SPECS.items() if spec.true_cfg} == TRUE_CFG_TOOLS
    for tool in set(TOOL_SPECS) - TRUE_CFG_TOOLS:
        for changes in ({"negative_prompt": "x"}, {"true_cfg_scale": 2.0}):
            with pytest.raises(InvalidRequest, match=f"The {tool} tool has no true CFG .*leave the negative prompt "
                                                     "empty and the true CFG scale at 1"):
                GenerationRequest(tool=tool, prompt="x", **changes).validated()
    GenerationRequest(tool="fill", prompt="x", negative_prompt="", true_cfg_scale=1.0).validated()


def test_the_cli_refuses_true_cfg_on_fill_and_writes_nothing(tiny_fill, tmp_path, capsys):
    image = save(random_image(32, 32, 1), tmp_path / "i.png")
    assert cli.main(["fill", "--path", str(tiny_fill), "--prompt", "x", "--image-path", str(image),
                     "--masked-image-path", str(image), "--negative-prompt", "blur", "--true-cfg-scale", "3",
                     "--steps", "1", "--output", str(tmp_path / "o.png")]) == 1
    assert "The fill tool has no true CFG" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_concept_attention_refuses_true_cfg():
    from mflux_core.concept.run import concept_request

    with pytest.raises(InvalidRequest, match="Concept attention maps one transformer pass a step"):
        concept_request(GenerationRequest(prompt="x", negative_prompt="y", true_cfg_scale=2.0))
    assert concept_request(GenerationRequest(prompt="x", negative_prompt="y")).tool == "generate"


def test_the_page_carries_the_settings_on_panels_of_tools_with_true_cfg():
    from webui.panels import generate
    from webui.widgets import shared_settings, shared_values

    values = {"model": "tiny", "prompt": "a fox", "seed": 5, "random_seed": False, "batch_count": 1, "steps": "",
              "guidance": "", "width": 64, "height": 64, "quantize": "off", "vae_tiling": False,
              "negative_prompt": "blurry", "true_cfg_scale": 3.5}
    settings = validate_settings(generate.settings_from_values(values))
    assert (settings["negative_prompt"], settings["true_cfg_scale"]) == ("blurry", 3.5)
    restored = generate.values_from_settings(settings)
    assert (restored["negative_prompt"], restored["true_cfg_scale"]) == ("blurry", 3.5)
    without = {k: v for k, v in values.items() if k not in ("negative_prompt", "true_cfg_scale")}
    assert "true_cfg_scale" not in shared_settings(without)  # e.g. the Fill panel: it has no true CFG controls
    with pytest.raises(InvalidRequest, match="The true CFG scale must be a finite number"):
        shared_settings({**values, "true_cfg_scale": float("nan")})
    assert shared_values({"prompt": "x"}) == {"prompt": "x", "styles": []}  # a prompt with no styles empties them


def test_the_flags_are_documented_in_the_cli_help():
    parser = cli.build_parser()
    tool_parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    text = tool_parser.format_help()
    assert "--negative-prompt" in text and "--true-cfg-scale" in text


# ----- memory -------------------------------------------------------------------------------------


def test_the_two_passes_run_one_after_another_so_the_step_peak_is_one_pass():
    """The memory plan counts one transformer call a step (memory.transformer_step_bytes); true CFG keeps that."""
    import mlx.core as mx

    from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig
    from mflux_core.sampling.conditioning import Conditioning, NegativePrompt
    from mflux_core.sampling.latents import image_position_ids
    from mflux_core.sampling.loop import denoise

    config = FluxTransformerConfig(in_channels=64, out_channels=64, num_layers=1, num_single_layers=1,
                                   attention_head_dim=64, num_attention_heads=8, joint_attention_dim=256,
                                   pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(8, 28, 28))
    model = FluxTransformer(config)
    ids = image_position_ids(48, 48)
    latents = mx.random.normal((1, ids.shape[0], config.in_channels))

    def embeddings():
        return mx.random.normal((1, 512, config.joint_attention_dim)), mx.random.normal((1, config.pooled_projection_dim))

    def step_peak(negative: NegativePrompt | None) -> int:
        conditioning = Conditioning(*embeddings(), guidance=3.5, negative=negative)
        mx.eval(model.parameters(), latents, conditioning.text, negative.text if negative else [])
        mx.clear_cache()
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(next(denoise(model, latents, np.array([1.0, 0.5]), conditioning, ids))[1])
        return mx.get_peak_memory() - before

    one_pass = step_peak(None)
    assert step_peak(NegativePrompt(*embeddings(), scale=SCALE)) < 1.1 * one_pass
