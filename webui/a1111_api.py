"""AUTOMATIC1111 / Forge's `/sdapi/v1` API on the studio's own server, so clients written for those web UIs
(editor plugins, chat front-ends, scripts) make images through the page's validation, queue and engine.

    POST /sdapi/v1/txt2img, /img2img   A1111's JSON; img2img with a `mask` runs Fill, without one image-to-image;
                                       a ControlNet unit (alwayson_scripts) runs ControlNet, from the init image in
                                       img2img (a1111_controlnet.py, also the extension's /controlnet/* routes)
    GET  /sdapi/v1/sd-models           the models these run on; GET/POST /sdapi/v1/options: sd_model_checkpoint,
                                       and Forge's forge_additional_modules / sd_vae (a1111_modules.py)
    GET  /sdapi/v1/sd-modules, sd-vae  the VAE and text encoder files of the models folder
    GET  /sdapi/v1/progress            the running API job: step, ETA and the step's preview
    POST /sdapi/v1/interrupt, /skip    stop the running API job after its current step
    POST /sdapi/v1/png-info            an image's A1111 text, read as A1111 reads it, and the settings in it
    script_name "X/Y/Z plot"           the studio's plot, script_args as A1111's (a1111_xyz.py); "Prompt matrix"
                                       (a1111_prompt_matrix.py); "Prompts from file or textbox": its prompt list
                                       (a1111_prompt_list.py); img2img's "SD upscale": the Upscale tool in tiles
                                       (a1111_scripts.py); /sdapi/v1/scripts and script-info list them
    POST /sdapi/v1/extra-single-image, /extra-batch-images: upscaling (a1111_extras.py)
    GET  /sdapi/v1/samplers, schedulers, loras, upscalers, cmd-flags, memory: what the studio has
    (`sampler_name` and `scheduler` pick ours by A1111's names: Euler, Euler a, Heun, DPM++ 2M, DPM++ 2M SDE,
    UniPC; Simple, Beta, Karras...)

FLUX semantics as Forge defines them: `distilled_cfg_scale` is FLUX guidance (default: the tool's), `cfg_scale`
above 1 with a negative prompt is true classifier-free guidance, 1 turns it off. Fields we cannot honour are
ignored and named in the answer's `info` ("ignored"). Errors are A1111's shape: {"error", "detail", "body",
"errors"}, a 4xx with one sentence for anything a client sent wrong.
"""

import json
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from safetensors import safe_open

from mflux_core.app_metadata import SIZE_TEXT
from mflux_core.controlnet_units import MAX_UNITS
from mflux_core.errors import Cancelled, InvalidRequest, StudioError
from mflux_core.events import Step
from mflux_core.images.io import load_image
from mflux_core.images.resize_modes import RESIZE_MODES, resize_to
from mflux_core.lora.a1111 import LORA_TAG, tagged_prompt
from mflux_core.metadata import A1111_KEY
from mflux_core.presets import PresetError, image_metadata, settings_from_png, split_infotext
from mflux_core.registry import BUILT_IN
from mflux_core.request import MAX_SEED, GenerationRequest, check_image_size, hires_size, size_of_input
from mflux_core.settings_schema import (
    HIRES_UPSCALERS, MAX_BATCH, MAX_MASK_BLUR, MAX_SIDE, SAMPLER_LABELS, SCHEDULE_LABELS, a1111_sampling,
)
from mflux_core.styles import picked_styles, read_styles, styles_merged
from mflux_core.tools.specs import FACE_FIX_TOOLS, MASKED_CONTENT, TOOL_SPECS, default_model_for
from mflux_core.upscaler_files import A1111_LABELS, upscaler_file, upscaler_files
from mflux_core.upscaler_models import upscale_with
from mflux_core.xyz import MAX_CELLS, plot_cells, plot_grids
from webui.a1111_adetailer import SCRIPT as ADETAILER_SCRIPT, face_fix_extra
from webui.a1111_controlnet import SCRIPT as CONTROLNET_SCRIPT, add_controlnet_routes, enabled_units, units_inputs
from webui.a1111_extras import CONTROLNET_UPSCALER, EXTRAS_SEED, UPSCALERS, add_extras_routes
from webui.a1111_modules import MODULE_DEFAULTS, MODULE_OPTIONS, chosen_options, model_settings, module_listing
from webui.a1111_prompt_list import PROMPTS_FROM_FILE, is_prompts_from_file, prompt_list_requests
from webui.a1111_prompt_matrix import PROMPT_MATRIX, is_prompt_matrix, matrix_cells, matrix_pictures
from webui.a1111_script_info import script_info
from webui.a1111_scripts import IMG2IMG_SCRIPTS, is_sd_upscale, sd_upscale_settings
from webui.a1111_xyz import (XYZ_PLOT, in_a1111_order, is_xyz_plot, own_seeds, plot_axes, plot_pictures,
                              script_layout)
from webui.a1111_wire import (SdApiError, as_file, b64_png, base64_data, decoded_image, decoded_mask, parsed,
                              without_hash)
from webui.api_server import MAX_WAITING, ApiFields, JobThreads, api_routes, json_object, studio_models
from webui.gallery import save_grids, save_result
from webui.requests import InputStore, cell_finisher, requests_from_settings, with_tagged_loras
from webui.turns import job_about, request_about
from webui.widgets import model_choices

API_SESSION = "sdapi"  # the API's running job on the studio's job board (its cancel flag)
API_TOOLS = ("generate", "fill")
A1111_SOURCE = "A1111 API"  # who submitted a job, as the queue shows it
# A1111's k-diffusion names
SAMPLER_ALIASES = {"euler": "k_euler", "euler_a": "k_euler_a", "heun": "k_heun", "dpm++2m": "k_dpmpp_2m",
                   "dpm++2m_sde": "k_dpmpp_2m_sde", "unipc": "unipc"}
AUTOMATIC = "automatic"  # Forge's scheduler "Automatic": the sampler's own, which Simple is
BOTH_TABS_SCRIPTS = (XYZ_PLOT, PROMPT_MATRIX, PROMPTS_FROM_FILE)  # txt2img's and img2img's (its own: a1111_scripts)


