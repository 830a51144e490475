"""Pixel limits, finite numbers and bad uploads on every surface: the Python API, the CLI, presets and a live
server driven with gradio_client (tiny models, 64 px). Each refusal is one sentence (CLI: exit 1; API: an
exception carrying it), nothing is written for it, and the next request works."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from mflux_core import cli
from mflux_core.errors import InvalidRequest
from mflux_core.images.canny import canny_edges
from mflux_core.images.io import load_image
from mflux_core.images.outpaint import outpaint_canvas, parse_padding
from mflux_core.manager import ModelManager
from mflux_core.presets import PresetError, validate_settings
from mflux_core.request import MAX_INPUT_PIXELS, GenerationRequest, check_finite, check_image_size
from tests.fixtures.bad_inputs import write_images
from tests.fixtures.lora_files import Dims, write_diffusers_lora
from tests.test_images import png_claiming_size
from tests.test_reliability_server import client_for, linked_models, result_files, start_server, stop_server
from tests.test_webui_browser import api_parameters
from webui.requests import InputStore

FAST = dict(steps=1, width=64, height=64, seed=1, prompt="a red boat")
OVER_LIMIT_PADDING = "0,2048,0,2048"  # on a 64x64 image: a 4160x64 canvas
CANVAS_REFUSAL = "past the 4096-pixel limit a side"
# (request field, value, the setting the sentence names)
BAD_NUMBERS = [
    ("guidance", math.nan, "Guidance must be a finite number, not nan"),
    ("image_strength", math.inf, "Image strength must be a finite number, not inf"),
    ("controlnet_strength", -math.inf, "ControlNet strength must be a finite number, not -inf"),
    ("lora_scales", (math.nan,), "A LoRA scale must be a finite number, not nan"),
    ("redux_image_strengths", (math.inf,), "A Redux image strength must be a finite number, not inf"),
    ("extra", {"canny_low": math.nan}, "The setting canny_low must be a finite number, not nan"),
]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("limits-images")
    paths = write_images(folder)
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(folder / "photo64.png")
    Image.new("RGB", (4112, 64), (90, 90, 90)).save(folder / "too-wide.png")
    return {**paths, "photo64.png": folder / "photo64.png", "too-wide.png": folder / "too-wide.png",
            "bomb.png": png_claiming_size(folder / "bomb.png", 30_000, 30_000)}


# ----- the two checking functions -------------------------------------------------------------


def test_an_input_past_the_side_limit_sizes_the_output_at_the_limit_with_its_aspect():
    from mflux_core.request import size_of_input
    from mflux_core.tools.common import with_size

    assert size_of_input(8192, 4096) == (4096, 2048)  # each side clamped alone made it 4096x4096
    assert size_of_input(60_000, 1000) == (4096, 64)
    assert size_of_input(1000, 1001) == (992, 992)
    request = with_size(GenerationRequest(tool="generate"), Image.new("RGB", (5000, 2500)))
    assert (request.width, request.height) == (4096, 2048)


def test_check_image_size_holds_canvases_to_the_side_and_area_limits_and_inputs_to_the_input_limit():
    check_image_size(4096, 4096, "A canvas")
    check_image_size(30_000, 16, "An input", resized=True)
    with pytest.raises(InvalidRequest, match="A canvas would be 4097x16 pixels, past the 4096-pixel limit a side"):
        check_image_size(4097, 16, "A canvas")
    with pytest.raises(InvalidRequest, match=f"the limit is {MAX_INPUT_PIXELS:,} pixels"):
        check_image_size(9000, 9000, "An input", resized=True)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400, "1", None, True])
def test_check_finite_refuses_what_is_not_a_finite_number_by_name(value):
    with pytest.raises(InvalidRequest, match="^The thing must be a (finite )?number, not "):
        check_finite(value, "The thing")
    assert check_finite(3, "The thing") == 3.0


# ----- the Python API and the CLI -------------------------------------------------------------


@pytest.fixture(scope="module")
def manager(tiny_schnell):
    return ModelManager(models_dir=tiny_schnell.parent)


@pytest.mark.parametrize("name, value, expected", BAD_NUMBERS, ids=[case[0] for case in BAD_NUMBERS])
def test_nan_and_infinities_are_refused_by_the_python_api(manager, tiny_schnell, name, value, expected):
    request = GenerationRequest(model=str(tiny_schnell), **FAST).with_(**{name: value})
    with pytest.raises(InvalidRequest) as refused:
        manager.generate(request)
    assert expected in str(refused.value)


def test_nan_and_infinities_are_refused_by_the_cli_by_name(tiny_schnell, images, tmp_path, capsys):
    base = ["--path", str(tiny_schnell), "--prompt", "x", "--steps", "1"]
    cases = [
        (["generate", "--guidance", "nan"], "Guidance must be a finite number, not nan"),
        (["generate", "--lora-paths", "style", "--lora-scales", "inf"], "A LoRA scale must be a finite number"),
        (["generate", "--image-path", str(images["photo64.png"]), "--image-strength", "nan"],
         "Image strength must be a finite number"),
        (["controlnet", "--controlnet-image-path", str(images["photo64.png"]), "--canny-low", "nan"],
         "The setting canny_low must be a finite number"),
        (["controlnet", "--controlnet-image-path", str(images["photo64.png"]), "--controlnet-strength=-inf"],
         "ControlNet strength must be a finite number"),
        (["redux", "--redux-image-paths", str(images["photo64.png"]), "--redux-image-strengths", "nan"],
         "A Redux image strength must be a finite number"),
        (["upscale", "--image-path", str(images["photo64.png"]), "--upscale-factor", "inf"],
         "The setting upscale_factor must be a finite number"),
    ]
    for index, (args, expected) in enumerate(cases):
        output = tmp_path / f"{index}.png"
        assert cli.main([*args, *base, "--output", str(output)]) == 1, args
        err = capsys.readouterr().err
        assert err.startswith(f"Error: {expected}") and "Traceback" not in err, (args, err)
        assert not output.exists()


def test_presets_refuse_nan_and_infinities_with_the_same_check():
    for settings in ({"guidance": math.nan}, {"lora_paths": ["a"], "lora_scales": [math.inf]},
                     {"extra": {"canny_high": -math.inf}}):
        with pytest.raises(PresetError, match="cannot be used"):
            validate_settings({"tool": "generate", **settings})


def test_an_over_limit_outpaint_is_refused_before_its_canvas_is_built(manager, tiny_fill, images, tmp_path, capsys):
    image = load_image(images["photo64.png"])
    with pytest.raises(InvalidRequest, match=f"The outpaint canvas would be 4160x64 pixels, {CANVAS_REFUSAL}"):
        outpaint_canvas(image, parse_padding(OVER_LIMIT_PADDING, 64, 64))
    with pytest.raises(InvalidRequest, match="8256x8256"):  # 4096 on every side: once the machine's death
        outpaint_canvas(image, parse_padding("4096", 64, 64))
    request = GenerationRequest(tool="fill", model=str(tiny_fill), image_path=str(images["photo64.png"]),
                                outpaint_padding=OVER_LIMIT_PADDING, steps=1, prompt="sea")
    with pytest.raises(InvalidRequest, match=CANVAS_REFUSAL):
        manager.generate(request)
    output = tmp_path / "wide.png"
    code = cli.main(["fill", "--path", str(tiny_fill), "--prompt", "sea", "--steps", "1", "--image-path",
                     str(images["photo64.png"]), "--outpaint-padding", OVER_LIMIT_PADDING, "--output", str(output)])
    assert code == 1 and CANVAS_REFUSAL in capsys.readouterr().err and not output.exists()


def test_images_used_at_their_own_size_are_held_to_the_canvas_limits(manager, tiny_kontext, tiny_fill, images):
    kontext = GenerationRequest(tool="kontext", model=str(tiny_kontext), image_path=str(images["too-wide.png"]),
                                **{**FAST, "prompt": "make it red"})
    with pytest.raises(InvalidRequest, match=f"The reference image, which Kontext uses at its own size, would be "
                                             f"4112x64 pixels, {CANVAS_REFUSAL}") as refused:
        manager.generate(kontext)
    assert refused.value.setting == "image_path"  # an API names its own field for it (OpenAI: param "image")
    row = kontext.with_(image_path=str(images["photo64.png"]), reference_image_paths=(
        str(images["photo64.png"]),) * 63 + (str(images["too-wide.png"]),))
    with pytest.raises(InvalidRequest, match="The reference image paths must be a list of at most 8 items"):
        manager.generate(row)
    with pytest.raises(InvalidRequest, match=f"The images side by side would be 4176x64 pixels, {CANVAS_REFUSAL}"):
        manager.generate(row.with_(reference_image_paths=(str(images["too-wide.png"]),)))
    with pytest.raises(InvalidRequest, match="Several reference images are for the Kontext tool, not fill"):
        manager.generate(row.with_(tool="fill", reference_image_paths=(str(images["photo64.png"]),)))
    diptych = GenerationRequest(tool="in-context", model=str(tiny_fill), image_path=str(images["photo64.png"]),
                                steps=1, width=4096, height=64, prompt="[IMAGE1] a mug; [IMAGE2] the same mug")
    with pytest.raises(InvalidRequest, match=f"The diptych .* would be 8192x64 pixels, {CANVAS_REFUSAL}"):
        manager.generate(diptych)


def test_canny_edges_refuse_an_over_limit_image_and_bad_thresholds():
    with pytest.raises(InvalidRequest, match=f"4112x16 pixels, {CANVAS_REFUSAL}"):
        canny_edges(Image.new("RGB", (4112, 16)))
    with pytest.raises(InvalidRequest, match="The Canny high threshold must be a finite number, not inf"):
        canny_edges(Image.new("RGB", (16, 16)), 100, math.inf)


def test_a_refused_upload_is_never_copied_into_the_inputs_folder(images, tmp_path):
    store = InputStore(tmp_path / "inputs")
    for name, expected in (("bomb.png", "too large"), ("not-an-image.png", "not an image"), ("empty.png", "is empty"),
                           ("truncated.png", "truncated or damaged")):
        with pytest.raises(InvalidRequest, match=expected) as refused:
            store.save(str(images[name]), "img2img")
        assert name in str(refused.value)
    assert not (tmp_path / "inputs").exists()
    assert Path(store.save(str(images["photo64.png"]), "img2img")).is_file()


# ----- a live server through gradio_client -----------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_schnell, tiny_fill):
    root = tmp_path_factory.mktemp("limits-server")
    models = linked_models(root / "models", {"tiny-schnell": tiny_schnell, "tiny-fill": tiny_fill})
    write_diffusers_lora(models / "loras" / "style.safetensors", Dims.of(tiny_schnell))
    outputs = root / "outputs"
    server = start_server(models, outputs, root / "server.log")
    yield SimpleNamespace(**vars(server), outputs=outputs, client=client_for(server))
    stop_server(server)


GENERATE = dict(model="tiny-schnell", steps="1", width=64, height=64, seed=1, prompt="a boat")


def refusal(client, api_name: str, **values) -> str:
    """The sentence gradio_client raises with; the call must be refused."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as refused:
        client.predict(api_name=api_name, **values)
    text = str(refused.value)
    assert "Traceback" not in text and "Could not preprocess" not in text and "/tmp/" not in text, text
    return text


