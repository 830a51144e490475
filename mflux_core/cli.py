"""`mflux-studio <tool> ...`: the engine from the command line, with mflux's flag names."""

import argparse
import json
import re
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from mflux_core.command_args import (
    base_request, manager_from_args, output_path, read_prompt, seeds_to_run, styler,
)
from mflux_core.concept.command import add_concept_parsers, run_concept
from mflux_core.controlnet_units import unit_from_flag
from mflux_core.errors import Cancelled, StudioError
from mflux_core.events import Downloading, Step
from mflux_core.lora.library import resolve_lora_path
from mflux_core.mflux_spellings import add_mflux_flags, apply_mflux_flags
from mflux_core.prompt_lines import PROMPT_POSITIONS, line_requests, read_prompt_file, read_prompt_lines
from mflux_core.regions import region_from_box_flag, region_from_mask_flag
from mflux_core.request import GenerationRequest
from mflux_core.settings_schema import DTYPES, MERGE_METHODS, SAMPLER_LABELS as SAMPLERS, SCHEDULE_LABELS as SCHEDULES
from mflux_core.settings_schema import PNG_INFO_FIELDS, WEIGHTED_SUM
from mflux_core.styles import picked_styles, read_styles
from mflux_core.tools.specs import FULL_DIPTYCH, PNG_INFO_FLAGS, TOOL_SPECS, UPSCALER_ONLY, ToolSpec, tool_spec
from mflux_core.training.lora_command import add_train_parser, run_train
from mflux_core.wildcards import expand_prompt
from mflux_core.xyz import (
    AXIS_KINDS, MAX_CELLS, Axis, parse_axis_flag, plot_cells, plot_grids, prompt_matrix, resolve_loras, resolve_styles,
)

def flag_type(parse):
    """An argparse type from a parser that raises StudioError: its sentence becomes argparse's message."""
    def convert(text: str):
        try:
            return parse(text)
        except StudioError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


FLAG_TYPES = {"text": {}, "number": {"type": float}, "paths": {"nargs": "+"}, "numbers": {"nargs": "+", "type": float},
              "switch": {"action": "store_true"}, "toggle": {"action": argparse.BooleanOptionalAction},
              "region": {"action": "append", "type": flag_type(region_from_box_flag)},
              "region_mask": {"action": "append", "type": flag_type(region_from_mask_flag)},
              "controlnet_unit": {"action": "append", "type": flag_type(unit_from_flag),
                                  "metavar": "IMAGE[,KEY=VALUE]"},
              "whole": {"type": int}}


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", help="alias (schnell, dev, krea-dev, ...) or Hugging Face repo id")
    group.add_argument("--path", help="local model folder (diffusers layout) or single .safetensors file")
    group.add_argument("--base-model", help="schnell, dev or a base model folder: supplies what a derivative or a "
                       "single-file checkpoint lacks (VAE, text encoders, scheduler); for a single file also a folder "
                       "holding ComfyUI's ae, clip_l and t5xxl files")
    group.add_argument("--modules", nargs="+", metavar="FILE",
                       help="VAE and text encoder files (ae, clip_l, t5xxl_fp16 or _fp8...: Forge's VAE / Text "
                       "Encoder), each used instead of the model's own of its kind: names in the models folder "
                       "(as its vae/, clip/, text_encoders/, VAE/, text_encoder/ folders hold them) or paths")
    group.add_argument("--quantize", "-q", type=int, choices=(3, 4, 5, 6, 8), help="quantize weights to N bits")
    group.add_argument("--lora-paths", nargs="*",
                       help="LoRA files (or names in LORA_LIBRARY_PATH or <models-dir>/loras); none: without the "
                       "LoRAs --config-from-metadata would restore")
    group.add_argument("--lora-scales", nargs="+", type=float, help="one scale per LoRA")
    group.add_argument("--lora-text-encoder-scales", nargs="+", type=float,
                       help="one scale per LoRA for the part that adapts the text encoders (ComfyUI's strength_clip, "
                       "A1111's <lora:name:te:unet>; default: --lora-scales)")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                       help="compute dtype (default: float32 on CPU, bfloat16 on Metal/CUDA)")
    group.add_argument("--low-ram", action="store_true", help="free the text encoders after encoding")
    add_models_dir_flag(group)
    group.add_argument("--max-resident-transformers", type=at_least_one, default=1,
                       help="transformers kept loaded at once; the least recently used is evicted (default 1)")


def add_models_dir_flag(parser) -> None:
    parser.add_argument("--models-dir", default="models",
                        help="folder of local models, each picked by its folder name (default ./models)")
    add_memory_budget_flag(parser)


def add_memory_budget_flag(parser) -> None:
    parser.add_argument("--memory-budget", type=memory_budget_bytes, metavar="GB",
                        help="memory the studio may use, in GB: larger requests are tiled or refused "
                        "(default: the machine's memory less a margin; Metal: the recommended working set)")