class Txt2ImgParams(ApiFields):
    """The fields we use of A1111's StableDiffusionTxt2ImgProcessingAPI; the rest are accepted and ignored."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)  # the variation seed (-1: random)
    subseed_strength: float = Field(0.0, ge=0, le=1)
    steps: int | None = None  # None: the model's default
    width: int | None = Field(None, ge=16, le=MAX_SIDE)  # None: the model's native size (img2img: the input's)
    height: int | None = Field(None, ge=16, le=MAX_SIDE)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(1, ge=1, le=MAX_BATCH)
    cfg_scale: float = 1.0
    distilled_cfg_scale: float | None = None
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    styles: list[str] = Field(default_factory=list)  # A1111 styles by name (the studio's styles folder)
    override_settings: dict = Field(default_factory=dict)
    alwayson_scripts: dict = Field(default_factory=dict)  # the ControlNet extension's units run (a1111_controlnet)
    override_settings_restore_afterwards: bool = True  # here an override always lasts one request
    send_images: bool = True
    save_images: bool = False
    # the hires fix (txt2img): A1111's defaults, which its clients send whether or not enable_hr is on
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)  # 0: by hr_scale
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0)  # 0: the first pass's steps
    hr_prompt: str = ""  # empty: the first pass's prompt
    denoising_strength: float | None = Field(None, ge=0, le=1)  # the second pass's (None: the studio's default)
    script_name: str | None = None  # an A1111 script the studio runs (X/Y/Z plot; img2img's SD upscale too)
    script_args: list = Field(default_factory=list)


class Img2ImgParams(Txt2ImgParams):
    init_images: list[str] = Field(min_length=1)
    denoising_strength: float = Field(0.75, ge=0, le=1)
    mask: str | None = None
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    inpaint_full_res: bool = True  # inpaint area "Only masked" (A1111's API default; its page's is the whole picture)
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    mask_blur: int = Field(4, ge=0, le=MAX_MASK_BLUR)  # A1111's default
    inpainting_fill: int = Field(0, ge=0, le=3)  # masked content: 0 fill, 1 original, 2 latent noise, 3 latent nothing
    resize_mode: int = Field(0, ge=0, le=3)  # 3: A1111's "just resize (latent upscale)", done here as 0
    include_init_images: bool = False  # the answer's parameters repeat the init images and mask


def ignored_fields(params: BaseModel) -> list[str]:
    """The request's fields that the studio does not honour (those sent with a value that does something in A1111)."""
    ignored = sorted(k for k, v in (params.model_extra or {}).items() if v not in (None, False, "", [], {}, 0, -1))
    return ignored + [f"override_settings.{k}" for k in params.override_settings
                      if k not in ("sd_model_checkpoint", *MODULE_OPTIONS)] + \
        [f"alwayson_scripts.{name}" for name in params.alwayson_scripts
         if name.lower() not in (CONTROLNET_SCRIPT, ADETAILER_SCRIPT)]


def hires_settings(params: Txt2ImgParams, models_dir: Path | None, ignored: list[str]) -> dict:
    """The hires fix's settings from A1111's enable_hr fields: upscaled by hr_scale (or to hr_resize_x/y, keeping
    the aspect), its steps, denoising strength, prompt and upscaler (Lanczos, the ControlNet upscaler, or an
    upscaler model of the models folder; one we do not have is named in `ignored`)."""
    if not params.enable_hr:
        return {}
    settings = {"hires_scale": params.hr_scale, "hires_strength": params.denoising_strength,
                "hires_steps": params.hr_second_pass_steps or None, "hires_prompt": params.hr_prompt}
    if params.hr_resize_x or params.hr_resize_y:
        if params.width is None or params.height is None:
            ignored.append(f"hr_resize_x/hr_resize_y (they need width and height; hr_scale {params.hr_scale:g} ran)")
        else:
            scale = max(params.hr_resize_x / params.width, params.hr_resize_y / params.height)
            settings["hires_scale"] = round(scale, 6)
            target = hires_size(params.width, params.height, scale)
            if (params.hr_resize_x or target[0], params.hr_resize_y or target[1]) != target:
                ignored.append("hr_resize_x/hr_resize_y's exact size (the second pass keeps the first's aspect, "
                               "sides multiples of 16)")
    if params.hr_upscaler in HIRES_UPSCALERS or upscaler_file(models_dir, params.hr_upscaler or ""):
        settings["hires_upscaler"] = params.hr_upscaler
    elif params.hr_upscaler:
        ignored.append(f"hr_upscaler {params.hr_upscaler!r} (not in the studio: {HIRES_UPSCALERS[0]} ran)")
    return settings


def sampling_settings(params: Txt2ImgParams, ignored: list[str]) -> dict:
    """Our sampler and schedule from A1111's `sampler_name` (or its alias, or an older "DPM++ 2M Karras") and
    `scheduler`; one we do not have is listed in `ignored` and the default runs."""
    sampler = params.sampler_name or params.sampler_index or ""
    by_alias = {alias: SAMPLER_LABELS[name] for name, alias in SAMPLER_ALIASES.items()}
    sampler = by_alias.get(sampler.strip().lower(), sampler)
    scheduler = "" if (params.scheduler or "").strip().lower() == AUTOMATIC else params.scheduler or ""
    settings = a1111_sampling(sampler, scheduler)
    if sampler and "sampler" not in settings:
        ignored.append(f"sampler_name {sampler!r} (not in the studio: {SAMPLER_LABELS['euler']} ran)")
    if scheduler and "schedule" not in settings:
        ignored.append(f"scheduler {scheduler!r} (not in the studio: {SCHEDULE_LABELS['simple']} ran)")
    return settings


# ----- models --------------------------------------------------------------------------------


def api_models(studio, only_offered: bool = False) -> list[str]:
    """The model picker's choices for the API's tools (text-to-image and Fill models), downloaded ones first;
    `only_offered`: those a listing offers (api_server.offered)."""
    kinds = tuple(kind for tool in API_TOOLS for kind in TOOL_SPECS[tool].model_kinds)
    return [name for _, name in model_choices(studio_models(studio, only_offered), kinds=kinds)]


