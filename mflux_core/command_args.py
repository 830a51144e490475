"""What every generating command does with its parsed flags: the request, the manager, the prompt, the seeds and
the output names. The generate tools (cli.py) and the concept commands (concept/command.py) share these."""

import argparse
import random
import sys
from collections.abc import Callable
from pathlib import Path

from mflux_core.errors import StudioError
from mflux_core.native_sizes import REQUEST_SIZE_STEP
from mflux_core.request import GenerationRequest
from mflux_core.styles import request_styler
from mflux_core.tools.specs import EXTRA, REQUEST, TOOL_SPECS, UPSCALE_FACTOR

# The shared flags whose value may come from --config-from-metadata when not given on the command line (the
# tools' own flags are in their specs: mflux_core/tools/specs.py).
REQUEST_FLAGS = {
    "model": "model", "base_model": "base_model", "modules": "modules", "prompt": "prompt", "steps": "steps",
    "height": "height", "width": "width", "guidance": "guidance", "negative_prompt": "negative_prompt",
    "true_cfg_scale": "true_cfg_scale",
    "lora_paths": "lora_paths", "lora_scales": "lora_scales", "lora_text_encoder_scales": "lora_text_encoder_scales",
    "quantize": "quantize", "dtype": "dtype",
    "init_noise": "init_noise_path", "max_sequence_length": "max_sequence_length",
    "sampler": "sampler", "schedule": "schedule", "variation_seed": "variation_seed",
    "variation_strength": "variation_strength", "vae_tile_size": "vae_tile_size",
}
TOOL_FLAGS = {flag.name: flag for spec in TOOL_SPECS.values() for flag in spec.flags}  # every tool's, by dest


def manager_from_args(args: argparse.Namespace, **settings):
    """The ModelManager a command's flags ask for."""
    from mflux_core.manager import ModelManager

    return ModelManager(models_dir=Path(getattr(args, "models_dir", None) or "models"),
                        low_ram=getattr(args, "low_ram", False), memory_budget_bytes=args.memory_budget, **settings)


def read_prompt(args: argparse.Namespace, fallback: str | None) -> str:
    if args.prompt_file:
        try:
            return Path(args.prompt_file).read_text().strip()
        except OSError as error:
            raise StudioError(f"Cannot read the prompt file {args.prompt_file} ({error.strerror}).") from None
    if args.prompt == "-":
        args.prompt = sys.stdin.read().strip()  # read once: each seed's image asks for the prompt again
    if args.prompt is not None:
        return args.prompt
    if fallback is not None:
        return fallback
    raise StudioError("No prompt given: pass --prompt, --prompt-file or --config-from-metadata.")


def styler(args: argparse.Namespace) -> Callable[[GenerationRequest], GenerationRequest]:
    """--styles: the function merging them into a request's prompts (styles.request_styler), applied to each image's
    request once its prompt is put together (a re-read prompt file's, a prompt list line's, a batch image's)."""
    return request_styler(args.styles, Path(args.styles_dir))


def base_request(args: argparse.Namespace) -> GenerationRequest:
    """Settings from --config-from-metadata, overridden by every flag given on the command line."""
    request = GenerationRequest(tool=args.tool)
    if args.config_from_metadata:
        request = metadata_request(Path(args.config_from_metadata), Path(args.models_dir)).with_(tool=args.tool)
    changes = {}
    for flag, field_name in REQUEST_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            changes[field_name] = tuple(value) if isinstance(value, list) else value
    if args.vae_tiling:
        changes["vae_tiling"] = True
    extra = {}
    for flag in TOOL_FLAGS.values():
        value = getattr(args, flag.name, None)
        if value is None or (value is False and flag.kind == "switch"):  # a toggle's False is a choice
            continue
        if flag.into == REQUEST:
            changes[flag.name] = tuple(value) if isinstance(value, list) else value
        elif flag.into == EXTRA:
            extra[flag.name] = value
    if extra:
        changes["extra"] = {**request.extra, **extra}
    if args.path:
        changes["model"] = args.path
    factor = upscale_factor(args.tool, changes.get("width"), changes.get("height"))
    if factor is not None:
        changes = {key: value for key, value in changes.items() if key not in ("width", "height")}
        changes["extra"] = {**changes.get("extra", request.extra), UPSCALE_FACTOR: factor}
    for side in ("width", "height"):
        changes.update(rounded_side(side, changes.get(side)))
    request = request.with_(**changes)
    if request.variation_strength and request.variation_seed is None:  # as A1111's -1: a random one, recorded
        request = request.with_(variation_seed=random.SystemRandom().randrange(2**32))
    return request


