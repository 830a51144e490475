"""Hires fix (A1111's name): text-to-image at the asked size, the image upscaled by `hires_scale` (Lanczos, or an
upscaler model of the models folder: ESRGAN, 4x-UltraSharp, ...), then an image-to-image pass at the larger size
with its own steps, denoising strength and prompt. The "ControlNet upscaler" also steers that pass by the upscaled
image through jasperai's FLUX.1 Upscaler ControlNet (as the upscale tool does; `upscaler` in the models folder or
the Hugging Face cache), and is refused when the ControlNet is not on disk.

Both passes are one job of the manager (one turn at the engine, its lock held throughout): both are planned
against the memory budget before the first step, steps count across both passes, a stop works in either,
and the result is one image with one metadata record, the hires settings in it. Each pass is the engine's
own generation path: the generate tool's inputs through `ModelManager.run_inputs`.
"""

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from PIL import Image

from mflux_core.errors import InvalidRequest
from mflux_core.events import Report, passes_report
from mflux_core.flux_model import FluxModel
from mflux_core.generation import ToolInputs
from mflux_core.regions import scaled_regions
from mflux_core.registry import on_disk
from mflux_core.native_sizes import makes_size, other_sizes_need, what_it_makes
from mflux_core.prompt_schedule import for_the_second_pass
from mflux_core.request import GenerationRequest, hires_size
from mflux_core.sampling.schedule import img2img_start_step
from mflux_core.settings_schema import DEFAULT_HIRES_STRENGTH, HIRES_UPSCALERS
from mflux_core.tools.common import start_image_inputs, tool_inputs
from mflux_core.tools.controlnet_conditioning import ControlUnit, add_controlnets, steering, with_default_strength
from mflux_core.tools.engine import ToolEngine
from mflux_core.tools.generate import image_to_image_inputs
from mflux_core.tools.upscale import CONTROL_TYPE as UPSCALE_CONTROL_TYPE, DEFAULT_STRENGTH as UPSCALER_STRENGTH
from mflux_core.upscaler_files import unknown_upscaler, upscaler_file
from mflux_core.upscaler_models import UpscalerModel, upscale_with
from mflux_core.weights.resolve import ALIASES

if TYPE_CHECKING:
    from mflux_core.manager import GenerationResult, ModelManager

DEFAULT_UPSCALER, CONTROLNET_UPSCALER = HIRES_UPSCALERS
UPSCALER_CONTROLNET = "upscaler"  # its alias (mflux_core.weights.resolve.ALIASES)


def with_hires_defaults(request: GenerationRequest, first_steps: int) -> GenerationRequest:
    """The request with every hires setting filled in (recorded so that the image replays)."""
    request = request.with_(hires_steps=request.hires_steps or first_steps,
                            hires_strength=request.hires_strength or DEFAULT_HIRES_STRENGTH,
                            hires_upscaler=request.hires_upscaler or DEFAULT_UPSCALER)
    if request.hires_upscaler == CONTROLNET_UPSCALER and request.controlnet_strength is None:
        request = request.with_(controlnet_strength=UPSCALER_STRENGTH)
    return request


def check_upscaler_on_disk(request: GenerationRequest, models_dir: Path | None) -> None:
    """Refuse, before any step, the ControlNet upscaler when its ControlNet would have to be downloaded, and an
    upscaler model that is not in the models folder."""
    name = request.hires_upscaler
    if name and name not in HIRES_UPSCALERS and upscaler_file(models_dir, name) is None:
        raise unknown_upscaler(name, HIRES_UPSCALERS, models_dir)
    if name == CONTROLNET_UPSCALER and not on_disk(UPSCALER_CONTROLNET, models_dir):
        raise InvalidRequest(
            f"The ControlNet upscaler needs {ALIASES[UPSCALER_CONTROLNET]}, which is not on disk: put it into the "
            f"models folder as {UPSCALER_CONTROLNET}/ (or download it once online), or use the Lanczos upscaler.")


def second_pass_request(request: GenerationRequest, first_steps: int) -> GenerationRequest:
    """The image-to-image request of the second pass: the larger size, the hires steps and prompt (else the prompt),
    its edits counted on from the first pass's `first_steps` as A1111 counts them, and the image strength (mflux's
    meaning, how much is kept) that the denoising strength leaves."""
    width, height = hires_size(request.width, request.height, request.hires_scale)

    def second_pass(prompt: str) -> str:
        return for_the_second_pass(prompt, first_steps)

    return request.with_(width=width, height=height, steps=request.hires_steps,
                         regions=tuple({**region, "prompt": second_pass(region["prompt"])} for region in
                                       scaled_regions(request.regions, width / request.width, height / request.height)),
                         prompt=second_pass(request.hires_prompt or request.prompt),
                         image_strength=1 - request.hires_strength,
                         hires_scale=None, hires_steps=None, hires_strength=None, hires_upscaler=None,
                         hires_prompt="")