def model_kind(studio, name: str) -> str | None:
    return next((e.kind for e in studio.manager.list_models() if e.name == name), None)


def is_demo_model(studio, name: str) -> bool:
    return any(e.name == name and e.where == BUILT_IN for e in studio.manager.list_models())


def checkpoint_name(studio, title: str) -> str:
    """The model an `sd_model_checkpoint` title names ("demo", or A1111's "demo [hash]"); 400 when none."""
    name = without_hash(title)
    if name not in api_models(studio):
        raise SdApiError(400, f"The checkpoint {title!r} is not in the studio: GET /sdapi/v1/sd-models lists them.")
    return name


def model_for(studio, tool: str, params: Txt2ImgParams, chosen: str | None, notes: list[str]) -> str:
    """The request's model: its override (which must suit the tool), else the options' checkpoint when it is of the
    tool's own kinds, else the tool's default; but rather than a demo model (the tool's FLUX.1 model not on disk), a
    FLUX.1 checkpoint the tool also runs on (a base model for Fill, as A1111 inpaints with the loaded checkpoint)."""
    spec = TOOL_SPECS[tool]
    kinds = spec.model_kinds + spec.also_kinds
    override = params.override_settings.get("sd_model_checkpoint")
    if override:
        name = checkpoint_name(studio, override)
        if model_kind(studio, name) not in kinds:
            raise SdApiError(400, f"{name} is not a {'/'.join(kinds)} model, which the {tool} tool needs.")
        return name
    if chosen and model_kind(studio, chosen) in spec.model_kinds:
        return chosen
    model = default_model_for(tool, studio.manager.models_dir)
    if chosen and model == spec.demo_model and model_kind(studio, chosen) in spec.also_kinds and \
            not is_demo_model(studio, chosen):
        return chosen
    if chosen and is_demo_model(studio, chosen) and model_kind(studio, chosen) in kinds:
        notes.append(f"sd_model_checkpoint {chosen!r} (a demo model: the {tool} tool ran its own, {model})")
    elif chosen:
        notes.append(f"sd_model_checkpoint {chosen!r} (not a {'/'.join(kinds)} model: {model} ran)")
    return model


def memory_answer(studio) -> dict:
    """A1111's /memory: the machine's RAM and, under the `cuda` key its clients read, the accelerator's memory as
    MLX (Metal, CUDA or the CPU) holds it for the studio, against its memory budget."""
    machine = psutil.virtual_memory()
    budget, mlx = studio.manager.budget.bytes, studio.manager.budget.usage()
    held = mlx["active"] + mlx["cache"]
    return {"ram": {"free": machine.available, "used": machine.total - machine.available, "total": machine.total},
            "cuda": {"system": {"free": max(0, budget - held), "used": held, "total": budget},
                     "active": {"current": mlx["active"], "peak": mlx["peak"]},
                     "allocated": {"current": mlx["active"], "peak": mlx["peak"]},
                     "reserved": {"current": held, "peak": held},
                     "inactive": {"current": mlx["cache"], "peak": mlx["cache"]}, "events": {"retries": 0, "oom": 0}}}


MAX_KEPT_OPTIONS, MAX_OPTION_CHARS, MAX_OPTION_NESTING = 2000, 10_000, 16  # A1111's ~500: names, numbers, lists


