"""`mflux-studio <tool> ...`: the engine from the command line, with mflux's flag names."""

import argparse
import json
import random
import sys
from pathlib import Path

from mflux_core.concept.command import add_concept_parsers, run_concept
from mflux_core.errors import StudioError
from mflux_core.request import GenerationRequest
from mflux_core.training.lora_command import add_train_parser, run_train

# Flags whose value may come from --config-from-metadata when not given on the command line.
REQUEST_FLAGS = {
    "model": "model", "base_model": "base_model", "prompt": "prompt", "steps": "steps", "height": "height",
    "width": "width", "guidance": "guidance", "image_path": "image_path", "image_strength": "image_strength",
    "lora_paths": "lora_paths", "lora_scales": "lora_scales", "quantize": "quantize", "dtype": "dtype",
    "init_noise": "init_noise_path", "max_sequence_length": "max_sequence_length",
    "masked_image_path": "masked_image_path", "outpaint_padding": "outpaint_padding",
    "depth_image_path": "depth_image_path",
    "redux_image_paths": "redux_image_paths", "redux_image_strengths": "redux_image_strengths",
    "controlnet_image_path": "controlnet_image_path", "controlnet_strength": "controlnet_strength",
    "person_image": "image_path", "person_mask": "masked_image_path", "reference_image": "image_path",
}
# Tool-specific settings stored in GenerationRequest.extra: switches that are on, valued flags that are given.
EXTRA_FLAGS = ("kontext_auto_resize", "redux_path", "controlnet_path", "controlnet_skip_canny", "canny_low",
               "canny_high", "upscale_factor", "save_full_image", "lora_style", "garment_image_path", "instruction",
               "ic_edit_lora")
# Tools that supply their own prompt when none is given (CatVTON's trained prompt, IC-Edit's --instruction).
PROMPT_OPTIONAL_TOOLS = ("catvton", "ic-edit")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", help="alias (schnell, dev, krea-dev, ...) or Hugging Face repo id")
    group.add_argument("--path", help="local model folder (diffusers layout) or single .safetensors file")
    group.add_argument("--base-model", help="schnell, dev or a base model folder: supplies what a derivative or a "
                       "single-file checkpoint lacks (VAE, text encoders, scheduler)")
    group.add_argument("--quantize", "-q", type=int, choices=(3, 4, 5, 6, 8), help="quantize weights to N bits")
    group.add_argument("--lora-paths", nargs="+", help="LoRA files (or names found in LORA_LIBRARY_PATH)")
    group.add_argument("--lora-scales", nargs="+", type=float, help="one scale per LoRA")
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


def manager_from_args(args: argparse.Namespace, **settings):
    """The ModelManager a command's flags ask for."""
    from mflux_core.manager import ModelManager

    return ModelManager(models_dir=Path(getattr(args, "models_dir", None) or "models"),
                        low_ram=getattr(args, "low_ram", False), memory_budget_bytes=args.memory_budget, **settings)


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("--prompt", "-p", help="the prompt; '-' reads it from standard input")
    group.add_argument("--prompt-file", help="read the prompt from this file, again before each image")
    group.add_argument("--seed", type=int, nargs="+", help="one or more seeds (one image each)")
    group.add_argument("--auto-seeds", type=int, help="make N images with random seeds")
    group.add_argument("--steps", type=int, help="denoising steps (default: 4 for schnell, 14 otherwise)")
    group.add_argument("--height", type=int, help="image height in pixels, a multiple of 16 "
                       "(default: the model's native size, 1024 for FLUX.1, 64 for the demo models)")
    group.add_argument("--width", type=int, help="image width in pixels, a multiple of 16 "
                       "(default: the model's native size, 1024 for FLUX.1, 64 for the demo models)")
    group.add_argument("--guidance", type=float, help="guidance scale of guidance-distilled models")
    group.add_argument("--max-sequence-length", type=int,
                       help="T5 prompt tokens, 1 to 512 (default: the model's, its T5 tokenizer's limit: 512 for FLUX.1)")
    group.add_argument("--init-noise", help="initial latent noise (.npy, float32, shape (1, C, H/8, W/8))")
    group.add_argument("--output", default="image.png", help="output PNG; a {seed} placeholder is filled in")
    group.add_argument("--metadata", action="store_true", help="also write the settings as a JSON sidecar")
    group.add_argument("--config-from-metadata", help="start from the settings in a PNG or JSON made by us")
    group.add_argument("--stepwise-image-output-dir", help="save the decoded image after every step here")
    group.add_argument("--vae-tiling", action="store_true", help="decode and encode in tiles even when the whole "
                       "image fits the memory budget (beyond it they are tiled anyway)")
    group.add_argument("--verbose", "-v", action="store_true", help="print timings and memory")