def upscale_factor(tool: str, width, height) -> float | None:
    """mflux's upscale sizes, a factor of the input's ("2x") or "auto" (its own size) for a side: the same for both
    sides (or given for one), as the upscale tool's factor; None when the sides are in pixels."""
    given = [value for value in (width, height) if value is not None]
    if not any(isinstance(value, str) for value in given):
        return None
    if tool != "upscale":
        raise StudioError("--width and --height take pixels here (a factor such as 2x, or auto, is for upscale).")
    factors = {1.0 if value == "auto" else float(value.rstrip("x")) if isinstance(value, str) else None
               for value in given}
    if len(factors) != 1 or None in factors:
        raise StudioError("Give --width and --height as the same factor of the input's size (2x, or auto for its own "
                          "size), or both in pixels.")
    return factors.pop()


def rounded_side(side: str, value) -> dict:
    """A --width or --height that is not a multiple of 16, rounded down to one with a note, as mflux does (its
    README's sizes, and sizes computed from a photo's aspect, are often not)."""
    if not isinstance(value, int) or value <= REQUEST_SIZE_STEP or value % REQUEST_SIZE_STEP == 0:
        return {}
    rounded = value // REQUEST_SIZE_STEP * REQUEST_SIZE_STEP
    print(f"Note: --{side} {value} rounded down to {rounded}, a multiple of {REQUEST_SIZE_STEP}.", file=sys.stderr)
    return {side: rounded}


def metadata_request(path: Path, models_dir: Path) -> GenerationRequest:
    """The settings in a JSON or PNG of ours (exact, input images included), in mflux's --metadata JSON, or in another
    app's image (A1111, ComfyUI, SwarmUI, InvokeAI, Draw Things, mflux) as the page restores them: its LoRAs by
    library name, those not in the library left out with a note on stderr, as its VAE / text encoder files and its
    hires upscaler when the models folder lacks them."""
    from mflux_core.app_metadata import is_mflux_metadata, mflux_command_fields, read_mflux_metadata
    from mflux_core.errors import ModelLoadError
    from mflux_core.lora.library import resolve_lora_path
    from mflux_core.metadata import A1111_KEY, carries_our_settings, read_metadata_file, request_from_metadata
    from mflux_core.presets import found_settings, image_metadata, settings_from_png
    from mflux_core.upscaler_files import has_upscaler, missing_upscaler_note
    from mflux_core.weights.module_files import listed_name

    is_json = path.suffix.lower() == ".json"
    if not is_json and carries_our_settings(path):
        return request_from_metadata(read_metadata_file(path))
    text = path.read_text(errors="replace") if is_json else image_metadata(path).get(A1111_KEY)
    mflux = isinstance(text, str) and is_mflux_metadata(text)
    if is_json and not mflux:
        return request_from_metadata(read_metadata_file(path))
    settings = found_settings(read_mflux_metadata, text, "mflux settings") if mflux else settings_from_png(path)
    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()
              if key in GenerationRequest.field_names()}
    if mflux:  # as mflux's -C: its model and input images too
        fields.update(mflux_command_fields(text))
    request = GenerationRequest(**fields)
    if request.hires_upscaler and not has_upscaler(request.hires_upscaler, models_dir):
        print(missing_upscaler_note(request.hires_upscaler), file=sys.stderr)
        request = request.with_(hires_upscaler=None)
    for name in request.modules:
        if listed_name(name, models_dir) is None:
            print(f"The VAE / text encoder file {name!r} in {path.name} is not in the models folder; it was left out.",
                  file=sys.stderr)
    request = request.with_(modules=tuple(filter(None, (listed_name(name, models_dir) for name in request.modules))))
    kept = []
    for index, name in enumerate(request.lora_paths):
        try:
            resolve_lora_path(name, models_dir)
            kept.append(index)
        except ModelLoadError:
            print(f"The LoRA {name!r} in {path.name} is not in the LoRA library; it was left out.", file=sys.stderr)
    return request.with_(**{key: tuple(getattr(request, key)[i] for i in kept)
                            for key in ("lora_paths", "lora_scales", "lora_text_encoder_scales")
                            if getattr(request, key)})


def seeds_to_run(args: argparse.Namespace, metadata_seed: int) -> list[int]:
    """--seed's seeds, else --auto-seeds random ones (0 or less: off, mflux's default -1), else the metadata's with
    --config-from-metadata, else a random one, as mflux draws a new picture each run (the image records it)."""
    if args.seed:
        if args.auto_seeds and args.auto_seeds > 0:
            print(f"Note: --auto-seeds {args.auto_seeds} is not used: --seed gives the seeds.", file=sys.stderr)
        return list(args.seed)
    rng = random.SystemRandom()
    if args.auto_seeds and args.auto_seeds > 0:
        return [rng.randrange(2**32) for _ in range(args.auto_seeds)]
    return [metadata_seed] if args.config_from_metadata else [rng.randrange(2**32)]


def output_path(template: str, seed: int, several: bool) -> Path:
    if "{seed}" in template:
        return Path(template.replace("{seed}", str(seed)))
    path = Path(template)
    return path.with_name(f"{path.stem}_seed_{seed}{path.suffix or '.png'}") if several else path