def nesting(value) -> int:
    """How deep lists and objects nest in a JSON value (counted without recursion: the value may be ~1000 deep)."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        value, depth = pending.pop()
        deepest = max(deepest, depth)
        if isinstance(value, (list, dict)):
            pending.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return deepest


def options_to_keep(kept: dict, fields: dict) -> dict:
    """The options the studio does not use but shows back, as A1111 would; 400 for what would not fit in memory
    for long (each POST may be 64 MB) or could not be answered back (JSON nested past the encoder's depth)."""
    if len(kept.keys() | fields.keys()) > MAX_KEPT_OPTIONS:
        raise SdApiError(400, f"The studio keeps at most {MAX_KEPT_OPTIONS:,} options; A1111 has about 500.")
    for key, value in fields.items():
        if nesting(value) > MAX_OPTION_NESTING:
            raise SdApiError(400, f"The option {key[:80]!r} nests lists or objects too deeply to keep (over "
                                  f"{MAX_OPTION_NESTING} levels): A1111's options are names, numbers and short lists.")
        if len(key) + len(json.dumps(value)) > MAX_OPTION_CHARS:
            raise SdApiError(400, f"The option {key[:80]!r} is too large to keep (over {MAX_OPTION_CHARS:,} "
                                  "characters of JSON): A1111's options are names, numbers and short lists.")
    return fields


def sd_model(name: str) -> dict:
    return {"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}


# ----- the running job -----------------------------------------------------------------------


@dataclass
class ApiJob:
    """What /progress reports of the running API job."""

    kind: str  # "txt2img", "img2img" or "extras"
    count: int  # images
    started: float = field(default_factory=time.time)
    done: int = 0
    step: int = 0
    steps: int = 0
    preview: Image.Image | None = None
    interrupted: bool = False

    def report(self, event) -> None:
        if isinstance(event, Step):
            self.step, self.steps = event.step, event.total
            self.preview = event.preview or self.preview

    def progress(self) -> float:
        """The fraction of the job done, 0 to 1 (0 for no job)."""
        if not self.count:
            return 0.0
        return min(1.0, (self.done + (self.step / self.steps if self.steps else 0)) / self.count)


def job_timestamp(job: ApiJob) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(job.started))


class SdApiState:
    """Per studio, in memory: the options' checkpoint and other options, and the running API job."""

    def __init__(self):
        self.checkpoint: str | None = None  # None: each tool's default model
        self.options: dict = {}
        self.module_options: dict = {}  # Forge's module and storage options as POSTed (checked): a1111_modules.py
        self.job: ApiJob | None = None


def run_job(studio, state: SdApiState, job: ApiJob, requests: list[GenerationRequest], save: bool,
            gone: threading.Event) -> list:
    """The requests' results, run when the engine's turn comes (after the page's and the APIs' earlier jobs);
    an interrupt, or the client going away (`gone`), keeps the images finished before it."""
    results = []
    with studio.turns.turn(**request_about(requests), source=A1111_SOURCE, cancel=gone) as entry:
        cancel = studio.jobs.begin(API_SESSION, entry.cancel)  # /interrupt and the queue's Stop alike
        state.job = job
        try:
            with closing(studio.batch(requests, cancel.is_set)) as runs:  # on a cluster: over the replicas
                for run in runs:
                    results.append(run(job.report))
                    if save:
                        save_result(studio.folders.outputs, results[-1])
                    job.done, job.step = job.done + 1, 0
        except Cancelled:
            job.interrupted = True
        finally:
            studio.jobs.end(API_SESSION, cancel)
            if state.job is job:  # on a cluster another API job may have started since
                state.job = None
    return results


def _subseed(request: GenerationRequest) -> int:
    return -1 if request.variation_seed is None else request.variation_seed


def images_answer(fields: dict, params: Txt2ImgParams, job: ApiJob, results: list, ignored: list[str],
                  pictures: list[tuple[Image.Image, dict]] | None = None, first_image: int = 0) -> dict:
    """A1111's answer: base64 PNGs (with their metadata), the request's parameters, and `info` as a JSON string.
    `pictures`: (image, PNG text chunks) to answer with in place of the results' (a plot's grid first: the results'
    own from `first_image` on)."""
    if pictures is None:
        pictures = [(result.image, result.text_chunks) for result in results]
    requests = [result.request for result in results]
    first = results[0].metadata if results else {}
    info = {
        "prompt": params.prompt, "negative_prompt": params.negative_prompt,
        "all_prompts": [tagged_prompt(r) for r in requests],
        "all_negative_prompts": [r.negative_prompt for r in requests],
        "seed": requests[0].seed if requests else None, "all_seeds": [r.seed for r in requests],
        "subseed": _subseed(requests[0]) if requests else -1, "all_subseeds": [_subseed(r) for r in requests],
        "subseed_strength": requests[0].variation_strength if requests else params.subseed_strength,
        "width": requests[0].width if requests else params.width,
        "height": requests[0].height if requests else params.height,
        "sampler_name": SAMPLER_LABELS[requests[0].sampler] if requests else None,
        "scheduler": SCHEDULE_LABELS[requests[0].schedule] if requests else None,
        "steps": first.get("steps", params.steps),
        "cfg_scale": requests[0].true_cfg_scale if requests else params.cfg_scale,
        "distilled_cfg_scale": first.get("guidance", params.distilled_cfg_scale),
        "batch_size": params.batch_size, "n_iter": params.n_iter,
        "sd_model_name": requests[0].model if requests else None,
        "infotexts": [chunks[A1111_KEY] for _, chunks in pictures],
        "job_timestamp": job_timestamp(job),
        "interrupted": job.interrupted, "ignored": ignored, "index_of_first_image": first_image,
        "notes": list(dict.fromkeys(note for result in results for note in result.notes)),  # each note once
    }
    images = [b64_png(image, chunks) for image, chunks in pictures] if params.send_images else []
    parameters = {**params.model_dump(exclude={"init_images", "mask"}), **fields}
    if isinstance(params, Img2ImgParams) and not params.include_init_images:
        parameters.update(init_images=None, mask=None)  # as A1111: the inputs are not sent back
    return {"images": images, "parameters": parameters, "info": json.dumps(info)}


# ----- requests --------------------------------------------------------------------------------


def guidance_settings(tool: str, params: Txt2ImgParams, ignored: list[str]) -> dict:
    """FLUX guidance from distilled_cfg_scale; true CFG when cfg_scale > 1 and a negative prompt is given."""
    settings = {"guidance": params.distilled_cfg_scale}
    if params.cfg_scale > 1 and params.negative_prompt.strip():
        if TOOL_SPECS[tool].true_cfg:
            return {**settings, "negative_prompt": params.negative_prompt, "true_cfg_scale": params.cfg_scale}
        ignored.append(f"cfg_scale and negative_prompt (the {tool} tool has no true CFG)")
    elif params.negative_prompt.strip():
        ignored.append("negative_prompt (true CFG, which reads it, needs cfg_scale above 1)")
    return settings


def job_requests(studio, tool: str, model: str, params: Txt2ImgParams, ignored: list[str], settings: dict,
                 inputs: dict) -> list[GenerationRequest]:
    """The validated requests of one call (batch_size x n_iter consecutive seeds), as the page builds its own;
    `settings` are the tool's own (img2img's), `inputs` its input paths."""
    count = params.batch_size * params.n_iter
    if count > MAX_BATCH:
        raise SdApiError(400, f"batch_size x n_iter is {count} images; the studio makes at most {MAX_BATCH} per "
                              "request.")
    context = studio.request_context()
    settings = {"tool": tool, "model": model, "prompt": library_loras_only(params.prompt, context.loras, ignored),
                "steps": params.steps,
                "seed": None if params.seed == -1 else params.seed, "width": params.width, "height": params.height,
                "variation_seed": None if params.subseed == -1 else params.subseed,
                "variation_strength": params.subseed_strength,
                "styles": params.styles, "batch_count": count, **guidance_settings(tool, params, ignored),
                **sampling_settings(params, ignored), **settings}
    return requests_from_settings(settings, context, **inputs)


def library_loras_only(prompt: str, library: Mapping[str, Path], ignored: list[str]) -> str:
    """The prompt without its `<lora:...>` tags of LoRAs not in the library, each named in `ignored`: A1111 warns
    "Networks not found" and generates without them."""
    def kept(tag: re.Match) -> str:
        if tag.group(1).strip() in library:
            return tag.group(0)
        ignored.append(f"{tag.group(0)} (not in the LoRA library: the image was made without it)")
        return ""

    return LORA_TAG.sub(kept, prompt)


def img2img_inputs(studio, params: Img2ImgParams, ignored: list[str], store: InputStore) -> tuple[str, dict, dict]:
    """(tool, settings, input paths) of an img2img call: the init image (and mask) at the output size by `resize_mode`;
    a mask makes it Fill (white = repainted; inverted by inpainting_mask_invert), none image-to-image. With a mask
    and inpaint_full_res (A1111's default) only the area around the mask is inpainted and the image keeps its size."""
    image = decoded_image(params.init_images[0], "init image")
    if params.enable_hr:
        ignored.append("enable_hr (the hires fix follows txt2img only)")
    if len(params.init_images) > 1:
        ignored.append("init_images after the first")
    if is_sd_upscale(params.script_name):
        return sd_upscale_inputs(studio, params, image, ignored, store)
    unknown_script(params, IMG2IMG_SCRIPTS, ignored)
    units = enabled_units(params.alwayson_scripts, ignored)
    if params.denoising_strength == 0:  # the studio's image strength would be 1, which it refuses under its own name
        raise SdApiError(400, "denoising_strength 0 would change nothing: give a value above 0 (A1111's default is "
                              "0.75).")
    # unset: the image's own size, as the page and the engine take it (within the size limit, its aspect kept)
    fitted = size_of_input(*image.size)
    size = (params.width or fitted[0], params.height or fitted[1])
    check_image_size(*size, "The requested image")  # before resizing to it
    mode = RESIZE_MODES[params.resize_mode] if params.resize_mode in range(len(RESIZE_MODES)) else RESIZE_MODES[0]
    settings = {"image_strength": round(1 - params.denoising_strength, 6), "width": size[0], "height": size[1]}
    only_masked = params.mask is not None and params.inpaint_full_res  # Fill keeps the image's size
    init = image if only_masked else resize_to(image, *size, mode)
    if params.mask is None:
        inputs = {"image_path": store.save(init, "api-image")}
    if params.mask is None and units:  # the ControlNets steering image-to-image
        unit_fields, control_inputs = units_inputs(studio, units, ignored, store, init_image=image)
        return "controlnet", {**unit_fields, **settings}, {**inputs, **control_inputs}
    if params.mask is None:
        return "generate", settings, inputs
    if units:
        ignored.append("alwayson_scripts.controlnet (not with an inpainting mask here)")
    mask = decoded_mask(params.mask).resize(image.size)
    if only_masked:  # the area around the mask is inpainted at width x height (unset: its shape at the model's size)
        settings.update(only_masked_padding=params.inpaint_full_res_padding, width=params.width, height=params.height)
    else:
        mask = resize_to(mask, *size, mode)
    mask = mask.point(lambda v: 255 if (v > 127) != bool(params.inpainting_mask_invert) else 0)
    if not mask.getbbox():
        raise SdApiError(400, "The mask marks nothing to repaint: white is repainted (black with "
                              "inpainting_mask_invert 1).")
    settings.update(image_strength=masked_content_strength(params, settings["image_strength"], ignored),
                    keep_unmasked=True, mask_blur=params.mask_blur)
    if params.inpainting_fill == 0 and settings["image_strength"]:  # A1111's fill: start from the surroundings
        settings["extra"] = {MASKED_CONTENT: "fill"}
    return "fill", settings, {"image_path": store.save(init, "api-image"),
                              "masked_image_path": store.save(mask, "api-mask")}


def sd_upscale_inputs(studio, params: Img2ImgParams, image: Image.Image, ignored: list[str],
                      store: InputStore) -> tuple[str, dict, dict]:
    """A1111's SD upscale script: the Upscale tool in tiles (a1111_scripts.py), from the init image as it is."""
    if params.mask is not None:
        ignored.append("mask (SD upscale regenerates the whole image)")
    if enabled_units(params.alwayson_scripts, ignored):
        ignored.append("alwayson_scripts.controlnet (with SD upscale, upscaler_index 3 steers by the ControlNet "
                       "upscaler)")
    upscalers = [entry["name"] for entry in upscaler_listing(studio.manager.models_dir)]
    settings = sd_upscale_settings(params.script_args, params.width, params.height, params.denoising_strength,
                                   upscalers, ignored)
    return "upscale", settings, {"image_path": store.save(image, "api-image")}


def masked_content_strength(params: Img2ImgParams, image_strength: float, ignored: list[str]) -> float | None:
    """The image strength an inpainting starts the masked area with, by A1111's masked content: fill (A1111's API
    default: the image with its masked area painted from its surroundings) and original start from the image,
    latent noise from noise (None), latent nothing too (named in `ignored`). Denoising strength 1 starts from noise
    whatever the masked content."""
    if params.inpainting_fill == 3:
        ignored.append("inpainting_fill 3 (latent nothing: the masked area started from noise, as latent noise)")
    return None if params.inpainting_fill in (2, 3) else image_strength or None


def txt2img_inputs(studio, params: Txt2ImgParams, ignored: list[str], store: InputStore) -> tuple[str, dict, dict]:
    """(tool, settings, input paths) of a txt2img call: text-to-image, or the ControlNet tool when an enabled
    ControlNet unit comes with it; either with the hires fix when asked for (the units then steer both passes)."""
    unknown_script(params, (), ignored)
    units = enabled_units(params.alwayson_scripts, ignored)
    hires = hires_settings(params, studio.manager.models_dir, ignored)
    if not units:
        return "generate", hires, {}
    if hires.get("hires_upscaler") == HIRES_UPSCALERS[1]:  # the ControlNet tool's second pass: Lanczos
        del hires["hires_upscaler"]
        ignored.append(f"hr_upscaler {HIRES_UPSCALERS[1]!r} (with a ControlNet unit, its ControlNets steer the second "
                       f"pass: {HIRES_UPSCALERS[0]} ran)")
    settings, inputs = units_inputs(studio, units, ignored, store)
    return "controlnet", {**settings, **hires}, inputs


def unknown_script(params: Txt2ImgParams, scripts: tuple[str, ...], ignored: list[str]) -> None:
    """Name in `ignored` a script_name the studio does not run (besides those of both tabs, the tab's `scripts`)."""
    known = (*BOTH_TABS_SCRIPTS, *scripts)
    if params.script_name and params.script_name.strip().lower() not in known:
        ignored.append(f"script_name {params.script_name!r} (the studio runs {', '.join(known)})")


@contextmanager
def call_inputs(studio, kept: bool):
    """Where one call's input images go: `<outputs>/inputs/`, as the page's, where a saved result's metadata points
    at them; when its results are not saved (save_images off, A1111's default) a folder of the call's own there,
    removed after it, as A1111 keeps no input."""
    store = studio.request_context().inputs
    if kept:
        yield store
        return
    store.folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".call-", dir=store.folder) as folder:
        yield InputStore(Path(folder))


