"""Bad input through the engine's doors: the Python API (ModelManager.generate), the CLI, presets and
PNG metadata. Every input ends in an image or in one clear sentence (a StudioError), never in another
exception, and never leaves a partial or temp file behind. The preset parser and the PNG-metadata
reader are fuzzed with hypothesis. The same catalogue through gradio_client is in
tests/test_reliability_server.py."""

import errno
import json
import os
import shutil
import string
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from safetensors.numpy import load_file, save_file

from mflux_core import cli
from mflux_core.errors import StudioError
from mflux_core.images import io as image_io
from mflux_core.manager import ModelManager
from mflux_core.metadata import read_metadata_file, request_from_metadata
from mflux_core.presets import (PresetError, list_presets, parse_preset, preset_file_name, read_preset_file,
                                settings_from_a1111, settings_from_png, settings_from_request,
                                validate_settings)
from mflux_core.request import GenerationRequest
from tests.fixtures.bad_inputs import (IMAGE_CASES, LORA_CASES, MASK_CASES, SETTING_CASES, malicious_png_chunks,
                                       truncated_model, write_images, write_loras)

FAST = dict(steps=1, width=32, height=32, seed=1, prompt="a red boat")


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_schnell):
    root = tmp_path_factory.mktemp("bad-inputs")
    return {**write_images(root / "images"), **write_loras(root / "loras", tiny_schnell)}


@pytest.fixture(scope="module")
def manager(tiny_schnell):
    return ModelManager(models_dir=tiny_schnell.parent)


def outcome(call) -> str | None:
    """None when `call` made an image; the user's sentence when it raised a StudioError; anything else fails."""
    try:
        result = call()
    except StudioError as error:
        text = str(error)
        assert text and "Traceback" not in text and len(text) < 600, text
        return text
    assert result is not None
    return None


def check(expected: str | None, got: str | None, label: str) -> None:
    if expected is None:
        assert got is None, f"{label}: expected an image, got {got!r}"
    else:
        assert got is not None and expected in got, f"{label}: expected {expected!r}, got {got!r}"


def api_cases(files, tiny_schnell, tiny_fill):
    base = GenerationRequest(model=str(tiny_schnell), **FAST)
    for name, changes, expected in SETTING_CASES:
        yield name, base.with_(**changes), expected
    for name, expected in IMAGE_CASES.items():  # img2img at the input image's own size
        yield name, base.with_(image_path=str(files[name]), image_strength=0.5, width=None, height=None), expected
    fill = base.with_(tool="fill", model=str(tiny_fill), image_path=str(files["photo.png"]))
    for name, expected in MASK_CASES.items():
        yield name, fill.with_(masked_image_path=str(files[name])), expected
    for name, expected in LORA_CASES.items():
        yield name, base.with_(lora_paths=(str(files[name]),), lora_scales=(1.0,)), expected


def test_bad_inputs_through_the_python_api(manager, files, tiny_schnell, tiny_fill):
    tried = 0
    for name, request, expected in api_cases(files, tiny_schnell, tiny_fill):
        check(expected, outcome(lambda: manager.generate(request)), name)
        tried += 1
    assert tried == len(SETTING_CASES) + len(IMAGE_CASES) + len(MASK_CASES) + len(LORA_CASES)
    # nothing the bad inputs did stays behind: the next plain request works
    assert manager.generate(GenerationRequest(model=str(tiny_schnell), **FAST)).image.size == (32, 32)


def test_a_truncated_model_file_is_a_clear_error_and_the_next_request_works(manager, tiny_schnell, tmp_path):
    broken = truncated_model(tiny_schnell, tmp_path / "broken")
    message = outcome(lambda: manager.generate(GenerationRequest(model=str(broken), **FAST)))
    assert message and "broken" in message
    assert manager.generate(GenerationRequest(model=str(tiny_schnell), **FAST)).image.size == (32, 32)


