"""OpenAI's images API on the studio's server, driven over real HTTP as the `openai` package and curl send it:
the shipped demo models make images that follow the prompt, a mask keeps its opaque pixels, API and page jobs
share one queue in arrival order, and bad input gets a 4xx in OpenAI's error shape.

One server on the demo models for the module (as tests/test_webui_demo.py starts it), read with the independent
shape classifier of tests/fixtures/shape_classifier.py.
"""

import asyncio
import base64
import io
import json
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from huggingface_hub import constants
from PIL import Image

from mflux_core.demo.evaluate import EVALUATION_SEED, FILL_TOLERANCE
from mflux_core.demo.dataset import text_to_image_example
from mflux_core.demo.examples import SOURCES
from mflux_core.demo.family import IMAGE_SIZE
from mflux_core.errors import InvalidRequest
from mflux_core.manager import ModelManager
from mflux_core.weights.resolve import DEMO_MODELS_ENV
from tests.fixtures.shape_classifier import classify
from tests.test_webui_browser import free_port, request_in
from webui.app import build_app, launch_kwargs
from webui.gallery import history
from webui import api_server
from webui.api_server import JobThreads
from webui.openai_api import ApiError
from webui.openai_stream import partial_steps, server_sent
from webui.studio import StudioFolders

TIMEOUT_S = 300
CAPTION = "a red circle in the top left on a blue background"
REDUX_REFERENCE = 1  # the held-out picture tests/test_webui_demo.py gives Redux: its colours carry at seed 1


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("openai-studio")
    (root / "models").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(DEMO_MODELS_ENV, raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_CACHE", str(root / "hub"))
        patch.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
        folders = StudioFolders.default(root / "outputs", models_dir=root / "models", loras=[])
        manager = ModelManager(models_dir=root / "models")
        app = build_app(manager, folders)
        port = free_port()
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                   **launch_kwargs(folders))
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S) as http:
            yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", http=http, folders=folders, manager=manager,
                                  examples=app.studio.examples)
        app.close()