def make_images(gone: threading.Event, studio, state: SdApiState, fields: dict, img2img: bool) -> dict:
    params = parsed(Img2ImgParams if img2img else Txt2ImgParams, fields)
    with call_inputs(studio, params.save_images) as store:
        return images_made(gone, studio, state, fields, params, img2img, store)


def images_made(gone: threading.Event, studio, state: SdApiState, fields: dict, params: Txt2ImgParams, img2img: bool,
                store: InputStore) -> dict:
    ignored = ignored_fields(params)
    tool, settings, inputs = (img2img_inputs if img2img else txt2img_inputs)(studio, params, ignored, store)
    settings = with_face_fix(tool, settings, params, ignored)
    model = model_for(studio, tool, params, state.checkpoint, ignored)
    settings.update(model_settings(studio, {**state.module_options, **chosen_options(params.override_settings)}))
    scripted = any(is_script(params.script_name) for is_script in (is_xyz_plot, is_prompt_matrix, is_prompts_from_file))
    # A1111 merges the styles into the prompts after its scripts changed them: a script's cells get them one by one
    requests = job_requests(studio, tool, model, params.model_copy(update={"styles": []}) if scripted else params,
                            ignored, settings, inputs)
    if scripted:
        context = studio.request_context()
        styles, finish = picked_styles(params.styles, context.styles), cell_finisher(context, requests[0].seed)
    if is_xyz_plot(params.script_name):
        return plot_answer(gone, studio, state, fields, params, requests, img2img, ignored, styles, finish)
    if is_prompt_matrix(params.script_name):
        return matrix_answer(gone, studio, state, fields, params, requests, img2img, ignored,
                             lambda request: finish(styles_merged(request, styles)))
    if is_prompts_from_file(params.script_name):  # styled as the page's lines: before each one's wildcards
        requests = [with_tagged_loras(line, context).validated()
                    for line in prompt_list_requests(requests[0], params.seed == -1, len(requests),
                                                     params.script_args, context.wildcards,
                                                     lambda request: styles_merged(request, styles), ignored)]
    job = ApiJob("img2img" if img2img else "txt2img", len(requests))
    results = run_job(studio, state, job, requests, params.save_images, gone)
    return images_answer(fields, params, job, results, ignored)


