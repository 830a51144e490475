"""`mflux-studio concept` and `mflux-studio concept-from-image` (mflux's flag names)."""

import argparse
import sys
from pathlib import Path

from mflux_core.command_args import (
    base_request, manager_from_args, output_path, read_prompt, seeds_to_run, styler,
)


def add_concept_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("concept attention")
    group.add_argument("--concept", nargs="+", required=True,
                       help="one or more concepts (words or short phrases), one heatmap each; several compete "
                            "for every region")
    group.add_argument("--heatmap-layer-indices", nargs="+", type=int,
                       help="double-stream blocks to read (default 15 16 17 18, clamped to the model's depth)")
    group.add_argument("--heatmap-timesteps", nargs="+", type=int,
                       help="steps to read, counted from 0 (default: every step that runs)")


def add_concept_parsers(tools, add_tool_parser) -> None:
    concept = add_tool_parser(tools, "concept", "generate an image and heatmaps of where concepts are in it "
                              "(ConceptAttention)")
    add_concept_flags(concept)
    concept.add_argument("--image-path", help="input image for image-to-image")
    concept.add_argument("--image-strength", type=float,
                         help="how much of the input image is kept, 0 to below 1 (default 0.4)")
    from_image = add_tool_parser(tools, "concept-from-image",
                                 "heatmaps of where concepts are in a given image (ConceptAttention)")
    add_concept_flags(from_image)
    from_image.add_argument("--image-path", "--input-image-path", required=True,
                            help="the image to map the concepts in")


def run_concept(args: argparse.Namespace) -> list[Path]:
    from mflux_core.concept.run import ConceptSettings, concepts_from_image, generate_with_concepts, save_concept_result
    from mflux_core.lora.a1111 import with_prompt_loras
    from mflux_core.wildcards import expand_prompt

    request = base_request(args).with_(tool="generate")
    request = request.with_(prompt=read_prompt(args, request.prompt if args.config_from_metadata else None))
    request = styler(args)(request)
    settings = ConceptSettings(tuple(args.concept), tuple(args.heatmap_layer_indices or ()),
                               tuple(args.heatmap_timesteps or ()))
    manager = manager_from_args(args)
    seeds = seeds_to_run(args, request.seed)
    written = []
    for seed in seeds:  # each image's wildcards drawn from its seed, its prompt's <lora:...> tags its LoRAs
        seeded = with_prompt_loras(request.with_(
            seed=seed, prompt=expand_prompt(request.prompt, seed, Path(args.wildcards_dir))))
        if args.tool == "concept-from-image":
            result = concepts_from_image(manager, seeded, settings)
        else:
            result = generate_with_concepts(manager, seeded, settings)
        for note in result.notes:
            print(f"Note: {note}", file=sys.stderr)
        if args.no_metadata:
            result.text_chunks = {}
        paths = save_concept_result(result, output_path(args.output, seed, len(seeds) > 1))
        layers = " ".join(map(str, result.layers))
        steps = " ".join(map(str, result.timesteps))
        print(f"Concepts {', '.join(result.concepts)}: layers {layers}, steps {steps}, {result.seconds:.1f} s")
        for path in paths:
            print(f"Saved {path}")
        written.extend(paths)
    return written