def works(client) -> None:
    status, preview, results = client.predict(**GENERATE, api_name="/generate")
    assert "Done: 1 image" in status and len(results) == 1, status


def test_generate_needs_only_a_prompt_and_returns_its_own_images_not_the_history(server):
    works(server.client)
    works(server.client)
    status, preview, results = server.client.predict(prompt="a boat", api_name="/generate")
    assert "Done: 1 image" in status and len(results) == 1, status
    assert len(result_files(server.outputs)) >= 3  # the history holds more than this run returned
    parameters = server.client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/generate"]
    assert all(p["parameter_has_default"] for p in parameters["parameters"])


def raw_refusal(server, api_name: str, **values) -> str:
    """The error a call with NaN streams back. gradio_client cannot send NaN (JSON has no such number), but
    Python's JSON reader, which the server uses, accepts the literal. (Gradio's sliders refuse infinities
    themselves, as out of their range; NaN compares as in range and reaches our checks.)"""
    data = [values.get(name, default) for name, default in api_parameters(server.client, api_name)]
    call = f"{server.url}gradio_api/call/{api_name.lstrip('/')}"
    event = httpx.post(call, content=json.dumps({"data": data}), headers={"Content-Type": "application/json"})
    stream = httpx.get(f"{call}/{event.json()['event_id']}", timeout=120).text
    assert "event: error" in stream and "Traceback" not in stream and "Could not preprocess" not in stream, stream
    return stream