def plot_answer(gone: threading.Event, studio, state: SdApiState, fields: dict, params: Txt2ImgParams,
                requests: list[GenerationRequest], img2img: bool, ignored: list[str], styles: tuple,
                finish: Callable[[GenerationRequest], GenerationRequest]) -> dict:
    """A1111's X/Y/Z plot script (a1111_xyz.py) over the call's first request (its `styles` merged into each cell
    after the axes, then `finish`ed): the grid (and the cells or Z grids the script's arguments ask for) as the
    answer's images."""
    named = script_layout(params.script_args)
    axes, described = plot_axes(named, img2img, params.enable_hr, lambda title: checkpoint_name(studio, title),
                                read_styles(studio.folders.styles),
                                forge=params.distilled_cfg_scale is not None)  # a field only Forge's clients send
    if not named["draw_legend"]:
        ignored.append("script_args draw_legend (the grid is labelled)")
    if named.get("margin_size"):
        ignored.append("script_args margin_size (the grid's cells touch)")
    cells = plot_cells(requests[0], axes, MAX_CELLS, styles, finish,
                       tuple(bool(named.get(f"vary_seeds_{name}")) for name in "xyz"))
    if named["no_fixed_seeds"] and params.seed == -1:
        cells = own_seeds(cells, axes)
    return grid_answer(gone, studio, state, fields, params, img2img, requests, ignored, axes, cells,
                       lambda grids, results: plot_pictures(grids, results, named, described))


def matrix_answer(gone: threading.Event, studio, state: SdApiState, fields: dict, params: Txt2ImgParams,
                  requests: list[GenerationRequest], img2img: bool, ignored: list[str],
                  finish: Callable[[GenerationRequest], GenerationRequest]) -> dict:
    """A1111's Prompt matrix script (a1111_prompt_matrix.py) over the call's first request, each combination
    `finish`ed (the request's styles merged in): the labelled grid, then every combination."""
    axes, cells = matrix_cells(requests[0], params.script_args, finish)
    return grid_answer(gone, studio, state, fields, params, img2img, requests, ignored, axes, cells,
                       lambda grids, results: matrix_pictures(grids, results))


def grid_answer(gone: threading.Event, studio, state: SdApiState, fields: dict, params: Txt2ImgParams, img2img: bool,
                requests: list[GenerationRequest], ignored: list[str], axes: list, cells: list,
                pictures: Callable[[list, list], list]) -> dict:
    """A grid script's answer: its cells (each checked before the first runs) in the engine's turn, their grids
    drawn once, then `pictures(grids, results)` (the grid first) in A1111's order; with save_images the grids go to
    grids/."""
    if len(requests) > 1:
        ignored.append("batch_size and n_iter (a grid script makes one image per cell here)")
    job = ApiJob("img2img" if img2img else "txt2img", len(cells))
    results = run_job(studio, state, job, [cell.request for cell in cells], params.save_images, gone)
    cells, results = in_a1111_order(cells, results)
    grids = plot_grids(axes, {cell.position: result.image for cell, result in zip(cells, results)}) if results else []
    answered = pictures(grids, results)
    if params.save_images:
        save_grids(studio.folders.outputs, grids, answered[0][1] if answered else None)  # the answer's grid's text
    return images_answer(fields, params, job, results, ignored, answered, first_image=1)