def decoded(item: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def saved_request(studio, url: str) -> dict:
    """The request recorded in the result a `url` answer points at."""
    return request_in(studio.folders.outputs.joinpath(*url.split("/v1/files/")[1].split("/")))


def openai_mask(mask: np.ndarray) -> bytes:
    """Our mask (True = regenerate) as OpenAI draws one: an RGBA PNG, transparent where the image is edited."""
    rgba = np.full((*mask.shape, 4), 255, np.uint8)
    rgba[mask, 3] = 0
    return png_bytes(Image.fromarray(rgba, "RGBA"))


def edit(studio, image: bytes, fields: dict, mask: bytes | None = None, image_field: str = "image"):
    """A multipart edit as the `openai` package sends it: every field a string, the files as parts."""
    files = [(image_field, ("picture.png", image, "image/png"))]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return studio.http.post("/v1/images/edits", data={k: str(v) for k, v in fields.items()}, files=files)


def declared_too_large(studio) -> bytes:
    """The answer to a request that declares a 1 GB body (refused from its header, before any body is read)."""
    host, port = studio.http.base_url.host, studio.http.base_url.port
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as connection:
        connection.sendall(f"POST /v1/images/generations HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                           f"\r\nContent-Length: {2**30}\r\n\r\n{{}}".encode())
        answer = b""
        while not answer.endswith(b"}}"):  # the error object's end
            answer += connection.recv(65536) or b"}}"
    assert b"larger than 64 MB" in answer and b'"type":"invalid_request_error"' in answer, answer
    return answer


def assert_openai_error(response, status: int, param: str | None = None, code: str | None = None) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"].endswith(".")
    assert (error["param"], error["code"]) == (param, code), error
    return error["message"]


# ----- generations ---------------------------------------------------------------------------------


def test_generations_follow_the_prompt_with_consecutive_seeds(studio):
    response = studio.http.post("/v1/images/generations", json={
        "model": "demo", "prompt": CAPTION, "n": 2, "size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "seed": 41,
        "response_format": "b64_json", "quality": "hd", "style": "vivid", "user": "someone", "output_format": "png"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert abs(body["created"] - time.time()) < TIMEOUT_S and len(body["data"]) == 2
    for item in body["data"]:
        assert set(item) == {"b64_json"}
        image = decoded(item)
        reading = classify(image)
        assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
        assert (reading.background, reading.colour, reading.region) == ("blue", "red", "top left"), reading
    saved = {path: request_in(Path(path)) for path, _ in history(studio.folders.outputs)}  # in the page's History
    assert sorted(r["seed"] for r in saved.values() if r["prompt"] == CAPTION and r["seed"] in (41, 42)) == [41, 42]


def test_a_url_result_is_the_saved_file_and_no_format_gives_both(studio):
    response = studio.http.post("/v1/images/generations", json={"prompt": "a green square on a white background"})
    assert response.status_code == 200, response.text
    (item,) = response.json()["data"]
    assert set(item) == {"b64_json", "url"} and item["url"].startswith(studio.url)
    fetched = httpx.get(item["url"], timeout=TIMEOUT_S)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert fetched.content == base64.b64decode(item["b64_json"])
    request = saved_request(studio, item["url"])
    assert (request["tool"], request["model"], request["width"]) == ("generate", "demo", IMAGE_SIZE)  # native size
    url_only = studio.http.post("/v1/images/generations", json={"prompt": "x", "response_format": "url"}).json()
    assert set(url_only["data"][0]) == {"url"}
    # apps that cannot change the model name get the default; Open WebUI sends "" when its admin named none
    for openai_name in ("dall-e-3", "gpt-image-1", ""):
        named = studio.http.post("/v1/images/generations", json={"prompt": "x", "model": openai_name,
                                                                 "response_format": "url"}).json()
        assert saved_request(studio, named["data"][0]["url"])["model"] == "demo"


def test_parameters_sent_as_null_take_their_defaults_as_openais_nullable_ones_do(studio):
    nulls = dict.fromkeys(("model", "n", "size", "quality", "style", "user", "seed", "stream", "partial_images",
                           "output_format", "output_compression", "background", "moderation"))
    response = studio.http.post("/v1/images/generations", json={"prompt": CAPTION, "response_format": "b64_json",
                                                                **nulls})
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 1 and classify(decoded(response.json()["data"][0])).colour == "red"


def test_models_lists_what_the_api_runs_in_openais_shape(studio):
    listing = studio.http.get("/v1/models").json()
    assert listing["object"] == "list"
    ids = [model["id"] for model in listing["data"]]
    assert {"demo", "demo-fill", "demo-kontext"} <= set(ids) and "demo-canny" not in ids
    assert not {"schnell", "dev", "fill"} & set(ids)  # downloads are off here: only models on disk are offered
    assert listing["data"][ids.index("demo")] == {"id": "demo", "object": "model", "created": 0,
                                                  "owned_by": "mflux-studio"}
    assert studio.http.get("/v1/models/demo-fill").json()["id"] == "demo-fill"
    assert_openai_error(studio.http.get("/v1/models/nope"), 404, "model", "model_not_found")


# ----- edits ------------------------------------------------------------------------------------


def test_an_edit_with_a_mask_fills_the_transparent_area_and_keeps_the_rest(studio):
    example = studio.examples["fill"][0]
    pair = SOURCES["fill"](EVALUATION_SEED, example.index, IMAGE_SIZE, held_out=True)
    source, mask = pixels(example.images["image"]), pixels(example.images["mask"]) > 127
    response = edit(studio, example.images["image"].read_bytes(),
                    {"prompt": example.prompt, "model": "demo-fill", "n": 1, "seed": 0, "response_format": "b64_json"},
                    openai_mask(mask))
    assert response.status_code == 200, response.text
    image = decoded(response.json()["data"][0])
    change = np.abs(image.astype(int) - source.astype(int)).max(axis=-1)
    assert change[mask].mean() > FILL_TOLERANCE  # repainted
    assert (change[~mask] <= FILL_TOLERANCE).mean() >= 0.98  # kept
    assert classify(np.where(mask[..., None], image, source)).colour == pair.scene.shapes[0].colour


def test_an_edit_with_a_mask_on_a_base_model_inpaints_keeping_the_rest(studio):
    example = studio.examples["fill"][0]
    source, mask = pixels(example.images["image"]), pixels(example.images["mask"]) > 127
    response = edit(studio, example.images["image"].read_bytes(),
                    {"prompt": example.prompt, "model": "demo", "seed": 0, "response_format": "url"}, openai_mask(mask))
    assert response.status_code == 200, response.text
    saved = saved_request(studio, response.json()["data"][0]["url"])
    assert (saved["tool"], saved["model"], saved["guidance"]) == ("fill", "demo", 3.5)
    url = response.json()["data"][0]["url"]
    made = pixels(studio.folders.outputs.joinpath(*url.split("/v1/files/")[1].split("/")))
    change = np.abs(made.astype(int) - source.astype(int)).max(axis=-1)
    assert change[mask].mean() > FILL_TOLERANCE and (change[~mask] <= FILL_TOLERANCE).mean() >= 0.98


def test_an_image_alone_on_a_fill_model_is_filled_where_it_is_transparent(studio):
    example = studio.examples["fill"][0]
    source, mask = pixels(example.images["image"]), pixels(example.images["mask"]) > 127
    holed = np.dstack([source, np.where(mask, 0, 255).astype(np.uint8)])
    response = edit(studio, png_bytes(Image.fromarray(holed, "RGBA")),
                    {"prompt": example.prompt, "model": "demo-fill", "seed": 0, "response_format": "url"})
    assert response.status_code == 200, response.text
    saved = saved_request(studio, response.json()["data"][0]["url"])
    assert saved["tool"] == "fill" and saved["keep_unmasked"]
    assert np.array_equal(pixels(saved["masked_image_path"]) > 127, mask)


@pytest.mark.parametrize("model", ["dall-e-2", None])
def test_a_dall_e_2_edit_of_an_image_with_transparency_fills_that_area(studio, model):
    """OpenAI's dall-e-2, also its default model for edits: with no mask, the image's transparent area is the
    mask (on the default Fill model, the demo's here)."""
    example = studio.examples["fill"][0]
    source, mask = pixels(example.images["image"]), pixels(example.images["mask"]) > 127
    holed = np.dstack([source, np.where(mask, 0, 255).astype(np.uint8)])
    fields = {"prompt": example.prompt, "seed": 0, "response_format": "url", **({"model": model} if model else {})}
    response = edit(studio, png_bytes(Image.fromarray(holed, "RGBA")), fields)
    assert response.status_code == 200, response.text
    saved = saved_request(studio, response.json()["data"][0]["url"])
    assert (saved["tool"], saved["model"]) == ("fill", "demo-fill")
    assert np.array_equal(pixels(saved["masked_image_path"]) > 127, mask)


@pytest.mark.parametrize("number", [0, 1, 2])
def test_an_edit_without_a_mask_applies_a_kontext_instruction(studio, number):
    example = studio.examples["kontext"][number]
    pair = SOURCES["kontext"](EVALUATION_SEED, example.index, IMAGE_SIZE, held_out=True)
    response = edit(studio, example.images["image"].read_bytes(),
                    {"prompt": example.prompt, "model": "demo-kontext", "seed": 0, "response_format": "b64_json"},
                    image_field="image[]")  # how the `openai` package sends a list of images
    assert response.status_code == 200, response.text
    reading = classify(decoded(response.json()["data"][0]))
    after = pair.after_scene
    expected = {"colour": ("colour", after.shapes[0].colour), "move": ("region", after.shapes[0].region),
                "background": ("background", after.background)}[pair.kind]
    assert getattr(reading, expected[0]) == expected[1], (example.prompt, reading)


def test_several_images_without_a_mask_are_one_kontext_reference_side_by_side(studio):
    """OpenAI's multi-image edit on FLUX.1 Kontext, which reads one reference: the images in a row at the first's
    height, as ComfyUI stitches them for Kontext."""
    with Image.open(studio.examples["kontext"][0].images["image"]) as opened:
        first = opened.convert("RGB")
    narrow, tall = Image.new("RGB", (32, 64), (200, 30, 30)), Image.new("RGB", (64, 128), (30, 200, 30))

    def several(images, mask: bytes | None = None, model: str = "demo-kontext"):
        files = [("image[]", (f"{number}.png", png_bytes(image), "image/png")) for number, image in enumerate(images)]
        files += [("mask", ("mask.png", mask, "image/png"))] if mask else []
        return studio.http.post("/v1/images/edits", files=files, data={
            "prompt": "make the shape red", "model": model, "seed": "0", "response_format": "url"})

    response = several([first, narrow, tall])
    assert response.status_code == 200, response.text
    saved = saved_request(studio, response.json()["data"][0]["url"])
    reference = pixels(saved["image_path"])
    assert saved["tool"] == "kontext" and reference.shape == (64, 128, 3)
    assert np.array_equal(reference[:, :64], np.asarray(first))
    assert (reference[:, 64:96] == (200, 30, 30)).all() and (reference[:, 96:] == (30, 200, 30)).all()

    with_mask = several([first, narrow], mask=openai_mask(np.ones((64, 64), bool)), model="demo-fill")
    assert "Send one image with a mask" in assert_openai_error(with_mask, 400, "image")
    too_many = several([narrow] * 17)
    assert "Send at most 16 images; 17 were sent." == assert_openai_error(too_many, 400, "image")
    too_wide = several([Image.new("RGB", (16, 1024)), Image.new("RGB", (4096, 1024))])
    assert "The images side by side would be 4112x1024 pixels" in assert_openai_error(too_wide, 400, "image")


# ----- variations ----------------------------------------------------------------------------------


def test_a_variation_runs_redux_on_the_image_and_carries_its_colours(studio):
    reference = text_to_image_example(EVALUATION_SEED, REDUX_REFERENCE, held_out=True)
    response = studio.http.post("/v1/images/variations", data={"model": "dall-e-2", "seed": str(REDUX_REFERENCE),
                                                               "n": "1", "response_format": "url"},
                                files=[("image", ("reference.png", png_bytes(Image.fromarray(reference.image)),
                                                  "image/png"))])
    assert response.status_code == 200, response.text
    url = response.json()["data"][0]["url"]
    saved = saved_request(studio, url)
    assert (saved["tool"], saved["model"], saved["prompt"]) == ("redux", "demo", "")  # dall-e-2: the default
    assert np.array_equal(pixels(saved["redux_image_paths"][0]), reference.image)
    reading = classify(pixels(studio.folders.outputs.joinpath(*url.split("/v1/files/")[1].split("/"))))
    assert (reading.background, reading.colour) == (reference.scene.background, reference.scene.shapes[0].colour)
    missing = studio.http.post("/v1/images/variations", data={"n": "1"}, files=[("mask", ("m.png", b"x", "image/png"))])
    assert "Missing required parameter: 'image'" in assert_openai_error(missing, 400, "image")


# ----- streamed answers ------------------------------------------------------------------------------


def streamed_events(response) -> list[tuple[str, dict]]:
    """(event name, data) of a server-sent event stream, as the `openai` package splits it."""
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_a_streamed_generation_sends_its_step_previews_then_the_saved_image(studio):
    body = {"prompt": CAPTION, "model": "gpt-image-1", "size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "seed": 7,
            "stream": True, "partial_images": 2}
    events = streamed_events(studio.http.post("/v1/images/generations", json=body))
    assert [(name, data["type"]) for name, data in events] == [
        ("image_generation.partial_image", "image_generation.partial_image")] * 2 + [
        ("image_generation.completed", "image_generation.completed")]
    assert [data["partial_image_index"] for _, data in events[:2]] == [0, 1]
    partials, (_, completed) = [decoded(data) for _, data in events[:2]], events[2]
    assert all(image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) for image in partials)
    assert not np.array_equal(partials[0], partials[1])  # two steps apart
    assert completed["size"] == f"{IMAGE_SIZE}x{IMAGE_SIZE}" and completed["output_format"] == "png"
    reading = classify(decoded(completed))
    assert (reading.background, reading.colour, reading.region) == ("blue", "red", "top left"), reading
    plain = studio.http.post("/v1/images/generations", json={**body, "stream": False, "response_format": "b64_json"})
    assert np.array_equal(decoded(plain.json()["data"][0]), decoded(completed))  # the same image as unstreamed
    assert [name for name, _ in streamed_events(studio.http.post("/v1/images/generations", json={
        **body, "partial_images": 0}))] == ["image_generation.completed"]
    refused = studio.http.post("/v1/images/generations", json={**body, "partial_images": 4})
    assert "Invalid 'partial_images'" in assert_openai_error(refused, 400, "partial_images")


def test_output_format_encodes_the_images_as_gpt_image_does(studio):
    """`output_format` jpeg or webp (at `output_compression`) in b64_json and in the stream; the url stays the PNG."""
    body = {"prompt": CAPTION, "model": "gpt-image-1", "size": f"{IMAGE_SIZE}x{IMAGE_SIZE}", "seed": 3}
    png = studio.http.post("/v1/images/generations", json=body).json()
    assert png["output_format"] == "png"
    exact = decoded(png["data"][0])
    for output_format, compression in (("jpeg", 100), ("webp", 90), ("jpeg", 5)):
        answer = studio.http.post("/v1/images/generations", json={
            **body, "output_format": output_format, "output_compression": compression}).json()
        (item,) = answer["data"]
        encoded = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert encoded.format == output_format.upper() and answer["output_format"] == output_format
        error = np.abs(decoded(item).astype(int) - exact).mean()
        assert (error < 4) if compression >= 90 else (error > 4), (output_format, compression, error)
        assert httpx.get(item["url"], timeout=TIMEOUT_S).headers["content-type"] == "image/png"
    streamed = streamed_events(studio.http.post("/v1/images/generations", json={
        **body, "stream": True, "partial_images": 1, "output_format": "webp"}))
    for _, data in streamed:
        assert data["output_format"] == "webp"
        assert Image.open(io.BytesIO(base64.b64decode(data["b64_json"]))).format == "WEBP"
    example = studio.examples["kontext"][0]
    edited = edit(studio, example.images["image"].read_bytes(), {
        "prompt": example.prompt, "model": "demo-kontext", "seed": "0", "output_format": "jpeg",
        "output_compression": "80", "response_format": "b64_json"})
    assert Image.open(io.BytesIO(base64.b64decode(edited.json()["data"][0]["b64_json"]))).format == "JPEG"
    for field, value in (("output_format", "gif"), ("output_compression", 101)):
        refused = studio.http.post("/v1/images/generations", json={**body, field: value})
        assert f"Invalid '{field}'" in assert_openai_error(refused, 400, field)


def test_a_streamed_edit_sends_image_edit_events(studio):
    example = studio.examples["kontext"][0]
    response = edit(studio, example.images["image"].read_bytes(), {"prompt": example.prompt, "model": "demo-kontext",
                                                                   "seed": 0, "stream": "true", "partial_images": 1})
    assert [name for name, _ in streamed_events(response)] == ["image_edit.partial_image", "image_edit.completed"]


def test_partial_images_are_spread_over_the_steps_before_the_last():
    assert partial_steps(14, 2) == {5, 9} and partial_steps(12, 3) == {3, 6, 9}
    assert partial_steps(2, 3) == {1} and partial_steps(1, 3) == set() == partial_steps(14, 0)  # as many as fit


@pytest.mark.parametrize("setting, param", [(None, None), ("image_path", "image"), ("width", "size")])
def test_a_failure_after_the_stream_began_is_an_error_event_in_openais_shape(setting, param):
    """An engine refusal about a request field (InvalidRequest.setting) names OpenAI's parameter for it."""
    async def events():
        yield {"type": "image_generation.partial_image", "b64_json": ""}
        raise InvalidRequest("The studio could not make this image.", setting)

    async def read():
        return [chunk async for chunk in server_sent(events(), ApiError)]

    first, error = asyncio.run(read())
    assert first.startswith("event: image_generation.partial_image\n")
    name, data = error.strip().split("\n")
    assert name == "event: error" and json.loads(data.removeprefix("data: ")) == {"error": {
        "message": "The studio could not make this image.", "type": "invalid_request_error", "param": param,
        "code": None}}


# ----- one queue with the page ---------------------------------------------------------------------


def test_api_and_page_jobs_run_in_arrival_order(studio):
    """A page job running, then an API request, then another page job: the API's runs before the second page job."""
    from gradio_client import Client

    page = Client(studio.url, analytics_enabled=False, verbose=False)
    values = dict(model="demo", steps="12", width=IMAGE_SIZE, height=IMAGE_SIZE, init_image=None, image_strength=0.4,
                  random_seed=False, prompt="a blue star on a yellow background")
    first = page.submit(**values, seed=100, batch_count=4, api_name="/generate")
    outputs = studio.folders.outputs
    deadline = time.monotonic() + TIMEOUT_S
    while not list(outputs.glob("*/*-generate-100.png")):  # the first page job is running
        assert time.monotonic() < deadline and not first.done(), "the first page job did not start"
        time.sleep(0.02)
    answers = []
    api = threading.Thread(target=lambda: answers.append(studio.http.post("/v1/images/generations", json={
        "model": "demo", "prompt": "a red square", "seed": 200, "response_format": "url"})))
    api.start()
    time.sleep(1.0)  # the API request has taken its turn
    second = page.submit(**values, seed=300, batch_count=1, api_name="/generate")
    assert not first.done(), "the first page job ended too soon for this test: give it more steps"
    for job in (first, second):
        assert "Done" in job.result(timeout=TIMEOUT_S)[0]
    api.join(TIMEOUT_S)
    assert answers[0].status_code == 200, answers[0].text
    finished = {seed: outputs.glob(f"*/*-generate-{seed}.png") for seed in (103, 200, 300)}
    moments = {seed: next(paths).stat().st_mtime_ns for seed, paths in finished.items()}
    assert moments[103] < moments[200] < moments[300], moments


def test_api_requests_past_the_waiting_limit_are_refused_with_429():
    threads, release = JobThreads(1, ApiError), threading.Event()

    async def two_requests():
        first = asyncio.ensure_future(threads.run(release.wait, 60))
        await asyncio.sleep(0.05)  # the first is waiting on its thread
        with pytest.raises(ApiError) as refused:
            await threads.run(time.time)
        release.set()
        return await first, refused.value, await threads.run(time.time)  # a slot again once the first ended

    first, refused, later = asyncio.run(two_requests())
    assert first is True and later > 0
    assert (refused.status, refused.code, refused.kind) == (429, "rate_limit_exceeded", "requests")


# ----- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body, status, param, code, words", [
    ({"prompt": "x", "model": "nope"}, 404, "model", "model_not_found", "GET /v1/models"),
    ({"prompt": "x", "model": "demo-fill"}, 400, "model", None, "text-to-image"),
    ({"model": "demo"}, 400, "prompt", None, "Missing required parameter: 'prompt'"),
    ({"model": "demo", "prompt": None}, 400, "prompt", None, "Missing required parameter: 'prompt'"),
    ({"prompt": "x", "n": 0}, 400, "n", None, "Invalid 'n'"),
    ({"prompt": "x", "n": 17}, 400, "n", None, "Invalid 'n'"),
    ({"prompt": "x", "size": "large"}, 400, "size", None, "1024x1024"),
    ({"prompt": "x", "size": "100x64"}, 400, "size", None, "multiple of 16"),
    ({"prompt": "x", "size": "8192x8192"}, 400, "size", None, "out of range"),
    ({"prompt": "x", "size": "9" * 5000 + "x64"}, 400, "size", None, "like 1024x1024"),
    ({"prompt": "x", "response_format": "gif"}, 400, "response_format", None, "Invalid 'response_format'"),
    ({"prompt": "x", "seed": -1}, 400, "seed", None, "Invalid 'seed'"),
    ({"prompt": "x", "model": "schnell"}, 400, "model", None, "not on this machine"),  # listed, not downloaded
    ({"prompt": "x <lora:nope:1>", "size": "64x64"}, 400, "prompt", None, "not in the LoRA library"),
    ({"prompt": "a __nowhere__ cat", "size": "64x64"}, 400, "prompt", None, "__nowhere__"),
])
def test_bad_generation_requests_get_openai_errors(studio, body, status, param, code, words):
    assert words in assert_openai_error(studio.http.post("/v1/images/generations", json=body), status, param, code)


def test_bad_bodies_and_uploads_get_openai_errors(studio):
    photo = png_bytes(Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white"))
    not_json = studio.http.post("/v1/images/generations", content=b"prompt=x")
    assert "JSON" in assert_openai_error(not_json, 400)
    nan = studio.http.post("/v1/images/generations", content=b'{"prompt": "x", "seed": NaN}')
    assert assert_openai_error(nan, 400, "seed") == "seed must be a finite number, not NaN."
    assert declared_too_large(studio).startswith(b"HTTP/1.1 413 ")
    as_json = studio.http.post("/v1/images/edits", json={"prompt": "x"})
    assert "multipart" in assert_openai_error(as_json, 400)
    no_image = studio.http.post("/v1/images/edits", data={"prompt": "x"}, files={"mask": ("m.png", photo)})
    assert "'image'" in assert_openai_error(no_image, 400, "image")
    broken = edit(studio, b"not a picture", {"prompt": "x", "model": "demo-kontext"})
    assert "picture.png" in assert_openai_error(broken, 400, "image")
    broken_mask = edit(studio, photo, {"prompt": "x", "model": "demo-fill"}, mask=b"not a mask")
    assert "mask.png" in assert_openai_error(broken_mask, 400, "mask")
    opaque = edit(studio, photo, {"prompt": "x", "model": "demo-fill"}, mask=photo)
    assert "transparent" in assert_openai_error(opaque, 400, "mask")
    opaque_alone = edit(studio, photo, {"prompt": "x", "model": "demo-fill"})  # its own alpha would be the mask
    assert "No mask was sent and the image has no transparent" in assert_openai_error(opaque_alone, 400, "image")
    smaller = openai_mask(np.ones((16, 16), bool))
    assert "same size" in assert_openai_error(edit(studio, photo, {"prompt": "x"}, mask=smaller), 400, "mask")
    unmasked_base = edit(studio, photo, {"prompt": "x", "model": "demo"})
    assert "Kontext" in assert_openai_error(unmasked_base, 400, "model")
    masked_kontext = edit(studio, photo, {"prompt": "x", "model": "demo-kontext"}, mask=smaller)
    assert "Fill" in assert_openai_error(masked_kontext, 400, "model")
    assert "not_found" == studio.http.get("/v1/files/2026-01-01/none.png").json()["error"]["code"]
    nested = studio.http.post("/v1/images/generations", content=b'{"prompt": "x", "a": ' + b"[" * 100_000 +
                              b"]" * 100_000 + b"}")
    assert "too deeply" in assert_openai_error(nested, 400)
    many = studio.http.post("/v1/images/edits", data={"prompt": "x"},
                            files=[("image[]", (f"{n}.png", photo)) for n in range(19)])
    assert "at most 16 images; 19 were sent" in assert_openai_error(many, 400, "image")


def test_a_chunked_body_past_the_limit_is_refused_as_it_is_read(studio, monkeypatch):
    """A body sent in chunks states no length: it is counted as it arrives (the limit lowered here to 1 MB)."""
    monkeypatch.setattr(api_server, "MAX_BODY_BYTES", 2**20)

    def chunks():
        yield b'{"prompt": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    refused = studio.http.post("/v1/images/generations", content=chunks(), headers={"Content-Type": "application/json"})
    assert "larger than 1 MB" in assert_openai_error(refused, 413)


def test_openais_own_model_names_and_unknown_routes(studio):
    """Apps that check a model before using it (GET /v1/models/{id}) may name any of OpenAI's image models, which
    run the tool's default; a route the studio does not serve answers in OpenAI's error shape."""
    for name in ("dall-e-3", "gpt-image-1", "chatgpt-image-latest"):
        assert studio.http.get(f"/v1/models/{name}").json()["id"] == name
    made = studio.http.post("/v1/images/generations", json={"prompt": CAPTION, "model": "chatgpt-image-latest",
                                                            "size": "64x64", "response_format": "url"})
    assert saved_request(studio, made.json()["data"][0]["url"])["model"] == "demo"
    chat = studio.http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": []})
    assert "Invalid URL (POST /v1/chat/completions)" in assert_openai_error(chat, 404, code="unknown_url")


def test_with_auth_every_route_asks_for_the_pages_credentials(studio):
    app = build_app(studio.manager, studio.folders)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               auth=("ann", "s3cret"), **launch_kwargs(studio.folders))
    try:
        url = f"http://127.0.0.1:{port}/v1/models"
        refused = httpx.get(url)
        assert "user and password" in assert_openai_error(refused, 401, code="invalid_api_key")
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert_openai_error(httpx.get(url, auth=("ann", "wrong")), 401, code="invalid_api_key")
        assert_openai_error(httpx.post(url.replace("models", "images/generations"), json={}), 401,
                            code="invalid_api_key")
        assert httpx.get(url, auth=("ann", "s3cret")).json()["object"] == "list"  # HTTP basic
        assert httpx.get(url, headers={"Authorization": "Bearer ann:s3cret"}).status_code == 200  # as an api_key
        made = httpx.post(url.replace("models", "images/generations"), auth=("ann", "s3cret"), timeout=TIMEOUT_S,
                          json={"prompt": CAPTION, "size": "64x64", "response_format": "url"})
        signed = made.json()["data"][0]["url"]  # as OpenAI's: it opens without the credentials, for an hour
        assert httpx.get(signed).headers["content-type"] == "image/png"
        assert_openai_error(httpx.get(signed.split("?")[0]), 401, code="invalid_api_key")
        assert_openai_error(httpx.get(signed[:-1] + ("0" if signed[-1] != "0" else "1")), 401, code="invalid_api_key")
        assert httpx.get(signed.split("?")[0], auth=("ann", "s3cret")).status_code == 200
    finally:
        app.close()