def memory_budget_bytes(text: str) -> int:
    from mflux_core.memory import budget_from_gb

    try:
        return budget_from_gb(text)
    except StudioError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def side_value(text: str) -> int | str:
    """A --width / --height: pixels, or mflux's upscale sizes: a factor of the input's ("2x", "1.5x") or "auto"."""
    if text.strip().lower() == "auto" or re.fullmatch(r"\s*[0-9]*\.?[0-9]+\s*[xX]\s*", text):
        return text.strip().lower()
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of pixels") from None


def plot_axis(text: str) -> Axis:
    try:
        return parse_axis_flag(text)
    except StudioError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    prompts = group.add_mutually_exclusive_group()
    prompts.add_argument("--prompt", "-p", help="the prompt; '-' reads it from standard input")
    prompts.add_argument("--prompt-file", help="read the prompt from this file, again before each image")
    group.add_argument("--wildcards-dir", default="wildcards", help="folder of wildcard files: __name__ in a prompt "
                       "picks a line of name.txt, {a|b} one alternative, drawn from the seed (default ./wildcards)")
    group.add_argument("--styles", nargs="+", metavar="NAME", help="A1111 styles to merge into the prompt and "
                       "negative prompt, in order (a style's {prompt} takes the prompt; others are appended)")
    group.add_argument("--styles-dir", default="styles", help="folder of A1111 styles files (styles.csv: name, "
                       "prompt, negative_prompt; default ./styles)")
    group.add_argument("--seed", type=int, nargs="+", help="one or more seeds (one image each; default: a random one, "
                       "or --config-from-metadata's)")
    group.add_argument("--auto-seeds", type=int, help="make N images with random seeds (without --seed; 0 or less: "
                       "off)")
    group.add_argument("--variation-seed", type=int, help="A1111's variation seed: its noise is blended into the "
                       "seed's by --variation-strength, for a picture close to the seed's (default: a random one; a "
                       "plot's var-seed axis makes several)")
    group.add_argument("--variation-strength", type=float, help="how much of the variation seed's noise, 0 (the "
                       "seed's image, the default) to 1 (the variation seed's)")
    group.add_argument("--steps", type=int, help="denoising steps (default: 4 for schnell, 14 otherwise)")
    group.add_argument("--height", type=side_value, help="image height in pixels, a multiple of 16, or rounded down "
                       "to one (default: the model's native size, 1024 for FLUX.1, 64 for the demo models; upscale "
                       "also takes mflux's 2x or auto)")
    group.add_argument("--width", type=side_value, help="image width in pixels, a multiple of 16, or rounded down to "
                       "one (default: the model's native size, 1024 for FLUX.1, 64 for the demo models; upscale also "
                       "takes mflux's 2x or auto)")
    group.add_argument("--guidance", type=float, help="guidance scale of guidance-distilled models")
    with_true_cfg = ", ".join(name for name, spec in TOOL_SPECS.items() if spec.true_cfg)
    group.add_argument("--negative-prompt", help=f"true CFG: what to steer away from ({with_true_cfg}; needs "
                       "--true-cfg-scale above 1)")
    group.add_argument("--true-cfg-scale", type=float, help="true CFG scale, 1 (off, the default) to 20: above 1 "
                       "with a negative prompt, each step runs the transformer twice (diffusers' true_cfg_scale)")
    group.add_argument("--sampler", choices=SAMPLERS, help="how each step moves along the schedule: euler (the "
                       "default), euler_a (A1111's Euler a: fresh noise from the seed each step), heun (second "
                       "order: two transformer passes a step, one on the last), dpm++2m, dpm++2m_sde (with fresh noise "
                       "from the seed each step) or unipc (predictor-corrector, one pass a step)")
    group.add_argument("--schedule", choices=SCHEDULES, help="how the sigmas are spaced: simple (FLUX's, the "
                       "default), beta, karras or exponential; each keeps FLUX's resolution shift")
    group.add_argument("--max-sequence-length", type=int,
                       help="T5 prompt tokens, 1 to 512 (default: the model's, its T5 tokenizer's limit: 512 for FLUX.1)")
    group.add_argument("--init-noise", help="initial latent noise (.npy, float32, shape (1, C, H/8, W/8))")
    group.add_argument("--output", default="image.png", help="output image: PNG, or JPEG / WebP by its extension "
                       "(.jpg, .webp: the A1111 text in its EXIF); a {seed} placeholder is filled in")
    group.add_argument("--metadata", "--make-conf", action="store_true",
                       help="also write the settings as a JSON sidecar")
    group.add_argument("--no-metadata", "--no-exif", action="store_true",
                       help="write the image without its settings (no PNG text, no EXIF)")
    group.add_argument("--config-from-metadata", "--config-from-conf", "-C",
                       help="start from the settings in a PNG or JSON made by us or by mflux (its --metadata "
                       "file), or in an A1111/Forge, ComfyUI, SwarmUI, InvokeAI or Draw Things image")
    group.add_argument("--battery-percentage-stop-limit", "-B", type=int, metavar="PERCENT",
                       help="stop when a laptop running on its battery is down to this percentage (as mflux's)")
    group.add_argument("--stepwise-image-output-dir", help="save the decoded image after every step here")
    group.add_argument("--vae-tiling", action="store_true", help="decode and encode in tiles even when the whole "
                       "image fits the memory budget (beyond it they are tiled anyway)")
    group.add_argument("--verbose", "-v", action="store_true", help="print timings and memory")
    plot = parser.add_argument_group("X/Y/Z plot: every combination of up to three axes, each image saved, plus a "
                                     "labelled grid (<output>_grid.png, one per Z value)")
    for name in ("x", "y", "z"):
        plot.add_argument(f"--{name}-axis", type=plot_axis, metavar="KIND=VALUES",
                          help=f"the {name.upper()} axis: {', '.join(AXIS_KINDS)}; values '2.5, 3.5', '1-5', "
                          "'0.5-1.0 (+0.25)' or '1-10 [4]' (prompt-sr: the first value is replaced by each; "
                          "prompt-order: the terms in every order)")
    plot.add_argument("--vary-seeds", nargs="+", choices=("x", "y", "z"), default=[], metavar="AXIS",
                      help="A1111's 'Vary seeds for X/Y/Z': along each axis named (x, y, z) the cells' seeds count up")
    plot.add_argument("--max-cells", type=at_least_one, default=MAX_CELLS,
                      help=f"refuse a plot (or prompt matrix) of more cells than this (default {MAX_CELLS})")
    plot.add_argument("--prompt-matrix", action="store_true", help="A1111's prompt matrix: 'a cat|in red|at night' "
                      "makes the prompt with every combination of the parts after the first, one seed, and their grid")
    group.add_argument("--prompts-from", metavar="FILE", help="one job per line of FILE: a prompt, or its settings as "
                       "flags ('--prompt \"a cat\" --seed 5 --steps 4') or JSON ({\"prompt\": \"a cat\", "
                       "\"seed\": 5}); the other flags give what a line leaves out")
    group.add_argument("--prompts-at", choices=PROMPT_POSITIONS, default=PROMPT_POSITIONS[0],
                       help="where a --prompts-from line's prompt (and negative prompt) goes beside --prompt's, as "
                       "A1111's 'Insert prompts at the': start (default) or end")


