"""Samplers (euler, euler_a, heun, dpm++2m, dpm++2m_sde, unipc) and schedules (simple, beta, karras, exponential).

The sigma arrays equal diffusers' FlowMatchEulerDiscreteScheduler.set_timesteps (as FluxPipeline calls it, with
use_karras_sigmas / use_exponential_sigmas / use_beta_sigmas) bit for bit. Whole images equal diffusers' Flux
pipelines in float32 (uint8 max |diff| <= 2) with the scheduler that has the sampler's step:
FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, DPMSolverMultistepScheduler (use_flow_sigmas,
flow_prediction, dpmsolver++ or sde-dpmsolver++, order 2) or UniPCMultistepScheduler (use_flow_sigmas,
flow_prediction, bh2, order 2). Heun's, DPM's and UniPC's set_timesteps take no FLUX sigmas or mu, so the reference
schedulers here take their sigmas from FlowMatchEulerDiscreteScheduler (the schedule every sampler walks) and lay
them out as their own set_timesteps does; each test also checks that its sampler and schedule really move
diffusers' image away from plain Euler.
"""

import argparse
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.pipelines.flux import pipeline_flux_fill, pipeline_flux_img2img
from diffusers.schedulers import scheduling_dpmsolver_multistep as dpm_scheduler_module
from diffusers.schedulers import scheduling_flow_match_euler_discrete as euler_scheduler_module

from mflux_core.sampling.samplers import step_noise
from mflux_core.sampling.schedule import SCHEDULES, flux_sigmas, resolution_shift_mu
from tests.fixtures.tiny_flux import load_diffusers_pipeline
from tests.parity import (
    UINT8_TOLERANCE, deterministic_diffusers, make_noise, max_uint8_diff, pack, random_image, run_cli, save,
)

PROMPT = "a red circle in the top left on a blue background"
SCHEDULE_FLAGS = {"simple": {}, "karras": {"use_karras_sigmas": True},
                  "exponential": {"use_exponential_sigmas": True}, "beta": {"use_beta_sigmas": True}}
SAMPLER_EFFECT = 2 * UINT8_TOLERANCE  # a sampler or schedule must move diffusers' image more than this


# ----- the sigma arrays -------------------------------------------------------------------------


def flow_schedule(config, schedule: str) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler.from_config(config, **SCHEDULE_FLAGS[schedule])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("config", [
    {"use_dynamic_shifting": True, "shift": 3.0},  # dev
    {"shift": 1.0},  # schnell
    {"shift": 3.0},
    {"use_dynamic_shifting": True, "time_shift_type": "linear"},
    {"use_dynamic_shifting": True, "shift_terminal": 0.1},
])
def test_sigmas_equal_flow_match_euler_set_timesteps(schedule, config):
    assert set(SCHEDULE_FLAGS) == set(SCHEDULES)
    for steps in (1, 3, 28):
        for tokens in (16, 4096):
            reference = flow_schedule(FlowMatchEulerDiscreteScheduler(**config).config, schedule)
            mu = resolution_shift_mu(tokens, dict(reference.config))
            reference.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
            ours = flux_sigmas(steps, tokens, dict(reference.config), schedule)
            assert ours.dtype == np.float32
            assert np.array_equal(ours, reference.sigmas.numpy(), equal_nan=True), (steps, tokens)


def test_the_schedules_differ_and_keep_the_first_and_last_sigma():
    config = {"use_dynamic_shifting": True}
    simple = flux_sigmas(6, 1024, config)
    for schedule in set(SCHEDULES) - {"simple"}:
        other = flux_sigmas(6, 1024, config, schedule)
        assert other[0] == simple[0] and other[-2] == simple[-2] and other[-1] == 0
        assert np.abs(other - simple).max() > 0.02 and np.all(np.diff(other) < 0)


# ----- diffusers schedulers that walk the FLUX schedule ----------------------------------------