def add_image_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image-path", help="input image for image-to-image")
    parser.add_argument("--image-strength", type=float,
                        help="how much of the input image is kept, 0 to below 1 (default 0.4)")


def add_tool_parser(tools, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = tools.add_parser(name, help=help_text, description=help_text)
    add_model_flags(parser)
    add_generation_flags(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mflux-studio", description="FLUX.1 on MLX: generate and edit images.")
    tools = parser.add_subparsers(dest="tool", required=True, metavar="TOOL")
    add_image_flags(add_tool_parser(tools, "generate", "text-to-image, or image-to-image with --image-path"))

    fill = add_tool_parser(tools, "fill", "inpaint inside a mask or outpaint a padded canvas (FLUX.1-Fill)")
    fill.add_argument("--image-path", help="the image to fill")
    fill.add_argument("--image-strength", type=float,
                      help="start from the image instead of pure noise, keeping this much of it (default: off)")
    fill.add_argument("--masked-image-path", help="mask image: white = regenerate")
    fill.add_argument("--outpaint-padding", help="outpaint: padding top,right,bottom,left in px or %% ('0,30%%,20%%,0')")
    fill.add_argument("--keep-unmasked", action="store_true",
                      help="paste the original back outside a feathered mask (off: the image equals diffusers')")

    depth = add_tool_parser(tools, "depth", "restyle with the layout of a depth map (FLUX.1-Depth)")
    depth.add_argument("--depth-image-path", help="the depth map (near = bright)")
    depth.add_argument("--image-path", help="a photo to estimate the depth map from")

    kontext = add_tool_parser(tools, "kontext", "edit a reference image by instruction (FLUX.1-Kontext)")
    kontext.add_argument("--image-path", help="the reference image")
    kontext.add_argument("--kontext-auto-resize", action="store_true",
                         help="resize the reference to the closest resolution Kontext was trained on")

    redux = add_tool_parser(tools, "redux", "variations of reference images, steered by the prompt (FLUX.1-Redux)")
    redux.add_argument("--redux-image-paths", nargs="+", help="one or more reference images")
    redux.add_argument("--redux-image-strengths", nargs="+", type=float,
                       help="one weight per reference image for its tokens (default 1.0 each)")
    redux.add_argument("--redux-path", help="the Redux weights: folder, alias or repo id (default: redux, "
                       "black-forest-labs/FLUX.1-Redux-dev)")

    add_controlnet_parsers(tools)
    add_in_context_parsers(tools)
    add_concept_parsers(tools, add_tool_parser)

    save_depth = tools.add_parser("save-depth", help="estimate a depth map from a photo and save it")
    save_depth.add_argument("--image-path", required=True, help="the photo")
    save_depth.add_argument("--depth-model", default="depth-estimator",
                            help="depth estimator: alias, repo id or folder (Depth Anything format)")
    save_depth.add_argument("--output", default="depth.png", help="where to write the depth map")
    add_models_dir_flag(save_depth)
    add_save_parser(tools)
    add_train_parser(tools, add_models_dir_flag)
    return parser


def add_controlnet_parsers(tools) -> None:
    canny = add_tool_parser(tools, "controlnet", "follow the Canny edges of a control image (FLUX.1 ControlNet on "
                            "dev or schnell)")
    add_controlnet_flags(canny, "canny (InstantX/FLUX.1-dev-Controlnet-Canny)", 0.4)
    canny.add_argument("--controlnet-image-path", help="the control image; its Canny edges steer the layout")
    canny.add_argument("--controlnet-save-canny", action="store_true",
                       help="also save the edges the ControlNet saw, as <output>_controlnet_canny.png")
    canny.add_argument("--controlnet-skip-canny", action="store_true",
                       help="hand the control image to the ControlNet as it is (e.g. an edge map made elsewhere)")
    canny.add_argument("--canny-low", type=float, help="Canny low threshold, OpenCV's units (default 100)")
    canny.add_argument("--canny-high", type=float, help="Canny high threshold, OpenCV's units (default 200)")

    upscale = add_tool_parser(tools, "upscale", "regenerate an image at a larger size (FLUX.1 upscaler ControlNet)")
    add_controlnet_flags(upscale, "upscaler (jasperai/Flux.1-dev-Controlnet-Upscaler)", 0.6)
    upscale.add_argument("--image-path", help="the image to upscale (--controlnet-image-path works too)")
    upscale.add_argument("--controlnet-image-path", help=argparse.SUPPRESS)
    upscale.add_argument("--upscale-factor", type=float,
                         help="without --width/--height: the output is the input's size times this (default 2)")


def add_in_context_parsers(tools) -> None:
    from mflux_core.tools.in_context_lora import LORA_STYLES

    full = "keep the whole diptych (context left, result right) instead of only the right half"
    in_context = add_tool_parser(tools, "in-context", "In-Context LoRA: the reference on the left, a related image "
                                 "generated on the right (FLUX.1-Fill diptych)")
    in_context.add_argument("--image-path", help="the reference image (left panel)")
    in_context.add_argument("--lora-style", choices=tuple(LORA_STYLES),
                            help="one of ali-vilab/In-Context-LoRA's LoRAs (from the Hugging Face cache or downloaded)")
    in_context.add_argument("--save-full-image", action="store_true", help=full)

    catvton = add_tool_parser(tools, "catvton", "virtual try-on: a garment (left) put on a person (right) inside the "
                              "person mask (FLUX.1-Fill diptych)")
    catvton.add_argument("--garment-image", dest="garment_image_path", help="the garment (left panel, kept as is)")
    catvton.add_argument("--person-image", help="the person (right panel)")
    catvton.add_argument("--person-mask", help="mask on the person image: white = where the garment goes")
    catvton.add_argument("--save-full-image", action="store_true", help=full)

    ic_edit = add_tool_parser(tools, "ic-edit", "IC-Edit: edit an image by instruction (RiverZ/normal-lora on "
                              "FLUX.1-Fill, applied automatically)")
    ic_edit.add_argument("--reference-image", help="the image to edit (left panel; resized to 512 px wide)")
    ic_edit.add_argument("--instruction", help="the edit, e.g. 'make the sky pink' (wrapped in the diptych prompt)")
    ic_edit.add_argument("--ic-edit-lora", help="another IC-Edit LoRA file or name (default RiverZ/normal-lora)")
    ic_edit.add_argument("--save-full-image", action="store_true", help=full)


def add_controlnet_flags(parser: argparse.ArgumentParser, default_name: str, default_strength: float) -> None:
    parser.add_argument("--controlnet-path", help=f"the ControlNet: folder, alias or repo id (default: {default_name})")
    parser.add_argument("--controlnet-strength", type=float,
                        help=f"how strongly the ControlNet steers, 0 to 2 (default {default_strength})")


def save_canny_edges(request: GenerationRequest, output: Path) -> Path:
    """The edges the ControlNet saw for `request`, next to the output image."""
    from mflux_core.images.io import save_png_atomic
    from mflux_core.tools.controlnet import control_image

    _, edges = control_image(request)
    return save_png_atomic(edges, output.with_name(f"{output.stem}_controlnet_canny.png"), overwrite=True)


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
    save.add_argument("--lora-paths", nargs="+", default=[], help="LoRAs to bake into the transformer")
    save.add_argument("--lora-scales", nargs="+", type=float, help="one scale per LoRA (default 1)")
    save.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                      help="dtype of the written weights (default: float32 on CPU, bfloat16 on Metal/CUDA)")
    add_memory_budget_flag(save)


def save_model_folder(args: argparse.Namespace) -> Path:
    from mflux_core.backend import resolve_dtype
    from mflux_core.lora.resident import requested_loras
    from mflux_core.memory import MemoryBudget
    from mflux_core.weights.resolve import resolve_model
    from mflux_core.weights.save import save_model

    MemoryBudget(args.memory_budget)
    source = resolve_model(model=args.model, path=args.model_path, base_model=args.base_model,
                           models_dir=Path("models"))
    saved = save_model(Path(args.path), source, dtype=resolve_dtype(args.dtype), bits=args.quantize,
                       loras=requested_loras(args.lora_paths, args.lora_scales or []))
    for report in saved.loras:
        print(report.summary())
    bits = f"{saved.bits}-bit" if saved.bits else "not quantized"
    print(f"Saved {saved.folder} ({bits}; transformer {saved.transformer_bytes / 1e6:.1f} MB, "
          f"T5 {saved.t5_bytes / 1e6:.1f} MB)")
    return saved.folder


def read_prompt(args: argparse.Namespace, fallback: str | None) -> str:
    if args.prompt_file:
        try:
            return Path(args.prompt_file).read_text().strip()
        except OSError as error:
            raise StudioError(f"Cannot read the prompt file {args.prompt_file} ({error.strerror}).") from None
    if args.prompt == "-":
        return sys.stdin.read().strip()
    if args.prompt is not None:
        return args.prompt
    if fallback is not None:
        return fallback
    raise StudioError("No prompt given: pass --prompt, --prompt-file or --config-from-metadata.")


def base_request(args: argparse.Namespace) -> GenerationRequest:
    """Settings from --config-from-metadata, overridden by every flag given on the command line."""
    from mflux_core.metadata import read_metadata_file, request_from_metadata

    request = GenerationRequest(tool=args.tool)
    if args.config_from_metadata:
        request = request_from_metadata(read_metadata_file(Path(args.config_from_metadata))).with_(tool=args.tool)
    changes = {}
    for flag, field_name in REQUEST_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[field_name] = tuple(value) if isinstance(value, list) else value
    for switch in ("keep_unmasked", "vae_tiling"):
        if getattr(args, switch, False):
            changes[switch] = True
    given = {name: getattr(args, name, None) for name in EXTRA_FLAGS}
    extra = {name: value for name, value in given.items() if value is not None and value is not False}
    if extra:
        changes["extra"] = {**request.extra, **extra}
    if args.path:
        changes["model"] = args.path
    return request.with_(**changes)


def seeds_to_run(args: argparse.Namespace, metadata_seed: int) -> list[int]:
    if args.auto_seeds:
        rng = random.SystemRandom()
        return [rng.randrange(2**32) for _ in range(args.auto_seeds)]
    if args.seed:
        return list(args.seed)
    return [metadata_seed]


def output_path(template: str, seed: int, several: bool) -> Path:
    if "{seed}" in template:
        return Path(template.replace("{seed}", str(seed)))
    path = Path(template)
    return path.with_name(f"{path.stem}_seed_{seed}{path.suffix or '.png'}") if several else path


def step_reporter(stepwise: Path, seed: int):
    """The Report for --stepwise-image-output-dir: each step's image saved, download progress on stderr
    (without a Report the manager leaves downloads to huggingface_hub's own progress bars)."""
    from mflux_core.events import Downloading, Step

    stepwise.mkdir(parents=True, exist_ok=True)

    def report(event) -> None:
        if isinstance(event, Downloading):
            print(f"\rDownloading {event.model}: {event.done_bytes / 1e6:,.0f} of {event.total_bytes / 1e6:,.0f} MB",
                  end="", file=sys.stderr, flush=True)
        elif isinstance(event, Step):
            event.preview.save(stepwise / f"seed_{seed}_step_{event.step}of{event.total}.png")

    return report


def run(args: argparse.Namespace) -> list[Path]:
    from mflux_core.images.io import save_png_atomic
    from mflux_core.memory import gb_text

    request = base_request(args)
    fallback = request.prompt if args.config_from_metadata else "" if args.tool in PROMPT_OPTIONAL_TOOLS else None
    request = request.with_(prompt=read_prompt(args, fallback))
    request.validated()
    stepwise = Path(args.stepwise_image_output_dir) if args.stepwise_image_output_dir else None
    manager = manager_from_args(args, max_resident_transformers=args.max_resident_transformers,
                                full_preview_every=1 if stepwise else 0)
    seeds = seeds_to_run(args, request.seed)
    written = []
    for seed in seeds:
        seeded = request.with_(seed=seed, prompt=read_prompt(args, request.prompt)).validated()
        result = manager.generate(seeded, report=step_reporter(stepwise, seed) if stepwise else None)
        path = save_png_atomic(result.image, output_path(args.output, seed, len(seeds) > 1),
                               result.text_chunks, overwrite=True)
        if args.metadata:
            path.with_suffix(".json").write_text(json.dumps(result.metadata, indent=2))
        if getattr(args, "controlnet_save_canny", False):
            print(f"Saved {save_canny_edges(result.request, path)}")
        if args.verbose:
            status = manager.status()
            print(f"seed {seed}: {result.seconds:.2f} s; resident {status['resident_bytes'] / 1e6:.1f} MB; "
                  f"loads {status['loads']}")
            by_kind = ", ".join(f"{r['kind']} {r['bytes'] / 1e6:.1f} MB" for r in status["resident"])
            print(f"model memory ({f'{request.quantize}-bit' if request.quantize else 'not quantized'}): {by_kind}")
            for line in status["loras"]:
                print(line)
            memory = status["last_memory"]
            print(f"memory: {memory['plan']}; measured peak {gb_text(memory['measured_bytes'])} "
                  f"(planned {gb_text(memory['planned_bytes'])}, budget {gb_text(status['memory_budget_bytes'])})")
        print(f"Saved {path}")
        written.append(path)
    return written


def save_depth(args: argparse.Namespace) -> Path:
    from mflux_core.images.io import load_image, save_png_atomic

    manager = manager_from_args(args)
    depth = manager.estimate_depth(load_image(Path(args.image_path)), name=args.depth_model)
    path = save_png_atomic(depth, Path(args.output), overwrite=True)
    print(f"Saved {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"save-depth": save_depth, "save": save_model_folder, "concept": run_concept,
         "concept-from-image": run_concept, "train": run_train}.get(args.tool, run)(args)
    except StudioError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