def with_face_fix(tool: str, settings: dict, params: Txt2ImgParams, ignored: list[str]) -> dict:
    """The tool's settings with the face fix ADetailer's args ask for, where the tool makes the image from text or an
    image (an inpainting or SD upscale is named in `ignored` instead)."""
    extra = face_fix_extra(params.alwayson_scripts, ignored)
    if not extra:
        return settings
    if tool not in FACE_FIX_TOOLS:
        ignored.append(f"alwayson_scripts.ADetailer (the face fix follows txt2img and img2img without a mask here, "
                       f"not {tool})")
        return settings
    return {**settings, "extra": {**settings.get("extra", {}), **extra}}


# ----- the other routes ----------------------------------------------------------------------------


def progress_answer(job: ApiJob | None, skip_preview: bool) -> dict:
    """A1111's /progress: the fraction done, the seconds left (A1111's estimate), the job's state and the step's
    preview; zeros when no API job runs."""
    job = job or ApiJob("", 0, started=time.time())
    progress, elapsed = job.progress(), time.time() - job.started
    state = {"skipped": False, "interrupted": job.interrupted, "job": job.kind, "job_count": job.count,
             "job_no": job.done, "job_timestamp": job_timestamp(job) if job.count else "0",
             "sampling_step": job.step, "sampling_steps": job.steps}
    preview = None if skip_preview else job.preview
    return {"progress": progress, "eta_relative": elapsed / progress - elapsed if progress > 0 else 0.0,
            "state": state, "current_image": b64_png(preview) if preview is not None else None, "textinfo": None}


def png_info(text: str) -> dict:
    """A1111's /png-info: the `parameters` text, the image's other text chunks, and the text's items as A1111 parses
    them; `settings` adds what the page would restore from the image (ours, A1111's or another app's; {} when it
    carries none)."""
    with as_file(base64_data(text, "image")) as path:
        chunks = {k: v for k, v in load_image_info(path).items() if isinstance(v, str)}
        try:
            settings = settings_from_png(path)
        except (PresetError, InvalidRequest):  # metadata the page could not restore: the texts are still answered
            settings = {}
    info = chunks.pop(A1111_KEY, "")  # A1111 answers its text as `info`, not among the items
    return {"info": info, "items": chunks, "parameters": infotext_parameters(info), "settings": settings}


def infotext_parameters(text: str) -> dict:
    """A1111's reading of a `parameters` text (its parse_generation_parameters, less the page defaults it adds): the
    prompts under "Prompt" and "Negative prompt", each item as text, a quoted one unquoted, a size as "-1" and "-2"."""
    infotext = split_infotext(text)
    parameters = {"Prompt": infotext.prompt, "Negative prompt": infotext.negative}
    for key, value in infotext.items.items():
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        size = SIZE_TEXT.fullmatch(value)
        if size:
            parameters[f"{key}-1"], parameters[f"{key}-2"] = size.groups()
        else:
            parameters[key] = value
    return parameters


def load_image_info(path: str) -> dict:
    """The image's metadata (a PNG's text chunks, a JPEG's A1111 text), after load_image checked that it is an image
    we read."""
    load_image(path, name="sent as image")
    return image_metadata(Path(path))


def lora_entry(name: str, path) -> dict:
    try:
        with safe_open(str(path), "np") as weights:
            metadata = weights.metadata() or {}
    except Exception:  # a damaged file is listed without its metadata
        metadata = {}
    return {"name": name, "alias": metadata.get("ss_output_name", name), "path": str(path), "metadata": metadata}