def uploaded(server, path: Path) -> dict:
    """A file uploaded the way gradio_client does it, as the FileData a raw call names it by."""
    with path.open("rb") as file:
        [server_path] = httpx.post(f"{server.url}gradio_api/upload", files={"files": file}).json()
    return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def test_nan_and_infinities_through_the_api_are_refused_by_name(server, images):
    from gradio_client import handle_file

    client = server.client
    photo = handle_file(str(images["photo64.png"]))
    cases = [
        ("/generate", {**GENERATE, "lora_1": "style", "lora_scale_1": math.nan}, "The scale of LoRA 1 must be a finite"),
        ("/generate", {**GENERATE, "image_strength": math.nan}, "Image strength must be a finite number"),
        ("/canny_preview", {"image": uploaded(server, images["photo64.png"]), "low": math.nan, "high": 200},
         "Canny low threshold must be a finite"),
        ("/generate", {**GENERATE, "width": math.nan}, "Width must be a finite number, not nan."),
        ("/generate", {**GENERATE, "height": 1e300}, "Height must be at most 4096, not 1e+300."),
        ("/generate", {**GENERATE, "seed": -1}, "Seed must be at least 0, not -1."),
    ]
    for api_name, values, expected in cases:
        assert expected in raw_refusal(server, api_name, **values), values
        works(client)
    assert "Guidance must be a finite number, not inf" in refusal(client, "/generate", **{**GENERATE, "guidance": "inf"})
    edges, _ = client.predict(image=photo, low=100, high=200, api_name="/canny_preview")
    assert Image.open(edges).format == "PNG"  # OpenCV's edges exactly (Gradio's default WebP smears them)
    reference = cv2.Canny(np.asarray(Image.open(images["photo64.png"]).convert("RGB")), 100, 200)
    assert np.array_equal(np.asarray(Image.open(edges).convert("L")), reference)