class FlowHeun(FlowMatchHeunDiscreteScheduler):
    """diffusers' Heun step on the FLUX sigmas (its own set_timesteps takes neither sigmas nor mu)."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        self.flow.set_timesteps(sigmas=sigmas, mu=mu)
        sigmas, timesteps = self.flow.sigmas, self.flow.timesteps
        # Heun's own layout: every sigma but the first and the final 0 twice (an Euler step, then the correction)
        self.timesteps = torch.cat([timesteps[:1], timesteps[1:].repeat_interleave(2)])
        self.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        self.prev_derivative = self.dt = self._step_index = self._begin_index = None


class FlowSigmas:
    """A multistep scheduler of diffusers (use_flow_sigmas) on the FLUX sigmas, with the flow forward process
    img2img needs."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None):
        if sigmas is None:  # FluxPipeline passes none to a scheduler with use_flow_sigmas
            sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        self.flow.set_timesteps(sigmas=sigmas, mu=mu)
        self.sigmas, self.timesteps = self.flow.sigmas, self.flow.timesteps
        self.num_inference_steps = len(self.timesteps)
        self.model_outputs = [None] * self.config.solver_order
        self.lower_order_nums = 0
        self.last_sample = None
        self._step_index = self._begin_index = None

    def scale_noise(self, sample, timestep, noise):
        sigma = self.sigmas[self.begin_index]
        return sigma * noise + (1.0 - sigma) * sample


class FlowDpm(FlowSigmas, DPMSolverMultistepScheduler):
    pass


class FlowUniPC(FlowSigmas, UniPCMultistepScheduler):
    pass


def reference_scheduler(base_config, sampler: str, schedule: str):
    flow = flow_schedule(base_config, schedule)
    if sampler == "euler":
        return flow
    if sampler == "euler_a":
        return FlowMatchEulerDiscreteScheduler.from_config(flow.config, stochastic_sampling=True)
    if sampler == "heun":
        scheduler = FlowHeun()
    elif sampler == "unipc":
        scheduler = FlowUniPC(use_flow_sigmas=True, prediction_type="flow_prediction", solver_order=2,
                              solver_type="bh2", predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    else:
        algorithm = "sde-dpmsolver++" if sampler == "dpm++2m_sde" else "dpmsolver++"
        scheduler = FlowDpm(use_flow_sigmas=True, prediction_type="flow_prediction", algorithm_type=algorithm,
                            solver_order=2, lower_order_final=True, final_sigmas_type="zero")
    scheduler.flow = flow
    return scheduler


@contextmanager
def our_step_noise(seed: int, steps: int):
    """diffusers' Euler a and DPM++ 2M SDE draw each step's noise from torch's generator: hand them ours, step by
    step (the noise is the sampler's input, as --init-noise is the first step's)."""
    modules, step = (euler_scheduler_module, dpm_scheduler_module), iter(range(steps))
    saved = [module.randn_tensor for module in modules]

    def drawn(shape, **options):
        return torch.from_numpy(np.array(step_noise(seed, steps, next(step), tuple(shape))))

    for module in modules:
        module.randn_tensor = drawn
    try:
        yield
    finally:
        for module, original in zip(modules, saved):
            module.randn_tensor = original


def check_parity(ours, reference, sampler: str, schedule: str) -> None:
    """`reference(sampler, schedule)` is diffusers' image; ours equals it, and it differs from plain Euler's."""
    expected = reference(sampler, schedule)
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    assert max_uint8_diff(expected, reference("euler", "simple")) > SAMPLER_EFFECT


def sampler_flags(sampler: str, schedule: str) -> list:
    return ["--sampler", sampler, "--schedule", schedule]


# ----- whole images -------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, sampler, schedule, steps", [
    ("dev", "euler", "karras", 5), ("dev", "heun", "beta", 4), ("dev", "dpm++2m", "simple", 5),
    ("schnell", "dpm++2m", "exponential", 4), ("dev", "euler_a", "simple", 4), ("dev", "dpm++2m_sde", "karras", 5),
    ("dev", "unipc", "simple", 5), ("schnell", "unipc", "beta", 4), ("dev", "unipc", "karras", 3),
])
def test_text_to_image_matches_flux_pipeline(request, tmp_path, variant, sampler, schedule, steps):
    folder = request.getfixturevalue(f"tiny_{variant}")
    height, width, seed = 64, 48, 7
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=steps)
    ours = run_cli("generate", "--path", folder, "--prompt", PROMPT, *sampler_flags(sampler, schedule), "--steps",
                   steps, "--height", height, "--width", width, "--guidance", 4.0, "--init-noise", noise_path,
                   "--seed", seed, "--output", tmp_path / "o.png")
    pipe = load_diffusers_pipeline(folder)
    base = pipe.scheduler.config

    def reference(sampler, schedule):
        pipe.scheduler = reference_scheduler(base, sampler, schedule)
        with our_step_noise(seed, steps):
            return pipe(PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=4.0,
                        latents=pack(np.load(noise_path)), output_type="pil").images[0]

    check_parity(ours, reference, sampler, schedule)