def add_tool_parser(tools, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = tools.add_parser(name, help=help_text, description=help_text)
    add_model_flags(parser)
    add_generation_flags(parser)
    return parser


def add_spec_flags(parser: argparse.ArgumentParser, spec: ToolSpec) -> None:
    for flag in spec.flags:
        options = {**FLAG_TYPES[flag.kind], **({"choices": flag.choices} if flag.choices else {}),
                   **({"nargs": "?", "const": flag.bare} if flag.bare is not None else {})}
        parser.add_argument(flag.flag, *flag.aliases, dest=flag.name,
                            help=argparse.SUPPRESS if flag.hidden else flag.help, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mflux-studio", description="FLUX.1 on MLX: generate and edit images.")
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    for spec in TOOL_SPECS.values():
        tool = add_tool_parser(tools, spec.name, spec.summary)
        add_spec_flags(tool, spec)
        add_mflux_flags(tool, takes_image=any(flag.name == "image_path" for flag in spec.flags))
    add_concept_parsers(tools, add_tool_parser)

    save_depth = tools.add_parser("save-depth", help="estimate a depth map from a photo and save it")
    save_depth.add_argument("--image-path", required=True, help="the photo")
    save_depth.add_argument("--depth-model", default=None,
                            help="depth estimator: alias, repo id or folder (Depth Anything format; default: "
                            "depth-estimator, else demo-depth-estimator when that one is not on disk)")
    save_depth.add_argument("--output", help="where to write the depth map (default: <photo>_depth.png beside the "
                            "photo, as mflux writes it)")
    add_models_dir_flag(save_depth)
    add_save_parser(tools)
    add_merge_parser(tools)
    add_extract_lora_parser(tools)
    download = tools.add_parser("download", help="download a model into the Hugging Face cache (continues a stopped "
                                "download)", description="download a model into the Hugging Face cache")
    download.add_argument("model", help="alias (dev, fill, ...) or Hugging Face repo id")
    loras = tools.add_parser("loras", help="list the LoRA library: each file's model family, base model and trigger "
                             "words (from its metadata), and whether it can be applied to FLUX.1")
    loras.add_argument("--lora-dir", type=Path, action="append",
                       help="a LoRA folder (repeatable; default $LORA_LIBRARY_PATH and <models-dir>/loras)")
    loras.add_argument("--models-dir", default="models", help="folder of local models (default ./models)")
    upscalers = tools.add_parser("upscalers", help="list the upscaler models (ESRGAN, Real-ESRGAN, 4x-UltraSharp, "
                                 "...) in the models folder's upscalers/ (and A1111's ESRGAN/, RealESRGAN/, ComfyUI's "
                                 "upscale_models/): each one's network and scale")
    upscalers.add_argument("--models-dir", default="models", help="folder of local models (default ./models)")
    add_train_parser(tools, add_models_dir_flag)
    return parser


def save_control_images(request: GenerationRequest, output: Path, engine) -> list[Path]:
    """What each ControlNet saw for `request` (its Canny edges, or a Union ControlNet's control image of the
    unit's type), next to the output image as <output>_controlnet_<type>.png (unit 2 on: _controlnet<N>_<type>)."""
    from mflux_core.images.io import save_png_atomic
    from mflux_core.tools.controlnet import CANNY, control_image, unit_request
    from mflux_core.tools.controlnet_conditioning import control_type

    units = [request, *(unit_request(request, unit) for unit in request.controlnet_units)]
    saved = []
    for number, unit in enumerate(units, 1):
        kind = control_type(unit, CANNY)
        _, seen, _, _ = control_image(unit, kind, engine)
        name = f"{output.stem}_controlnet{'' if number == 1 else number}_{kind}.png"
        saved.append(save_png_atomic(seen, output.with_name(name), overwrite=True))
    return saved


def add_save_parser(tools) -> None:
    text = ("write a model folder (diffusers layout) that loads back with --path OUT: optionally quantized "
            "(-q, recorded in the files, so no -q is needed when loading) and with LoRAs baked in")
    save = tools.add_parser("save", help=text, description=text)
    save.add_argument("--path", required=True, help="the folder to write (must not exist or be empty)")
    source = save.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", "-m", help="the model to read: alias (schnell, dev, ...) or Hugging Face repo id")
    source.add_argument("--model-path", help="the model to read: a local folder (diffusers layout) or a single "
                        ".safetensors transformer file (with --base-model)")
    save.add_argument("--base-model", help="supplies the VAE, text encoders and scheduler of a single-file model")
    save.add_argument("--quantize", "-q", type=int, choices=(3, 4, 5, 6, 8),
                      help="quantize the transformer's and T5's linear layers to N bits (groups of 64)")
    save.add_argument("--lora-paths", nargs="+", default=[],
                      help="LoRAs to bake into the transformer (and the text encoders, for those that adapt them)")
    save.add_argument("--lora-scales", nargs="+", type=float, help="one scale per LoRA (default 1)")
    save.add_argument("--lora-text-encoder-scales", nargs="+", type=float,
                      help="one scale per LoRA for what it bakes into the text encoders (default: --lora-scales)")
    add_dtype_flag(save, "the written weights")
    add_memory_budget_flag(save)


def add_dtype_flag(parser, what: str) -> None:
    parser.add_argument("--dtype", choices=DTYPES,
                        help=f"dtype of {what} (default: float32 on CPU, bfloat16 on Metal/CUDA)")


def save_model_folder(args: argparse.Namespace) -> Path:
    from mflux_core.backend import resolve_dtype
    from mflux_core.lora.resident import requested_loras
    from mflux_core.memory import MemoryBudget
    from mflux_core.weights.resolve import resolve_model
    from mflux_core.weights.save import save_model

    MemoryBudget(args.memory_budget)
    models_dir = Path("models")
    source = resolve_model(model=args.model, path=args.model_path, base_model=args.base_model, models_dir=models_dir)
    with progress_bar() as show:
        saved = save_model(Path(args.path), source, dtype=resolve_dtype(args.dtype), bits=args.quantize,
                           loras=requested_loras(args.lora_paths, args.lora_scales or [],
                                                 args.lora_text_encoder_scales or []), models_dir=models_dir,
                           on_progress=show)
    for report in saved.loras:
        print(report.summary())
    print_saved(saved)
    return saved.folder


def add_merge_parser(tools) -> None:
    text = ("merge FLUX.1 transformers as A1111's Checkpoint Merger does, into a new model folder: weighted sum "
            "A x (1 - M) + B x M, or add difference A + (B - C) x M; A's VAE, text encoders and scheduler are kept")
    merge = tools.add_parser("merge", help=text, description=text)
    merge.add_argument("--path", required=True, help="the folder to write (must not exist or be empty)")
    for letter, what in (("a", "primary model A (its architecture and other components are the result's)"),
                         ("b", "secondary model B"), ("c", "tertiary model C (add difference only)")):
        merge.add_argument(f"--model-{letter}", required=letter != "c",
                           help=f"the {what}: alias, Hugging Face repo id or local folder")
    merge.add_argument("--base-model", help="supplies the VAE, text encoders and scheduler when A is a single "
                       ".safetensors transformer file (B and C may be single files as they are)")
    merge.add_argument("--method", choices=list(MERGE_METHODS), default=WEIGHTED_SUM,
                       help="weighted-sum (default) or add-difference")
    merge.add_argument("--multiplier", "-M", type=float, default=0.5, help="M (default 0.5)")
    merge.add_argument("--quantize", "-q", type=int, choices=(3, 4, 5, 6, 8),
                       help="quantize the result's transformer and T5 to N bits")
    add_dtype_flag(merge, "the merge and the written weights")
    add_memory_budget_flag(merge)


def merge_model_folder(args: argparse.Namespace) -> Path:
    from mflux_core.backend import resolve_dtype
    from mflux_core.memory import MemoryBudget
    from mflux_core.weights.merge import check_merge, model_sources, merge_transformers
    from mflux_core.weights.save import check_new_folder, save_model

    budget, models_dir, dtype = MemoryBudget(args.memory_budget), Path("models"), resolve_dtype(args.dtype)
    out = check_new_folder(Path(args.path))
    sources = model_sources([name for name in (args.model_a, args.model_b, args.model_c) if name], models_dir,
                            args.base_model)
    check_merge(args.method, args.multiplier, sources, dtype, budget.bytes, args.quantize)
    with progress_bar() as show:
        transformer, report = merge_transformers(args.method, args.multiplier, sources, dtype, show)
        saved = save_model(out, sources[0][1], dtype=dtype, bits=args.quantize, on_progress=show,
                           transformer=transformer)
    print(f"Merged ({MERGE_METHODS[args.method]}, M {args.multiplier:g}): {report.summary()}")
    print_saved(saved)
    return saved.folder


def add_extract_lora_parser(tools) -> None:
    text = ("extract a LoRA from a tuned FLUX.1 transformer and its base (sd-scripts' flux_extract_lora, ComfyUI's "
            "Extract and Save Lora): each layer's change cut to --rank by SVD, written as a diffusers / PEFT file")
    extract = tools.add_parser("extract-lora", help=text, description=text)
    extract.add_argument("--model-tuned", required=True, help="the tuned model: alias, repo id, folder or single "
                         ".safetensors transformer file")
    extract.add_argument("--model-base", required=True, help="the model it was tuned from (dev, schnell, ...)")
    extract.add_argument("--rank", type=int, default=32, help="the LoRA's rank (default 32): higher keeps more of "
                         "the change in a larger file")
    extract.add_argument("--output", required=True, help="the .safetensors file to write (must not exist)")
    add_dtype_flag(extract, "the comparison and the written LoRA")
    add_memory_budget_flag(extract)


def extract_lora_file(args: argparse.Namespace) -> Path:
    from mflux_core.backend import resolve_dtype
    from mflux_core.lora.extract import extract_lora, new_lora_path, save_lora
    from mflux_core.memory import MemoryBudget
    from mflux_core.weights.merge import model_sources

    MemoryBudget(args.memory_budget)  # MLX's limits: a layer at a time stays far below them
    output = new_lora_path(Path(args.output))
    sources = model_sources([args.model_tuned, args.model_base], Path("models"), whole_first=False)
    with progress_bar() as show:
        tensors, report = extract_lora(sources, args.rank, resolve_dtype(args.dtype), show)
    path = save_lora(output, tensors)
    print(f"LoRA {path.name}: {report.summary(args.rank)}")
    print(f"Saved {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return path


@contextmanager
def progress_bar():
    """A progress bar on stderr and the on_progress(done, total, what) that moves it (saving, merging)."""
    with tqdm(desc="Loading", unit="part", file=sys.stderr, leave=False) as bar:
        def show(done: int, total: int, what: str) -> None:
            bar.set_description(what, refresh=False)
            bar.total = total or None
            bar.update(done - bar.n)

        yield show


def print_saved(saved) -> None:
    bits = f"{saved.bits}-bit" if saved.bits else "not quantized"
    print(f"Saved {saved.folder} ({bits}; transformer {saved.transformer_bytes / 1e6:.1f} MB, "
          f"T5 {saved.t5_bytes / 1e6:.1f} MB)")


def stop_on_low_battery(limit: int | None) -> None:
    """Cancelled when a limit is set and the machine runs on a battery at or below it (--battery-percentage-stop-limit,
    as mflux's; psutil reads the battery where the system has one)."""
    import psutil

    battery = psutil.sensors_battery() if limit is not None else None
    if battery is not None and not battery.power_plugged and battery.percent <= limit:
        raise Cancelled(f"Stopped: the battery is at {battery.percent:.0f}%, at or below "
                        f"--battery-percentage-stop-limit {limit}.")


class ConsoleProgress:
    """The CLI's Report: a progress bar on stderr for the denoise steps (and one in bytes while a model
    downloads), and each step's image saved to `stepwise` when asked (--stepwise-image-output-dir)."""

    def __init__(self, seed: int, stepwise: Path | None = None, battery_limit: int | None = None):
        self.seed, self.stepwise, self.battery_limit = seed, stepwise, battery_limit
        self.bar: tqdm | None = None
        if stepwise is not None:
            try:
                stepwise.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise StudioError(f"Cannot make the folder {stepwise} for the step images ({os_reason(error)}).") \
                    from None

    def __call__(self, event) -> None:
        if isinstance(event, Downloading):
            self._advance(f"Downloading {event.model}", event.total_bytes, event.done_bytes, unit="B")
        elif isinstance(event, Step):
            stop_on_low_battery(self.battery_limit)
            self._advance(f"seed {self.seed}{f', {event.stage}' if event.stage else ''}", event.total, event.step,
                          unit="step")
            if self.stepwise is not None and event.preview is not None:  # an upscaler model's tiles have none
                event.preview.save(self.stepwise / f"seed_{self.seed}_step_{event.step}of{event.total}.png")

    def _advance(self, what: str, total: int, done: int, unit: str) -> None:
        if self.bar is None or self.bar.desc != what:
            self.close()
            resumed = done if unit == "B" else 0  # bytes an interrupted download left on disk: not in the speed
            self.bar = tqdm(desc=what, total=total, initial=resumed, unit=unit, unit_scale=unit == "B",
                            file=sys.stderr, leave=False)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(args: argparse.Namespace) -> list[Path]:
    apply_mflux_flags(args)
    request = base_request(args)
    image_dir = getattr(args, "image_dir", None)
    needs_no_prompt = tool_spec(args.tool).prompt_optional or args.prompts_from or request.extra.get(UPSCALER_ONLY) \
        or (image_dir and "prompt" in (args.png_info or ()))
    fallback = request.prompt if args.config_from_metadata else "" if needs_no_prompt else None
    request = request.with_(prompt=read_prompt(args, fallback))
    styled = styler(args)
    styled(request).validated()
    if args.negative_prompt and request.true_cfg_scale <= 1:
        print("Note: --negative-prompt is not used: FLUX.1's guidance is distilled, so only true CFG reads it "
              "(--true-cfg-scale above 1, twice the time per step).", file=sys.stderr)
    stepwise = Path(args.stepwise_image_output_dir) if args.stepwise_image_output_dir else None
    manager = manager_from_args(args, max_resident_transformers=args.max_resident_transformers,
                                full_preview_every=1 if stepwise else 0, step_previews=stepwise is not None)
    if args.mlx_cache_limit_gb is not None:
        from mflux_core.memory import GB

        manager.budget.limit_cache(int(args.mlx_cache_limit_gb * GB))
    seeds = seeds_to_run(args, request.seed)
    axes = [axis for axis in (args.x_axis, args.y_axis, args.z_axis) if axis is not None]
    for flag in ("png_info", "mask_dir"):
        if getattr(args, flag, None) and not image_dir:
            raise StudioError(f"--{flag.replace('_', '-')} goes with --image-dir: give that folder too.")
    if image_dir:
        if axes or args.prompt_matrix or args.prompts_from or request.image_path or request.masked_image_path:
            raise StudioError("--image-dir runs every image in the folder with the same settings: it does not combine "
                              "with --image-path, --masked-image-path, --prompts-from or a plot.")
        return run_image_batch(args, manager, request, seeds, stepwise, styled)
    if args.prompts_from:
        if axes or args.prompt_matrix:
            raise StudioError("--prompts-from runs its lines one by one: it does not combine with a plot.")
        return run_prompt_lines(args, manager, request, seeds, stepwise, styled)
    if axes or args.prompt_matrix:
        if len(seeds) > 1:
            raise StudioError("A plot takes one seed; for several, make the seed an axis (--x-axis seed=1-4).")
        return run_plot(args, manager, request.with_(seed=seeds[0]), axes, stepwise)
    written = []
    for seed in seeds:
        seeded = styled(request.with_(seed=seed, prompt=read_prompt(args, request.prompt)))
        seeded = seeded.with_(prompt=expand_prompt(seeded.prompt, seed, Path(args.wildcards_dir))).validated()
        path, _ = generate_and_save(args, manager, seeded, output_path(args.output, seed, len(seeds) > 1), stepwise)
        written.append(path)
    return written


def generate_and_save(args: argparse.Namespace, manager, request: GenerationRequest, output: Path,
                      stepwise: Path | None):
    """One image: generated with a progress bar, saved with its metadata (and what the flags ask for); the
    prompt's `<lora:name:scale>` tags are LoRAs, as in A1111."""
    from mflux_core.images.io import save_image_atomic
    from mflux_core.lora.a1111 import with_prompt_loras
    from mflux_core.memory import gb_text
    from mflux_core.tools.in_context import right_half

    request = with_prompt_loras(request).validated()
    progress = ConsoleProgress(request.seed, stepwise, args.battery_percentage_stop_limit)
    try:
        result = manager.generate(request, report=progress)
    finally:
        progress.close()
    for note in result.notes:
        print(f"Note: {note}", file=sys.stderr)
    whole = result.image if request.extra.get(FULL_DIPTYCH.name) else None
    image = result.image if whole is None else right_half(whole)  # as mflux: the result, and the diptych beside it
    text_chunks = None if args.no_metadata else result.text_chunks
    path = save_image_atomic(image, output, text_chunks)  # as mflux: image_1.png beside image.png
    if whole is not None:
        print(f"Saved {save_image_atomic(whole, path.with_name(f'{path.stem}_full{path.suffix}'), text_chunks)}")
    if args.metadata:
        sidecar = path.with_suffix(".json")
        try:
            sidecar.write_text(json.dumps(result.metadata, indent=2))
        except OSError as error:  # the image is saved: say so, as mflux does
            print(f"Warning: could not write the metadata to {sidecar} ({os_reason(error)}).", file=sys.stderr)
    if getattr(args, "controlnet_save_canny", False):
        for saved in save_control_images(result.request, path, manager):
            print(f"Saved {saved}")
    if args.verbose:
        status = manager.status()
        print(f"seed {request.seed}: {result.seconds:.2f} s; resident {status['resident_bytes'] / 1e6:.1f} MB; "
              f"loads {status['loads']}")
        by_kind = ", ".join(f"{r['kind']} {r['bytes'] / 1e6:.1f} MB" for r in status["resident"])
        print(f"model memory ({f'{request.quantize}-bit' if request.quantize else 'not quantized'}): {by_kind}")
        for line in status["loras"]:
            print(line)
        memory = status["last_memory"]
        print(f"memory: {memory['plan']}; measured peak {gb_text(memory['measured_bytes'])} "
              f"(planned {gb_text(memory['planned_bytes'])}, budget {gb_text(status['memory_budget_bytes'])})")
    print(f"Saved {path}")
    return path, result.image


def run_plot(args: argparse.Namespace, manager, request: GenerationRequest, axes: list[Axis],
             stepwise: Path | None) -> list[Path]:
    """Every cell of the plot (validated before the first runs), then its grids; an interrupted plot keeps
    the cells that finished and grids them."""
    from mflux_core.images.io import png_text_of, save_png_atomic

    wildcards = Path(args.wildcards_dir)
    prompt = expand_prompt(request.prompt, request.seed, wildcards)
    if args.prompt_matrix:
        if axes:
            raise StudioError("A prompt matrix makes its own axes: leave out --x-axis, --y-axis and --z-axis.")
        prompt, axes = prompt_matrix(prompt, args.max_cells)
    axes = resolve_styles(axes, read_styles(Path(args.styles_dir)))
    cells = plot_cells(request.with_(prompt=prompt),
                       resolve_loras(axes, lambda name: str(resolve_lora_path(name, Path(args.models_dir)))),
                       args.max_cells, picked_styles(args.styles, Path(args.styles_dir)),
                       # a style's own wildcards drawn as the prompt's were
                       lambda cell: cell.with_(prompt=expand_prompt(cell.prompt, request.seed, wildcards)),
                       tuple(name in args.vary_seeds for name in "xyz"))
    print(f"Plot: {len(cells)} cells ({' x '.join(f'{len(a.values)} {a.label}' for a in axes)})")
    base = Path(args.output.replace("{seed}", str(request.seed)))
    written, images = [], {}
    try:
        for cell in cells:
            x, y, z = cell.position
            path, images[cell.position] = generate_and_save(
                args, manager, cell.request, base.with_name(f"{base.stem}_x{x}_y{y}_z{z}.png"), stepwise)
            written.append(path)
    finally:
        first = png_text_of(written[0]) if written and not args.no_metadata else None  # as A1111's grids
        for index, grid in enumerate(plot_grids(axes, images)):
            name = f"{base.stem}_grid{f'_z{index}' if len(axes) == 3 else ''}.png"
            written.append(save_png_atomic(grid, base.with_name(name), first, overwrite=True))
            print(f"Saved {written[-1]}")
    return written


def run_prompt_lines(args: argparse.Namespace, manager, request: GenerationRequest, seeds: list[int],
                     stepwise: Path | None, styled: Callable[[GenerationRequest], GenerationRequest]) -> list[Path]:
    """Every line's images (every line validated before the first runs), each named by its line and seed."""
    lines = read_prompt_lines(read_prompt_file(Path(args.prompts_from)))
    for line in lines:
        for item in line.ignored:
            print(f"Note: line {line.number}: {item}", file=sys.stderr)
    requests = line_requests(request, lines, seeds, wildcards=Path(args.wildcards_dir), styled=styled,
                             position=args.prompts_at)
    print(f"Prompt list: {len(lines)} lines, {len(requests)} images")
    written = []
    for number, line_request in requests:
        output = output_path(args.output, line_request.seed, several=True)
        path, _ = generate_and_save(args, manager, line_request, output.with_name(f"{output.stem}_line{number}.png"),
                                    stepwise)
        written.append(path)
    return written


def run_image_batch(args: argparse.Namespace, manager, request: GenerationRequest, seeds: list[int],
                    stepwise: Path | None, styled: Callable[[GenerationRequest], GenerationRequest]) -> list[Path]:
    """The tool on every image in --image-dir (Fill: with its mask from --mask-dir; each file read and every request
    validated before the first runs), each saved as <output>_<image name>.png (and _seed_<seed> when an image has
    several)."""
    from mflux_core.image_batch import batch_requests, images_in, masks_for
    from mflux_core.images.io import load_image, load_mask

    paths = images_in(Path(args.image_dir))
    mask_dir = getattr(args, "mask_dir", None)
    masks = masks_for(paths, images_in(Path(mask_dir)), f"The masks in {mask_dir}") if mask_dir else []
    for path in paths:
        load_image(path).close()
    for mask in set(masks):
        load_mask(mask).close()
    inputs = [{"image_path": str(path), **({"masked_image_path": str(masks[i])} if masks else {})}
              for i, path in enumerate(paths)]
    png_info = tuple(label for label, flag in zip(PNG_INFO_FIELDS, PNG_INFO_FLAGS) if flag in (args.png_info or ()))
    requests = batch_requests(request, [(path.name, path, fields) for path, fields in zip(paths, inputs)], png_info,
                              seeds, wildcards=Path(args.wildcards_dir), styled=styled)
    several = len(requests) > len(paths)
    print(f"Batch: {len(paths)} images, {len(requests)} results")
    written = []
    for name, image_request in requests:
        output = Path(args.output.replace("{seed}", str(image_request.seed)))
        seed = f"_seed_{image_request.seed}" if several else ""
        path, _ = generate_and_save(args, manager, image_request,
                                    output.with_name(f"{output.stem}_{Path(name).stem}{seed}.png"), stepwise)
        written.append(path)
    return written


def save_depth(args: argparse.Namespace) -> Path:
    from mflux_core.images.io import load_image, save_png_atomic

    manager = manager_from_args(args)
    photo = Path(args.image_path)
    depth = manager.estimate_depth(load_image(photo), name=args.depth_model)
    path = save_png_atomic(depth, Path(args.output or photo.with_name(f"{photo.stem}_depth.png")))
    print(f"Saved {path}")
    return path


def download_model(args: argparse.Namespace) -> Path:
    from mflux_core.downloads import fetch_repo, repo_id_of

    repo_id = repo_id_of(args.model)
    with tqdm(desc=f"Downloading {repo_id}", unit="B", unit_scale=True, file=sys.stderr, leave=False) as bar:
        def advance(done: int, total: int) -> None:
            if bar.total is None:  # the first report: what an interrupted download left on disk, not in the speed
                bar.initial = bar.n = bar.last_print_n = done
            bar.total = total
            bar.update(done - bar.n)

        try:
            folder = fetch_repo(repo_id, on_download=advance)
        except KeyboardInterrupt:
            raise StudioError(f"Stopped downloading {repo_id}: what was downloaded is kept, the file cut short "
                              "included; run the command again to continue from there.") from None
    print(f"Downloaded {repo_id} into {folder}")
    return folder


def list_loras(args: argparse.Namespace) -> None:
    from mflux_core.lora.info import describe_lora_file
    from mflux_core.lora.library import library_names, lora_folders

    missing = [folder for folder in args.lora_dir or () if not folder.is_dir()]
    if missing:
        raise StudioError(f"--lora-dir {missing[0]} is not a folder.")
    names = library_names(args.lora_dir or lora_folders(Path(args.models_dir)))
    if not names:
        print("No LoRA files found (set LORA_LIBRARY_PATH, or put them in <models-dir>/loras).")
    for name, path in names.items():
        print(f"{name}  ({path})\n    {describe_lora_file(path, markdown=False)}")


def list_upscalers(args: argparse.Namespace) -> None:
    from mflux_core.upscaler_files import upscaler_files
    from mflux_core.upscaler_models import read_upscaler

    files = upscaler_files(Path(args.models_dir))
    if not files:
        print(f"No upscaler models found (put .pth or .safetensors files into {Path(args.models_dir) / 'upscalers'}).")
    for name, path in files.items():
        try:
            described = read_upscaler(path).description
        except StudioError as error:
            described = str(error)
        print(f"{name}  ({path})\n    {described}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"save-depth": save_depth, "save": save_model_folder, "merge": merge_model_folder,
         "extract-lora": extract_lora_file, "concept": run_concept,
         "concept-from-image": run_concept, "train": run_train, "loras": list_loras,
         "upscalers": list_upscalers,
         "download": download_model}.get(args.tool, run)(args)
    except StudioError as error:
        print(f"Error: {getattr(error, 'cli_text', error)}", file=sys.stderr)  # downloads word it for the CLI
        return 1
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130  # as a shell reports Ctrl-C
    except OSError as error:  # a folder or file the command was pointed at that cannot be made, read or written
        where = f"{error.filename}: " if error.filename else ""
        print(f"Error: {where}{os_reason(error)}.", file=sys.stderr)
        return 1
    return 0


def os_reason(error: OSError) -> str:
    return error.strerror or str(error)


if __name__ == "__main__":
    sys.exit(main())