def upscaled(image: Image.Image, size: tuple[int, int], model: UpscalerModel | None,
             cancelled: Callable[[], bool] | None, report: Report | None) -> Image.Image:
    """The first pass's image at the second pass's size (the ControlNet upscaler's control image too): by the
    upscaler model when there is one, else Lanczos."""
    if model is None:
        return image.resize(size, Image.Resampling.LANCZOS)
    return upscale_with(model, image, size, cancelled, report)


def second_pass_inputs(model: FluxModel, request: GenerationRequest, engine: ToolEngine, before: Image.Image,
                       upscaler: str) -> ToolInputs:
    """Image-to-image from the upscaled image; with the ControlNet upscaler, also steered by it; on the ControlNet
    tool, steered by its own ControlNets, their images brought to the second pass's size (A1111's ControlNet
    extension steers both passes)."""
    if request.tool == "controlnet":
        return start_image_inputs(model, tool_inputs(model, request, engine), before)
    inputs = image_to_image_inputs(model, request, before)
    if upscaler != CONTROLNET_UPSCALER:
        return inputs
    side = steering(model, inputs.request, engine, UPSCALER_CONTROLNET, UPSCALE_CONTROL_TYPE)
    steered = with_default_strength(inputs.request, UPSCALER_STRENGTH)
    controlnets = add_controlnets(model, steered, engine, inputs.conditioning,
                                  [ControlUnit(side, before, steered.controlnet_strength)])
    return replace(inputs, request=steered, controlnets=controlnets)


def generate_hires(manager: "ModelManager", request: GenerationRequest, report: Report | None,
                   cancelled: Callable[[], bool] | None) -> "GenerationResult":
    """Both passes, with the manager's lock held by the caller."""
    started = manager.run_started()
    check_upscaler_on_disk(request, manager.models_dir)
    model = manager._prepared_model(request, cancelled)
    first = tool_inputs(model, request, manager)
    first_steps = first.request.steps or model.default_steps
    request = with_hires_defaults(first.request, first_steps)
    second_request = second_pass_request(request, first_steps)
    passes = ((request.width, request.height), (second_request.width, second_request.height))
    if not all(makes_size(model.native_sizes, model.token_side, size) for size in passes):  # a demo member's: noise
        raise InvalidRequest(f"{request.model} makes {what_it_makes(model.native_sizes, model.token_side)}, so it has "
                             f"no hires fix from {passes[0][0]}x{passes[0][1]} to {passes[1][0]}x{passes[1][1]}: use "
                             f"{other_sizes_need(model.native_sizes, model.token_side)}.")
    steps = second_request.steps
    start = img2img_start_step(steps, second_request.image_strength)
    manager.resident.plan_run(model, first)
    # the second pass at its size before any step of the first: text-to-image plans the same denoise and decode
    plan = manager.resident.plan_run(model, tool_inputs(model, second_request, manager))
    total = first_steps + steps - start
    upscaler = None if request.hires_upscaler in HIRES_UPSCALERS else manager.ready_upscaler(
        request.hires_upscaler, passes[0], passes[1])
    with manager.resident.budget.holding(plan):
        image = manager.run_inputs(model, first, passes_report(report, 0, total, "hires fix pass 1 of 2"), cancelled)
        before = upscaled(image, passes[1], upscaler, cancelled, report)
        second = second_pass_inputs(model, second_request, manager, before, request.hires_upscaler)
        image = manager.run_inputs(model, second, passes_report(report, first_steps - start, total,
                                                                "hires fix pass 2 of 2"), cancelled)
    return manager.finished(image, request, model, first.conditioning.guidance, plan, started, before=before,
                            notes=(*first.notes, *same_size_note(request, passes[1])), recorded=first.recorded)


def same_size_note(request: GenerationRequest, second_size: tuple[int, int]) -> tuple[str, ...]:
    """A note when a scale above 1 rounds back to the first pass's size (a second pass that only repaints)."""
    if request.hires_scale <= 1 or second_size != (request.width, request.height):
        return ()
    return (f"The hires fix kept {request.width}x{request.height}: {request.hires_scale:g} times that, rounded down "
            "to multiples of 16, is the same size, so the second pass only repainted it.",)
