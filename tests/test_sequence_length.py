"""The T5 prompt length: None means the model's default (its T5 tokenizer's model_max_length, at most 512),
resolved once and recorded in the request, metadata and presets so a restored PNG reproduces the image."""

import json
import shutil

import numpy as np
import pytest

from mflux_core import cli
from mflux_core.errors import InvalidRequest
from mflux_core.images.io import save_png_atomic
from mflux_core.manager import ModelManager
from mflux_core.metadata import read_metadata_file, request_from_metadata
from mflux_core.models.text_encoders import TextEncoders
from mflux_core.presets import PresetError, settings_from_request, validate_settings
from mflux_core.request import GenerationRequest

PROMPT = "a red cube on a blue table"


def with_t5_limit(model_folder, tmp_path, model_max_length):
    """A copy of a model folder whose T5 tokenizer config says `model_max_length` (None: the key removed)."""
    folder = shutil.copytree(model_folder, tmp_path / "model")
    config_path = folder / "tokenizer_2" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("model_max_length", None)
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    config_path.write_text(json.dumps(config))
    return folder


def text_to_image(folder, max_sequence_length=None) -> GenerationRequest:
    return GenerationRequest(tool="generate", model=str(folder), prompt=PROMPT, seed=3, steps=2, width=64, height=64,
                             max_sequence_length=max_sequence_length)


def pixels(result) -> np.ndarray:
    return np.asarray(result.image)


def test_the_default_is_the_t5_tokenizers_limit_capped_at_512(tiny_dev, tmp_path):
    assert json.loads((tiny_dev / "tokenizer_2" / "tokenizer_config.json").read_text())["model_max_length"] == 512
    assert TextEncoders.from_folder(tiny_dev).default_sequence_length == 512
    assert TextEncoders.from_folder(with_t5_limit(tiny_dev, tmp_path / "short", 32)).default_sequence_length == 32
    assert TextEncoders.from_folder(with_t5_limit(tiny_dev, tmp_path / "long", 1024)).default_sequence_length == 512
    # Without the key the tokenizer reports an unbounded limit: FLUX.1's 512 applies.
    assert TextEncoders.from_folder(with_t5_limit(tiny_dev, tmp_path / "none", None)).default_sequence_length == 512


def test_none_on_the_fixture_equals_explicit_512(tiny_dev):
    manager = ModelManager()
    default = manager.generate(text_to_image(tiny_dev))
    explicit = manager.generate(text_to_image(tiny_dev, 512))
    assert default.request.max_sequence_length == 512 and default.metadata["request"]["max_sequence_length"] == 512
    assert manager.status()["cached_prompts"] == 1  # the cache keys on the resolved length
    independent = ModelManager().generate(text_to_image(tiny_dev, 512))
    assert np.array_equal(pixels(default), pixels(independent))
    assert np.array_equal(pixels(explicit), pixels(independent))


def test_a_tokenizer_limit_of_32_encodes_32_tokens_and_is_recorded(tiny_dev, tmp_path):
    short = with_t5_limit(tiny_dev, tmp_path, 32)
    encoders = TextEncoders.from_folder(short)
    assert encoders.encode(PROMPT).t5.shape[1] == 32

    manager = ModelManager()
    by_default = manager.generate(text_to_image(short))
    explicit_32 = manager.generate(text_to_image(tiny_dev, 32))
    full_512 = manager.generate(text_to_image(tiny_dev))
    assert np.array_equal(pixels(by_default), pixels(explicit_32))
    assert np.abs(pixels(by_default).astype(int) - pixels(full_512).astype(int)).max() >= 5  # measured: 13 levels
    assert by_default.request.max_sequence_length == 32
    assert full_512.request.max_sequence_length == 512

    # Restored from the PNG and run on the original folder (default 512), the recorded 32 reproduces the image.
    png = save_png_atomic(by_default.image, tmp_path / "short.png", by_default.text_chunks)
    restored = request_from_metadata(read_metadata_file(png))
    assert restored.max_sequence_length == 32
    assert np.array_equal(pixels(manager.generate(restored.with_(model=str(tiny_dev)))), pixels(by_default))
    assert settings_from_request(by_default.request)["max_sequence_length"] == 32


@pytest.mark.parametrize("value", [0, 513, -1])
def test_an_explicit_length_out_of_range_is_refused(value):
    with pytest.raises(InvalidRequest, match="The T5 sequence length must be from 1 to 512 tokens."):
        GenerationRequest(max_sequence_length=value).validated()


@pytest.mark.parametrize("value", [True, 12.0, "64"])
def test_an_explicit_length_that_is_not_a_whole_number_is_refused(value):
    with pytest.raises(InvalidRequest, match="whole number of tokens"):
        GenerationRequest(max_sequence_length=value).validated()


def test_requests_and_presets_accept_null_for_the_models_default():
    assert GenerationRequest().max_sequence_length is None
    assert GenerationRequest(max_sequence_length=None).validated().max_sequence_length is None
    assert GenerationRequest(max_sequence_length=1).validated().max_sequence_length == 1
    assert validate_settings({"max_sequence_length": None}) == {"max_sequence_length": None}
    assert validate_settings({"max_sequence_length": 256}) == {"max_sequence_length": 256}
    with pytest.raises(PresetError, match="'max_sequence_length' must be a whole number from 1 to 512"):
        validate_settings({"max_sequence_length": 0})
    restored = request_from_metadata({"format": 1, "request": {"max_sequence_length": None}})
    assert restored.max_sequence_length is None


def test_the_cli_flag_defaults_to_the_models_length(tmp_path, capsys):
    parser = cli.build_parser()
    assert cli.base_request(parser.parse_args(["generate", "-p", "x"])).max_sequence_length is None
    given = parser.parse_args(["generate", "-p", "x", "--max-sequence-length", "64"])
    assert cli.base_request(given).max_sequence_length == 64
    with pytest.raises(SystemExit):
        parser.parse_args(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "(default: the model's, its T5 tokenizer's limit: 512 for FLUX.1)" in help_text
    # A recorded length comes back with --config-from-metadata, and the flag still wins over it.
    sidecar = tmp_path / "settings.json"
    sidecar.write_text(json.dumps({"format": 1, "request": {"prompt": "x", "max_sequence_length": 32}}))
    from_file = parser.parse_args(["generate", "--config-from-metadata", str(sidecar)])
    assert cli.base_request(from_file).max_sequence_length == 32
    overridden = parser.parse_args(["generate", "--config-from-metadata", str(sidecar), "--max-sequence-length", "77"])
    assert cli.base_request(overridden).max_sequence_length == 77