def test_a_model_whose_scheduler_config_asks_for_karras_sigmas_runs_them_as_diffusers_does(tiny_dev, tmp_path):
    """A fine-tune may ship use_karras_sigmas in its scheduler_config.json: without --schedule it runs them (and
    records them), as FluxPipeline does with that folder; an explicit --schedule still wins."""
    import json

    from PIL import Image

    folder = tmp_path / "karras-dev"
    folder.mkdir()
    for part in tiny_dev.iterdir():
        (folder / part.name).symlink_to(part)
    (folder / "scheduler").unlink()
    (folder / "scheduler").mkdir()
    config = json.loads((tiny_dev / "scheduler" / "scheduler_config.json").read_text())
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "use_karras_sigmas": True}))
    height, width, steps = 64, 48, 5
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=steps)
    common = ["--prompt", PROMPT, "--steps", steps, "--height", height, "--width", width, "--guidance", 4.0,
              "--init-noise", noise_path, "--seed", 7]
    ours = run_cli("generate", "--path", folder, *common, "--output", tmp_path / "o.png")
    pipe = load_diffusers_pipeline(folder)
    expected = pipe(PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=4.0,
                    latents=pack(np.load(noise_path)), output_type="pil").images[0]
    assert max_uint8_diff(ours, expected) <= UINT8_TOLERANCE
    with Image.open(tmp_path / "o.png") as saved:
        assert json.loads(saved.info["mflux_studio"])["request"]["schedule"] == "karras"
    beta = run_cli("generate", "--path", folder, *common, "--schedule", "beta", "--output", tmp_path / "b.png")
    assert max_uint8_diff(beta, expected) > SAMPLER_EFFECT


@pytest.mark.parametrize("sampler, schedule, steps",
                         [("heun", "karras", 4), ("dpm++2m", "beta", 5), ("unipc", "beta", 5)])
def test_image_to_image_matches_flux_img2img_pipeline(tiny_dev, tmp_path, sampler, schedule, steps):
    """Image strength 0.4 starts part-way; Heun and DPM++ 2M start fresh there (first order), as diffusers."""
    import diffusers

    height, width, strength = 48, 64, 0.4
    init = random_image(72, 56, seed=3)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=4)
    ours = run_cli("generate", "--path", tiny_dev, "--prompt", PROMPT, *sampler_flags(sampler, schedule), "--steps",
                   steps, "--height", height, "--width", width, "--image-path", save(init, tmp_path / "i.png"),
                   "--image-strength", strength, "--init-noise", noise_path, "--guidance", 4.0,
                   "--resize-mode", "just resize", "--output", tmp_path / "o.png")  # diffusers stretches
    pipe = diffusers.FluxImg2ImgPipeline.from_pretrained(tiny_dev, torch_dtype=torch.float32, local_files_only=True)
    base, get_timesteps = pipe.scheduler.config, pipe.get_timesteps
    # diffusers' img2img counts the scheduler's timesteps as steps: Heun lays out 2N - 1 of them for N steps
    pipe.get_timesteps = lambda n, *rest: get_timesteps((n + 1) // pipe.scheduler.order, *rest)

    def reference(sampler, schedule):
        pipe.scheduler = reference_scheduler(base, sampler, schedule)
        with deterministic_diffusers(pipeline_flux_img2img, np.load(noise_path)):
            return pipe(PROMPT, image=init, height=height, width=width, strength=1 - strength,
                        num_inference_steps=steps, guidance_scale=4.0, output_type="pil").images[0]

    check_parity(ours, reference, sampler, schedule)


def test_fill_matches_flux_fill_pipeline_with_dpm(tiny_fill, tmp_path):
    import diffusers

    height, width, steps = 48, 48, 3
    image, mask = random_image(width, height, seed=5), random_image(width, height, seed=6).convert("L")
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=7)
    ours = run_cli("fill", "--path", tiny_fill, "--prompt", PROMPT, *sampler_flags("dpm++2m", "karras"),
                   "--image-path", save(image, tmp_path / "i.png"),
                   "--masked-image-path", save(mask, tmp_path / "m.png"), "--steps", steps, "--guidance", 30.0, "--init-noise", noise_path, "--output", tmp_path / "o.png")
    pipe = diffusers.FluxFillPipeline.from_pretrained(tiny_fill, torch_dtype=torch.float32, local_files_only=True)
    base = pipe.scheduler.config

    def reference(sampler, schedule):
        pipe.scheduler = reference_scheduler(base, sampler, schedule)
        with deterministic_diffusers(pipeline_flux_fill, np.load(noise_path)):
            return pipe(PROMPT, image=image, mask_image=mask, height=height, width=width, num_inference_steps=steps,
                        guidance_scale=30.0, output_type="pil").images[0]

    check_parity(ours, reference, "dpm++2m", "karras")


