"""The tool registry (mflux_core/tools/specs.py) is the one place a tool is declared: everything derived from it
agrees with it, and every spec points at real code, fields and models."""

import importlib
import inspect

import pytest

from mflux_core.cli import build_parser
from mflux_core.command_args import base_request
from mflux_core.registry import ALIAS_KINDS, FLUX_PIPELINE_KINDS
from mflux_core.request import TOOLS, GenerationRequest
from mflux_core.tools.specs import COMMAND, EXTRA, KONTEXT_AUTO_RESIZE, REQUEST, TOOL_NAMES, TOOL_SPECS
from mflux_core.weights.resolve import ALIASES, DEMO_MODELS

MODEL_KINDS = {*FLUX_PIPELINE_KINDS.values(), *ALIAS_KINDS.values(), "single-file"}


def test_request_validation_and_the_cli_offer_exactly_the_registered_tools():
    assert TOOLS == TOOL_NAMES
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(TOOL_NAMES) <= set(subcommands)
    for name in TOOL_NAMES:
        GenerationRequest(tool=name).validated()


@pytest.mark.parametrize("name", TOOL_NAMES)
def test_every_spec_points_at_real_code_fields_and_models(name):
    spec = TOOL_SPECS[name]
    build_inputs = importlib.import_module(f"mflux_core.tools.{spec.module}").build_inputs
    assert list(inspect.signature(build_inputs).parameters) == ["model", "request", "engine"]
    assert spec.model in ALIASES and set(spec.model_kinds) <= MODEL_KINDS
    assert spec.demo_model is None or spec.demo_model in DEMO_MODELS
    assert 0 <= spec.guidance <= 100
    for flag in spec.flags:
        assert flag.into in (REQUEST, EXTRA, COMMAND)
        if flag.into == REQUEST:
            assert flag.name in GenerationRequest.field_names(), flag.flag


def test_each_flag_lands_where_its_spec_says():
    parser = build_parser()
    args = parser.parse_args(["catvton", "-p", "x", "--person-image", "p.png", "--person-mask", "m.png",
                              "--garment-image", "g.png", "--save-full-image"])
    request = base_request(args)
    assert (request.image_path, request.masked_image_path) == ("p.png", "m.png")
    assert request.extra == {"garment_image_path": "g.png", "save_full_image": True}

    args = parser.parse_args(["controlnet", "-p", "x", "--controlnet-image-path", "c.png", "--canny-low", "50",
                              "--controlnet-save-canny"])
    request = base_request(args)
    assert request.controlnet_image_path == "c.png" and request.extra == {"canny_low": 50.0}
    assert args.controlnet_save_canny  # a command's own flag: not part of the request

    def kontext_extra(*flags):
        return base_request(parser.parse_args(["kontext", "-p", "x", "--image-path", "r.png", *flags])).extra

    # a toggle records either choice; neither leaves the tool's default (resize a reference larger than Kontext's)
    assert kontext_extra() == {}
    assert kontext_extra("--no-kontext-auto-resize") == {KONTEXT_AUTO_RESIZE: False}
    assert kontext_extra("--kontext-auto-resize") == {KONTEXT_AUTO_RESIZE: True}