def test_over_limit_canvases_through_the_api_are_refused(server, images):
    from gradio_client import handle_file

    client = server.client
    editor = {"background": handle_file(str(images["photo64.png"])), "layers": [], "composite": None}
    pads = dict(pad_top=0, pad_right=2048, pad_bottom=0, pad_left=2048, pad_unit="px")
    assert CANVAS_REFUSAL in refusal(client, "/outpaint_preview", editor=editor, mode="Outpaint", **pads)
    assert CANVAS_REFUSAL in refusal(client, "/fill", model="tiny-fill", steps="1", width=0, height=0, prompt="sea",
                                     editor=editor, mode="Outpaint", **pads)
    assert CANVAS_REFUSAL in refusal(client, "/canny_preview", image=handle_file(str(images["too-wide.png"])),
                                     low=100, high=200)
    canvas, mask, _ = client.predict(editor=editor, mode="Outpaint", **{**pads, "pad_right": 16, "pad_left": 16},
                                     api_name="/outpaint_preview")
    assert Image.open(canvas).size == (96, 64)
    works(client)


def test_bad_uploads_through_the_api_get_our_sentence_and_are_not_kept(server, images):
    from gradio_client import handle_file

    client = server.client
    inputs = server.outputs / "inputs"
    kept = set(inputs.iterdir()) if inputs.is_dir() else set()
    for name, expected in (("not-an-image.png", "is not an image"), ("empty.png", "is empty"),
                           ("truncated.png", "is truncated or damaged"), ("bomb.png", "is too large")):
        upload = handle_file(str(images[name]))
        text = refusal(client, "/generate", **{**GENERATE, "init_image": upload, "width": 0, "height": 0})
        assert expected in text and name in text, (name, text)
        assert name in refusal(client, "/canny_preview", image=upload, low=100, high=200)
        refusal(client, "/estimate_depth", photo=upload)  # an event that updates the map: Gradio rebuilds it
        assert name in refusal(client, "/depth", depth_map=upload, prompt="a boat", steps="1", width=64, height=64)
        works(client)
    assert (set(inputs.iterdir()) if inputs.is_dir() else set()) == kept