def sdapi_router(studio, auth=None) -> APIRouter:
    """The API's routes; with `auth` (Gradio's launch argument) every route asks for those credentials."""
    router = APIRouter()
    threads = JobThreads(MAX_WAITING, SdApiError)
    route = api_routes(router, auth, SdApiError)
    state = SdApiState()

    @route("POST", "/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        fields = await json_object(request, SdApiError)
        return JSONResponse(await threads.run_for(request, make_images, studio, state, fields, False))

    @route("POST", "/sdapi/v1/img2img")
    async def img2img(request: Request):
        fields = await json_object(request, SdApiError)
        return JSONResponse(await threads.run_for(request, make_images, studio, state, fields, True))

    @route("GET", "/sdapi/v1/sd-models")
    async def sd_models(request: Request):
        return JSONResponse([sd_model(name) for name in api_models(studio, only_offered=True)])

    @route("GET", "/sdapi/v1/options")
    async def get_options(request: Request):
        checkpoint = state.checkpoint or default_model_for("generate", studio.manager.models_dir)
        return JSONResponse({"control_net_unit_count": MAX_UNITS, **state.options, "sd_model_checkpoint": checkpoint,
                             "samples_format": "png", **MODULE_DEFAULTS, **state.module_options})

    @route("POST", "/sdapi/v1/options")
    async def set_options(request: Request):
        fields = await json_object(request, SdApiError)
        shown = options_to_keep(state.options, {key: value for key, value in fields.items()
                                                if key != "sd_model_checkpoint" and key not in MODULE_OPTIONS})
        if "sd_model_checkpoint" in fields:  # null: back to each tool's default model
            title = fields.pop("sd_model_checkpoint")
            state.checkpoint = None if title is None else checkpoint_name(studio, title)
        if chosen_options(fields):
            options = {**state.module_options, **chosen_options(fields)}
            model_settings(studio, options)  # 400 for what the studio cannot use, before it is kept
            state.module_options = options
        state.options.update(shown)  # kept and shown, not used
        return JSONResponse(None)

    @route("GET", "/sdapi/v1/progress")
    async def progress(request: Request):
        skip = request.query_params.get("skip_current_image", "false").lower() == "true"
        return JSONResponse(progress_answer(state.job, skip))

    async def interrupt(request: Request):
        studio.jobs.cancel(API_SESSION)
        return await nothing_to_do(request)

    route("POST", "/sdapi/v1/interrupt")(interrupt)
    route("POST", "/sdapi/v1/skip")(interrupt)

    @route("POST", "/sdapi/v1/png-info")
    async def png_info_route(request: Request):
        fields = await json_object(request, SdApiError)
        if not isinstance(fields.get("image"), str):
            raise SdApiError(422, "The field 'image' is required: the PNG as base64.", kind="RequestValidationError")
        return JSONResponse(await threads.run(png_info, fields["image"]))

    listings = {
        "samplers": lambda: [{"name": label, "aliases": [SAMPLER_ALIASES[name]], "options": {}}
                             for name, label in SAMPLER_LABELS.items()],
        "schedulers": lambda: [{"name": n, "label": label, "aliases": None, "default_rho": -1,
                                "need_inner_model": False} for n, label in SCHEDULE_LABELS.items()],
        "loras": lambda: [lora_entry(name, path) for name, path in studio.lora_library().items()],
        "upscalers": lambda: upscaler_listing(studio.manager.models_dir),
        "cmd-flags": lambda: {"api": True, "nowebui": False},
        "memory": lambda: memory_answer(studio),
        "prompt-styles": lambda: [{"name": style.name, "prompt": style.prompt,
                                   "negative_prompt": style.negative_prompt}
                                  for style in read_styles(studio.folders.styles).values()],
        "realesrgan-models": lambda: realesrgan_listing(studio.manager.models_dir),
        "sd-modules": lambda: module_listing(studio),
        "sd-vae": lambda: module_listing(studio, "vae"),
        **dict.fromkeys(("face-restorers", "hypernetworks", "latent-upscale-modes"), list),
        "embeddings": lambda: {"loaded": {}, "skipped": {}},
        # ADetailer as A1111 lists an always-on script (clients such as webuiapi look for it there)
        "script-info": lambda: script_info([entry["name"] for entry in upscaler_listing(studio.manager.models_dir)]),
        "scripts": lambda: {"txt2img": [*BOTH_TABS_SCRIPTS, CONTROLNET_SCRIPT, ADETAILER_SCRIPT],
                            "img2img": [*BOTH_TABS_SCRIPTS, *IMG2IMG_SCRIPTS, CONTROLNET_SCRIPT, ADETAILER_SCRIPT]},
    }
    for name, listing in listings.items():
        async def answer(request: Request, listing=listing):
            return JSONResponse(listing())

        answer.__name__ = name.replace("-", "_")
        route("GET", f"/sdapi/v1/{name}")(answer)
    for name in ("refresh-checkpoints", "refresh-loras", "refresh-vae",  # the listings are read on each request
                 "reload-checkpoint"):  # the next job loads its model
        route("POST", f"/sdapi/v1/{name}")(nothing_to_do)

    @route("POST", "/sdapi/v1/unload-checkpoint")
    async def unload_checkpoint(request: Request):
        try:
            studio.manager.unload_all()
        except StudioError as error:  # a job is running
            raise SdApiError(409, str(error)) from None
        return JSONResponse(None)

    def run_depth(image: Image.Image) -> Image.Image:
        """The studio's depth estimator on `image` (/controlnet/detect's depth modules), in the engine's turn."""
        with studio.turns.turn(**job_about("depth", None, *image.size), source=A1111_SOURCE):
            return studio.manager.estimate_depth(image)

    add_controlnet_routes(route, studio, threads, json_object, run_depth)

    def run_upscale(upscaler: str, image: Image.Image, width: int, height: int) -> Image.Image:
        """`image` at width x height by an upscaler model, or by the Upscale tool (extras' ControlNet upscaler), in
        the engine's turn."""
        if upscaler != CONTROLNET_UPSCALER:
            with studio.turns.turn(**job_about("upscale", None, width, height), source=A1111_SOURCE):
                return upscale_with(studio.manager.ready_upscaler(upscaler, image.size, (width, height)), image,
                                    (width, height))
        model = model_for(studio, "upscale", Txt2ImgParams(), state.checkpoint, [])
        settings = {"tool": "upscale", "model": model, "prompt": "", "width": width, "height": height,
                    "seed": EXTRAS_SEED}
        with call_inputs(studio, kept=False) as inputs:  # extras save no result
            requests = requests_from_settings(settings, studio.request_context(),
                                              image_path=inputs.save(image, "api-extras"))
            results = run_job(studio, state, ApiJob("extras", 1), requests, False, threading.Event())  # not watched
        if not results:
            raise SdApiError(409, "The upscale was interrupted before it finished.")
        return results[0].image

    add_extras_routes(route, threads, json_object, run_upscale,
                      lambda name: upscaler_file(studio.manager.models_dir, name) is not None,
                      studio.manager.check_side_run)

    async def not_here(request: Request):
        path = request.url.path
        methods = sorted({method for known in router.routes if getattr(known, "path", None) == path
                          for method in known.methods})
        if methods:  # as A1111 (FastAPI) answers a route asked with another method
            raise SdApiError(405, f"{path} takes {' or '.join(methods)}, not {request.method}.")
        raise SdApiError(404, f"The studio has no {request.method} {path}: it serves A1111's txt2img, img2img, extras "
                              "upscaling, options, progress, interrupt, png-info and the model listings.")

    for method in ("GET", "POST"):
        route(method, "/sdapi/v1/{rest:path}")(not_here)
    return router


def upscaler_listing(models_dir: Path | None) -> list[dict]:
    """/sdapi/v1/upscalers: extras' built-in upscalers (a1111_extras) and the hires fix's, then the upscaler models
    (scale 4, as A1111 lists every ESRGAN model)."""
    return [*({"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 1}
              for name in UPSCALERS),
            *({"name": name, "model_name": name, "model_path": str(path), "model_url": None, "scale": 4}
              for name, path in upscaler_files(models_dir).items())]


def realesrgan_listing(models_dir: Path | None) -> list[dict]:
    """/sdapi/v1/realesrgan-models: the Real-ESRGAN models A1111 names ("R-ESRGAN 4x+") whose files are in the models
    folder, with their scale."""
    files = upscaler_files(models_dir)
    return [{"name": label, "path": str(files[stem]), "scale": 2 if " 2x" in label else 4}
            for label, stem in A1111_LABELS.items() if stem in files]


async def nothing_to_do(request: Request):
    return JSONResponse(None)

