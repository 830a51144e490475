"""mflux 0.24's preferred flag spellings, folded into the studio's own flags after parsing, so that a command line
written for `mflux-generate` (0.24) runs unchanged: `--lora PATH [SCALE]`, `--image PATH [STRENGTH]`, `--scheduler`,
`--mlx-cache-limit-gb` and `--vae-tile-size` (a request setting of its own). Its aliases of existing flags
(`--make-conf`, `--config-from-conf`, `--no-metadata`) are spelt where those flags are defined, in cli.py."""

import argparse

from mflux_core.errors import StudioError

MFLUX_SCHEDULER = "linear"  # mflux's only built-in one: FLUX.1's shifted sigmas stepped by Euler, the studio's default


def add_mflux_flags(parser: argparse.ArgumentParser, takes_image: bool) -> None:
    """The 0.24 spellings on a tool's parser; `--image` where the tool takes an input image (--image-path)."""
    group = parser.add_argument_group("mflux 0.24 spellings")
    group.add_argument("--lora", action="append", nargs="+", metavar=("PATH", "SCALE"),
                       help="a LoRA and its scale (default 1), as mflux 0.24 spells it; repeatable, after "
                       "--lora-paths'")
    if takes_image:
        group.add_argument("--image", nargs="+", metavar=("PATH", "STRENGTH"),
                           help="the input image and, where the tool takes one, its strength, as mflux 0.24 spells "
                           "--image-path / --image-strength")
    group.add_argument("--scheduler", help=f"mflux's scheduler: {MFLUX_SCHEDULER} (FLUX.1's, the studio's default; "
                       "--sampler and --schedule choose others)")
    group.add_argument("--mlx-cache-limit-gb", type=float, metavar="GB",
                       help="keep MLX's cache of freed buffers at most this large (default: the memory budget's)")
    group.add_argument("--vae-tile-size", type=int, metavar="PIXELS",
                       help="the side of the VAE's tiles, a multiple of 16 from 128 (default 512; smaller tiles "
                       "need less memory): implies --vae-tiling")


def apply_mflux_flags(args: argparse.Namespace) -> None:
    """Fold the 0.24 spellings into the flags they stand for; a value the studio cannot honour is refused."""
    for entry in args.lora or ():
        path, scale = lora_entry(entry)
        args.lora_paths = [*(args.lora_paths or ()), path]
        args.lora_scales = [*(args.lora_scales or [1.0] * (len(args.lora_paths) - 1)), scale]
    image = getattr(args, "image", None)
    if image:
        if len(image) > 2:
            raise StudioError("--image takes a path and at most a strength: --image photo.jpg 0.6.")
        if args.image_path and args.image_path != image[0]:
            raise StudioError("--image and --image-path name two different images: give one.")
        args.image_path = image[0]
        if len(image) == 2:
            if not hasattr(args, "image_strength"):  # the tool has no --image-strength
                raise StudioError(f"This tool takes no image strength: --image {image[0]} alone.")
            args.image_strength = number(image[1], "--image's strength")
    if args.scheduler is not None and args.scheduler.strip().lower() != MFLUX_SCHEDULER:
        raise StudioError(f"--scheduler {args.scheduler} is not one of the studio's: mflux's {MFLUX_SCHEDULER} is its "
                          "default; choose others with --sampler and --schedule.")
    if args.mlx_cache_limit_gb is not None and not 0 < args.mlx_cache_limit_gb < float("inf"):
        raise StudioError(f"--mlx-cache-limit-gb must be a number of GB above 0, not {args.mlx_cache_limit_gb}.")
    if args.vae_tile_size is not None:
        args.vae_tiling = True  # the size itself is checked with the request


def lora_entry(entry: list[str]) -> tuple[str, float]:
    if len(entry) > 2:
        raise StudioError(f"--lora takes a path and at most a scale, not {' '.join(entry)}: repeat --lora for another.")
    return entry[0], number(entry[1], f"The scale of --lora {entry[0]}") if len(entry) == 2 else 1.0


def number(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise StudioError(f"{what} must be a number, not {text!r}.") from None