def cli_args(request: GenerationRequest, output: Path) -> list[str]:
    args = [request.tool, "--path", request.model, "--prompt", request.prompt, "--seed", str(request.seed),
            "--output", str(output)]
    for flag, value in (("--steps", request.steps), ("--width", request.width), ("--height", request.height),
                        ("--image-path", request.image_path), ("--image-strength", request.image_strength),
                        ("--masked-image-path", request.masked_image_path)):
        if value is not None:
            args += [flag, str(value)]
    if request.lora_paths:
        args += ["--lora-paths", *request.lora_paths, "--lora-scales", *map(str, request.lora_scales)]
    return args


def test_bad_inputs_through_the_cli(files, tiny_schnell, tiny_fill, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    for index, (name, request, expected) in enumerate(api_cases(files, tiny_schnell, tiny_fill)):
        output = out / f"{index}.png"
        code = cli.main(cli_args(request, output))
        err = capsys.readouterr().err
        assert "Traceback" not in err, name
        if name == "width not a multiple of 16":  # the CLI rounds it down with a note, as mflux does
            assert "Note: --width 33 rounded down to 32" in err
            expected = None
        if expected is None:
            assert code == 0 and Image.open(output).size[0] >= 16, (name, err)
        else:
            assert code == 1 and expected in err and err.startswith("Error: "), (name, err)
            assert not output.exists(), name
    assert not [p for p in out.iterdir() if p.suffix != ".png"]  # no temp files left


def test_half_precision_makes_the_float32_image_and_a_nan_image_is_refused(tiny_schnell, tmp_path, capsys):
    """float16 ran every image to NaN, saved black and reported as done (GroupNorm's sums and the SiLU's polynomial
    overflowed half precision). Now it makes the float32 image to within half precision's rounding; an image that
    still comes out NaN (here: a VAE whose weights hold NaN) is one sentence, and no file."""
    request = GenerationRequest(model=str(tiny_schnell), **{**FAST, "width": 256, "height": 256})
    images = {}
    for dtype in ("float32", "float16"):
        assert cli.main([*cli_args(request, tmp_path / f"{dtype}.png"), "--dtype", dtype]) == 0
        images[dtype] = np.asarray(Image.open(tmp_path / f"{dtype}.png"), dtype=np.int16)
    assert images["float16"].std() > 10 and np.abs(images["float16"] - images["float32"]).max() <= 8
    broken = tmp_path / "nan-vae"
    shutil.copytree(tiny_schnell, broken)
    weights = load_file(broken / "vae" / "diffusion_pytorch_model.safetensors")
    weights["decoder.conv_out.bias"] = np.full_like(weights["decoder.conv_out.bias"], np.nan)
    save_file(weights, broken / "vae" / "diffusion_pytorch_model.safetensors")
    output = tmp_path / "nan.png"
    capsys.readouterr()
    assert cli.main([*cli_args(request.with_(model=str(broken)), output), "--dtype", "float32"]) == 1
    err = capsys.readouterr().err
    assert err.endswith("\rError: The image came out as NaN (not a number): its weights hold NaN or overflow "
                        "float32.\n")
    assert not output.exists()


def test_a_full_disk_is_a_clear_error_and_leaves_no_file(tiny_schnell, tmp_path, capsys, monkeypatch):
    output = tmp_path / "full.png"
    args = cli_args(GenerationRequest(model=str(tiny_schnell), **FAST), output)

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(image_io.os, "fsync", disk_full)
        assert cli.main(args) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    assert cli.main(args) == 0 and output.is_file()


# ----- presets --------------------------------------------------------------------------------


def preset_text(settings: dict, name: str = "x") -> str:
    return json.dumps({"format": 1, "name": name, "settings": {"tool": "generate", **settings}})


BAD_PRESETS = {
    "malformed": ('{"name": "x", "settings": {', "not valid JSON"),
    "huge": (preset_text({"prompt": "x" * 100_000}), "larger than 64 KiB"),
    "deeply nested": ('{"name": "x", "settings": ' + "[" * 5000 + "]" * 5000 + "}", "nests deeper"),
    "lora path traversal": (preset_text({"lora_paths": ["../../etc/passwd"]}), "not a path"),
    "absolute lora path": (preset_text({"lora_paths": ["/etc/passwd"]}), "not a path"),
    "input path": (preset_text({"image_path": "/etc/passwd"}), "image_path"),
    "extra path": (preset_text({"extra": {"controlnet_path": "/etc/passwd"}}), "not a file"),
    "model as a path": (preset_text({"model": "../../etc"}), "model"),
    "name with control characters": (preset_text({}, name="a\x00b"), "printable"),
    "not an object": ("[1, 2, 3]", "must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BAD_PRESETS))
def test_bad_presets_are_refused_by_name(case):
    text, expected = BAD_PRESETS[case]
    with pytest.raises(PresetError, match=None) as error:
        parse_preset(text)
    assert expected in str(error.value), str(error.value)


def test_preset_files_cannot_name_or_reach_paths_outside_their_folder(tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    assert preset_file_name("../../etc/passwd") == "etc-passwd.json"
    assert preset_file_name("/abs/path") == "abs-path.json"
    (folder / "passwd.json").symlink_to("/etc/passwd")  # a symlink to a file that is not a preset
    (folder / "big.json").write_text(" " * 200_000)
    presets, problems = list_presets([(folder, "user")])
    assert presets == [] and len(problems) == 2
    assert not any("root:" in p for p in problems)  # a file's content never reaches the message
    with pytest.raises(PresetError, match="larger than"):
        read_preset_file(folder / "big.json")


# ----- PNG metadata ---------------------------------------------------------------------------


def png_with(path: Path, chunks: dict[str, str]) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    return path


def test_malicious_png_metadata_is_refused_or_sanitised(tmp_path, capsys):
    for name, chunks in malicious_png_chunks().items():
        path = png_with(tmp_path / f"{name.replace(' ', '-')}.png", chunks)
        try:  # the page's restore: what it accepts carries no input path
            settings = settings_from_png(path)
            assert not settings.get("image_path") and not settings.get("lora_paths"), (name, settings)
        except StudioError as error:
            assert "root:" not in str(error) and len(str(error)) < 600
        # the CLI's --config-from-metadata keeps input paths (to reproduce a run); they must still fail cleanly
        outcome(lambda: request_from_metadata(read_metadata_file(path)))
        code = cli.main(["generate", "--path", str(tmp_path), "--config-from-metadata", str(path),
                         "--output", str(tmp_path / "never.png")])
        assert code == 1 and "Traceback" not in capsys.readouterr().err, name
        assert not (tmp_path / "never.png").exists()


# ----- fuzzing --------------------------------------------------------------------------------

def fuzz(examples: int):
    return settings(deadline=None, max_examples=examples, suppress_health_check=list(HealthCheck), derandomize=True)


json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=6)
setting_keys = st.sampled_from(["tool", "model", "prompt", "seed", "steps", "width", "height", "guidance",
                                "image_strength", "lora_paths", "lora_scales", "quantize", "dtype", "extra",
                                "batch_count", "image_path", "redux_image_strengths", "max_sequence_length"])
settings_dicts = st.dictionaries(setting_keys, json_values, max_size=6)


def refused_or_parsed(call):
    try:
        return call()
    except StudioError:
        return None


@fuzz(500)
@given(settings=settings_dicts, name=json_values, extra_keys=st.dictionaries(st.text(max_size=6), json_values,
                                                                              max_size=2))
def test_fuzz_preset_parser_structured(settings, name, extra_keys):
    text = json.dumps({"format": 1, "name": name, "settings": settings, **extra_keys})
    preset = refused_or_parsed(lambda: parse_preset(text))
    if preset is not None:
        assert not preset.settings.get("image_path")
        parse_preset(json.dumps({"format": 1, "name": preset.name, "settings": preset.settings}))


@fuzz(1500)
@given(text=st.text(alphabet=st.sampled_from('{}[]":,0123456789.-+eEtrufalsn \\u' + string.ascii_letters),
                    max_size=80))
def test_fuzz_preset_parser_raw_text(text):
    refused_or_parsed(lambda: parse_preset(text))


@fuzz(600)
@given(request=settings_dicts, version=json_values)
def test_fuzz_png_metadata_json(request, version):
    metadata = {"format": version, "request": request}
    result = refused_or_parsed(lambda: request_from_metadata(json.loads(json.dumps(metadata))))
    if result is not None:
        assert result.validated() is result
        refused_or_parsed(lambda: validate_settings(settings_from_request(result)))  # the page's restore


a1111_lines = st.lists(st.tuples(st.sampled_from(["Steps", "Seed", "Size", "Distilled CFG Scale", "CFG scale",
                                                  "Model", "Tool", "Denoising strength", "Sampler", "Junk"]),
                                 st.text(alphabet="0123456789x.-e+ ,:abc\n", max_size=14)), max_size=8)


@fuzz(1500)
@given(prompt=st.text(max_size=30), items=a1111_lines)
def test_fuzz_a1111_parameters(prompt, items):
    text = prompt + "\n" + ", ".join(f"{k}: {v}" for k, v in items)
    refused_or_parsed(lambda: settings_from_a1111(text))


# other apps' settings: node ids that link to each other (and to nowhere), inputs of the names the readers look for
app_keys = st.sampled_from(["class_type", "inputs", "seed", "noise_seed", "steps", "text", "guidance", "width",
                            "height", "lora_name", "strength_model", "model", "positive", "latent_image", "denoise",
                            "sampler_name", "scheduler", "prompt", "loras", "loraweights", "positive_prompt", "strength",
                            "generation_mode", "cfg_scale", "cfgscale", "negativeprompt", "weight", "name", "value",
                            "sampler", "c", "uc", "size", "scale", "lora", "v2", "file", "loras",
                            "guidanceEmbed", "speedUpWithGuidanceEmbed", "guidanceScale"])
app_values = st.recursive(json_scalars | st.sampled_from(["KSampler", "SamplerCustomAdvanced", "FluxGuidance",
                                                          "CLIPTextEncode", "LoraLoader", "EmptyLatentImage",
                                                          "VAEEncode", "flux_img2img", "euler"])
                          | st.tuples(st.sampled_from(["1", "2", "3", 7]), st.integers(-1, 2)).map(list),
                          lambda inner: st.lists(inner, max_size=4) | st.dictionaries(app_keys, inner, max_size=5),
                          max_leaves=12)
app_graphs = st.dictionaries(st.sampled_from(["1", "2", "3", "sui_image_params"]), app_values, max_size=4)


@fuzz(400)
@given(key=st.sampled_from(["prompt", "invokeai_metadata", "parameters"]), graph=app_graphs)
def test_fuzz_other_apps_settings(tmp_path_factory, key, graph):
    path = png_with(tmp_path_factory.mktemp("apps", numbered=True) / "f.png", {key: json.dumps(graph)})
    refused_or_parsed(lambda: settings_from_png(path))


@fuzz(300)
@given(key=st.sampled_from(["invokeai_metadata", "draw things"]),
       params=st.dictionaries(app_keys, app_values, max_size=6))
def test_fuzz_other_apps_top_level_settings(tmp_path_factory, key, params):
    """InvokeAI's JSON and Draw Things' (inside its XMP) hold their settings at the top level."""
    text = json.dumps(params)
    if key == "draw things":
        key, text = "XML:com.adobe.xmp", ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                                          '1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/'
                                          'xap/1.0/" xmlns:exif="http://ns.adobe.com/exif/1.0/" xmp:CreatorTool="Draw '
                                          f'Things" exif:UserComment="{escape(text, {chr(34): "&quot;"})}"/>'
                                          "</rdf:RDF></x:xmpmeta>")
    path = png_with(tmp_path_factory.mktemp("apps", numbered=True) / "f.png", {key: text})
    refused_or_parsed(lambda: settings_from_png(path))


@fuzz(150)
@given(ours=st.none() | st.text(max_size=60) | settings_dicts.map(lambda r: json.dumps({"format": 1, "request": r})),
       theirs=st.none() | st.text(max_size=60))
def test_fuzz_png_files_through_the_reader(tmp_path_factory, ours, theirs):
    chunks = {k: v for k, v in (("mflux_studio", ours), ("parameters", theirs)) if v is not None}
    path = png_with(tmp_path_factory.mktemp("fuzz", numbered=True) / "f.png", chunks)
    refused_or_parsed(lambda: settings_from_png(path))