def test_kontext_with_true_cfg_matches_flux_kontext_pipeline_with_heun(tiny_kontext, tmp_path):
    """Heun's two evaluations a step each run both true CFG passes."""
    import diffusers

    height, width, steps = 48, 64, 3
    reference_image = random_image(80, 40, seed=8)
    noise_path = make_noise(tmp_path, (1, 4, height // 8, width // 8), seed=9)
    ours = run_cli("kontext", "--path", tiny_kontext, "--prompt", PROMPT, *sampler_flags("heun", "simple"),
                   "--negative-prompt", "a green square", "--true-cfg-scale", 3.0, "--image-path",
                   save(reference_image, tmp_path / "r.png"), "--steps", steps, "--height", height, "--width", width,
                   "--guidance", 2.5, "--init-noise", noise_path, "--output", tmp_path / "o.png")
    pipe = diffusers.FluxKontextPipeline.from_pretrained(tiny_kontext, torch_dtype=torch.float32,
                                                         local_files_only=True)
    base = pipe.scheduler.config

    def reference(sampler, schedule):
        pipe.scheduler = reference_scheduler(base, sampler, schedule)
        return pipe(image=reference_image, prompt=PROMPT, negative_prompt="a green square", true_cfg_scale=3.0,
                    height=height, width=width, num_inference_steps=steps, guidance_scale=2.5,
                    latents=pack(np.load(noise_path)), max_area=height * width, _auto_resize=False,
                    output_type="pil").images[0]

    check_parity(ours, reference, "heun", "simple")


# ----- the loop: evaluations, steps, Stop ---------------------------------------------------------


class CountingTransformer:
    """A real FluxTransformer that counts its calls (the loop sees the same object otherwise)."""

    def __init__(self, transformer):
        self.transformer, self.calls = transformer, 0

    def rope_tables(self, img_ids, txt_ids):
        return self.transformer.rope_tables(img_ids, txt_ids)

    def __call__(self, *inputs, **options):
        self.calls += 1
        return self.transformer(*inputs, **options)


@pytest.mark.parametrize("sampler, calls_per_pass", [("euler", 4), ("euler_a", 4), ("heun", 7), ("dpm++2m", 4),
                                                      ("dpm++2m_sde", 4), ("unipc", 4)])
def test_heun_evaluates_twice_a_step_but_the_last_and_every_sampler_yields_once_a_step(sampler, calls_per_pass):
    import mlx.core as mx

    from mflux_core.models.transformer import FluxTransformer, FluxTransformerConfig
    from mflux_core.sampling.conditioning import Conditioning, NegativePrompt
    from mflux_core.sampling.latents import image_position_ids
    from mflux_core.sampling.loop import denoise
    from mflux_core.sampling.samplers import new_sampler

    config = FluxTransformerConfig(in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    ids = image_position_ids(4, 4)
    latents = mx.random.normal((1, ids.shape[0], 16), key=mx.random.key(0))
    sigmas = flux_sigmas(4, ids.shape[0], {"use_dynamic_shifting": True})
    for negative, passes in ((None, 1), (NegativePrompt(mx.zeros((1, 3, 32)), mx.zeros((1, 16)), 2.0), 2)):
        model = CountingTransformer(FluxTransformer(config))
        conditioning = Conditioning(mx.ones((1, 5, 32)), mx.ones((1, 16)), guidance=3.5, negative=negative)
        steps = [i for i, _ in denoise(model, latents, sigmas, conditioning, ids, 0, new_sampler(sampler))]
        assert steps == [0, 1, 2, 3] and model.calls == calls_per_pass * passes
        model.calls = 0  # img2img: from step 2, Heun starts afresh with an Euler predictor
        steps = [i for i, _ in denoise(model, latents, sigmas, conditioning, ids, 2, new_sampler(sampler))]
        assert steps == [2, 3] and model.calls == (3 if sampler == "heun" else 2) * passes


def test_heun_reports_the_users_steps_and_stop_keeps_its_word(tiny_dev, tmp_path):
    from mflux_core.errors import Cancelled
    from mflux_core.events import Step
    from mflux_core.manager import ModelManager
    from mflux_core.request import GenerationRequest

    manager = ModelManager(models_dir=tmp_path)
    request = GenerationRequest(model=str(tiny_dev), prompt=PROMPT, steps=3, width=32, height=32, sampler="heun",
                                schedule="karras", dtype="float32")
    reported = []
    result = manager.generate(request, lambda event: reported.append(event) if isinstance(event, Step) else None)
    assert [(step.step, step.total) for step in reported] == [(1, 3), (2, 3), (3, 3)]
    assert result.request.sampler == "heun" and '"sampler": "heun"' in result.text_chunks["mflux_studio"]
    assert "Sampler: Heun, Schedule type: Karras" in result.text_chunks["parameters"]
    stop_after = []
    with pytest.raises(Cancelled, match="Stopped after step 2 of 3"):
        manager.generate(request, lambda event: stop_after.append(event) if isinstance(event, Step) else None,
                         cancelled=lambda: len(stop_after) >= 1)
    assert len(stop_after) == 1


# ----- the settings everywhere ------------------------------------------------------------------


def test_defaults_and_bad_values():
    from mflux_core.errors import InvalidRequest
    from mflux_core.request import GenerationRequest

    request = GenerationRequest(prompt="x").validated()
    assert (request.sampler, request.schedule) == ("euler", "simple")
    for changes, expected in (({"sampler": "ddim"},
                               "The sampler must be one of euler, euler_a, heun, dpm++2m, dpm++2m_sde, unipc, not "
                               "'ddim'."),
                              ({"schedule": "Karras"}, "The schedule must be one of simple, beta, karras, "
                                                       "exponential, not 'Karras'.")):
        with pytest.raises(InvalidRequest) as error:
            GenerationRequest(prompt="x", **changes).validated()
        assert str(error.value) == expected


def test_every_denoising_command_takes_the_flags_and_they_reach_the_request():
    from mflux_core import cli
    from mflux_core.tools.specs import TOOL_SPECS

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for tool in (*TOOL_SPECS, "concept", "concept-from-image"):
        text = commands[tool].format_help()
        assert "--sampler" in text and "--schedule" in text, tool
    request = cli.base_request(parser.parse_args(["fill", "-p", "x", "--sampler", "dpm++2m", "--schedule", "beta"]))
    assert (request.sampler, request.schedule) == ("dpm++2m", "beta")
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "-p", "x", "--sampler", "ddim"])


def test_metadata_presets_and_a1111_text_carry_them():
    import json

    from mflux_core.metadata import a1111_parameters, request_from_metadata, request_metadata
    from mflux_core.presets import parse_preset, preset_json, settings_from_a1111, settings_from_request
    from mflux_core.request import GenerationRequest

    request = GenerationRequest(prompt="a fox", steps=9, seed=2, sampler="dpm++2m", schedule="karras")
    assert request_from_metadata(json.loads(json.dumps(request_metadata(request)))) == request
    preset = parse_preset(preset_json(parse_preset(json.dumps({"name": "t",
                                                               "settings": settings_from_request(request)}))))
    assert (preset.settings["sampler"], preset.settings["schedule"]) == ("dpm++2m", "karras")
    text = a1111_parameters(request)
    assert "Steps: 9, Sampler: DPM++ 2M, Schedule type: Karras," in text
    read = settings_from_a1111(text)
    assert (read["sampler"], read["schedule"], read["steps"]) == ("dpm++2m", "karras", 9)
    assert "Sampler: Euler, Schedule type: Simple," in a1111_parameters(GenerationRequest(prompt="x"))
    old_style = settings_from_a1111("a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 64x64")
    assert (old_style["sampler"], old_style["schedule"]) == ("dpm++2m", "karras")
    theirs = settings_from_a1111("a cat\nSteps: 20, Sampler: DPM++ SDE, Schedule type: Align Your Steps, Seed: 1")
    assert "sampler" not in theirs and "schedule" not in theirs
    assert settings_from_a1111("a cat\nSteps: 20, Sampler: Euler a, Seed: 1")["sampler"] == "euler_a"  # A1111's default


def test_euler_a_replays_from_its_seed_and_its_step_noise_follows_the_seed(tiny_dev, tmp_path):
    noise_path = make_noise(tmp_path, (1, 4, 6, 6), seed=1)

    def image(seed: int, name: str):
        return run_cli("generate", "--path", tiny_dev, "--prompt", PROMPT, "--sampler", "euler_a", "--steps", 3,
                       "--height", 48, "--width", 48, "--init-noise", noise_path, "--seed", seed,
                       "--output", tmp_path / name)

    first, again, other = image(7, "a.png"), image(7, "b.png"), image(8, "c.png")
    assert max_uint8_diff(first, again) == 0 and max_uint8_diff(first, other) > SAMPLER_EFFECT


def test_plot_axes_take_names_or_a1111_labels():
    from mflux_core.errors import InvalidRequest
    from mflux_core.request import GenerationRequest
    from mflux_core.xyz import parse_axis_flag, plot_cells

    samplers, schedules = parse_axis_flag("sampler=Euler, DPM++ 2M, heun"), parse_axis_flag("schedule=karras,Beta")
    assert samplers.values == ("euler", "dpm++2m", "heun") and schedules.values == ("karras", "beta")
    assert [samplers.value_label(v) for v in samplers.values] == ["Euler", "DPM++ 2M", "Heun"]
    cells = plot_cells(GenerationRequest(prompt="x"), [samplers, schedules])
    assert {(c.request.sampler, c.request.schedule) for c in cells} == {
        (a, b) for a in samplers.values for b in schedules.values}
    with pytest.raises(InvalidRequest,
                       match="The Sampler axis: 'ddim' is not one of Euler, Euler a, Heun, DPM\\+\\+ 2M, "
                             "DPM\\+\\+ 2M SDE, UniPC."):
        parse_axis_flag("sampler=euler, ddim")


def test_the_page_controls_carry_them():
    from webui.panels import generate
    from webui.widgets import shared_values

    values = {"model": "tiny", "prompt": "a fox", "seed": 5, "random_seed": False, "batch_count": 1, "steps": "",
              "guidance": "", "width": 64, "height": 64, "quantize": "off", "vae_tiling": False,
              "sampler": "heun", "schedule": "beta"}
    settings = generate.settings_from_values(values)
    assert (settings["sampler"], settings["schedule"]) == ("heun", "beta")
    assert {k: shared_values(settings)[k] for k in ("sampler", "schedule")} == {"sampler": "heun", "schedule": "beta"}


def test_concept_attention_refuses_heun():
    from mflux_core.concept.run import concept_request
    from mflux_core.errors import InvalidRequest
    from mflux_core.request import GenerationRequest

    with pytest.raises(InvalidRequest, match="Heun takes two; choose Euler, Euler a, DPM\\+\\+ 2M, DPM\\+\\+ 2M SDE "
                                             "or UniPC"):
        concept_request(GenerationRequest(prompt="x", sampler="heun"))
    assert concept_request(GenerationRequest(prompt="x", sampler="dpm++2m", schedule="beta")).schedule == "beta"
