"""OpenAI's images API on the studio's own server, so clients that already speak it (the `openai` package, curl,
apps with an "OpenAI-compatible" setting) make images through the page's validation, queue, engine and outputs.

    POST /v1/images/generations  JSON: prompt, model, n, size "WxH" or "auto", response_format, seed  -> Generate
    POST /v1/images/edits        multipart: image and mask (transparent = edit) -> Fill; image alone -> Kontext
                                 (on a Fill model, and as dall-e-2 (OpenAI's default for edits) with an image that has
                                 transparency: the image's own transparent area is the mask); several images
                                 (up to 16) -> Kontext on them side by side, as ComfyUI stitches them
    POST /v1/images/variations   multipart: image -> Redux (FLUX.1's own variations: the image, no prompt)
    GET  /v1/models              the models these take (OpenAI's list shape); GET /v1/models/{id} one of them
    GET  /v1/files/{day}/{name}  a saved result: what response_format "url" points at (with --auth, the url is
                                 signed for an hour, as OpenAI's are, so it opens without the credentials)

`stream: true` on generations and edits answers with OpenAI's server-sent events: `partial_images` (0 to 3) of
the steps' previews, then each finished image (openai_stream.py).

OpenAI's own model names (dall-e-3, gpt-image-1...), which some apps cannot change, run the tool's default model.
Results are saved with their metadata like the page's (so they appear in History). Without `response_format`
an image carries both `b64_json` and `url`, for clients of either habit. `output_format` (png, jpeg, webp) and
`output_compression` encode `b64_json` and streamed images as gpt-image does; a `url` is the saved PNG. Other
OpenAI fields (quality, style, user, background...) are accepted and ignored. Every error is OpenAI's shape:
{"error": {"message", "type", "param", "code"}}.
"""

import hashlib
import hmac
import re
import secrets
import shutil
import tempfile
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from PIL import Image
from pydantic import Field, ValidationError
from starlette.datastructures import UploadFile

from mflux_core.errors import InvalidRequest
from mflux_core.images.io import load_image, load_rgba
from mflux_core.images.stitch import stitched_side_by_side
from mflux_core.request import MAX_SEED, GenerationRequest
from mflux_core.settings_schema import MAX_BATCH
from mflux_core.tools.specs import TOOL_SPECS, default_model_for
from webui.api_server import (MAX_WAITING, UNAUTHORIZED, ApiFields, ApiRefusal, JobThreads, api_routes, authorized,
                              credentials, json_object, offered)
from webui.gallery import DATE_FOLDER, save_result
from webui.openai_stream import OutputFormat, run_streamed, server_sent
from webui.requests import requests_from_settings
from webui.turns import request_about

API_TOOLS = ("generate", "fill", "kontext", "redux")
DALL_E_2 = "dall-e-2"  # its edits take an image's transparent area as the mask
OPENAI_MODEL = re.compile(r"^(dall-e-\d|gpt-image-|chatgpt-image-)")
OPENAI_SOURCE = "OpenAI API"  # who submitted a job, as the queue shows it
SIZE = re.compile(r"^\s*([0-9]{1,9})\s*[xX×]\s*([0-9]{1,9})\s*$")
RESULT_NAME = re.compile(r"^[\w-]+\.png$")
URL_LIFETIME_S = 3600  # OpenAI's result URLs last an hour
MAX_EDIT_IMAGES = 16  # OpenAI's limit for one edit
MAX_FORM_FILES = 64  # a form's files read, so that our own check names the images past MAX_EDIT_IMAGES
OPAQUE = 128  # a mask pixel at least this opaque is kept; below, it is edited (OpenAI: transparent = edit)
PARAMS = {"width": "size", "height": "size", "batch_count": "n", "seed": "seed", "prompt": "prompt",  # ours -> OpenAI's
          "image_path": "image", "masked_image_path": "mask", "redux_image_paths": "image",
          "lora_paths": "prompt", "model": "model"}  # LoRAs come as the prompt's <lora:name:scale> tags


class ImageParams(ApiFields):
    """The fields we use of OpenAI's image requests; the rest are accepted and ignored."""

    prompt: str
    model: str | None = None
    n: int | None = Field(None, ge=1, le=MAX_BATCH)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False  # server-sent events (openai_stream.py): generations and edits
    partial_images: int | None = Field(None, ge=0, le=3)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    output_compression: int = Field(100, ge=0, le=100)

    @property
    def output(self) -> OutputFormat:
        return OutputFormat(self.output_format, self.output_compression)


@dataclass
class ApiError(ApiRefusal):
    """OpenAI's error: {"error": {"message", "type", "param", "code"}}."""

    param: str | None = None
    code: str | None = None
    kind: str = "invalid_request_error"

    @classmethod
    def of(cls, status: int, message: str, setting: str | None = None) -> "ApiError":
        codes = {401: ("invalid_api_key", "invalid_request_error"), 429: ("rate_limit_exceeded", "requests"),
                 500: (None, "server_error")}
        code, kind = codes.get(status, (None, "invalid_request_error"))
        return cls(status, message, PARAMS.get(setting), code=code, kind=kind)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def refusal(error: ValidationError) -> ApiError:
    """The first problem pydantic found, as OpenAI words it ("Invalid 'n': ...")."""
    problem = error.errors()[0]
    param = ".".join(str(part) for part in problem["loc"]) or None
    if problem["type"] == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param)
    return ApiError(400, f"Invalid '{param}': {problem['msg']}.", param)


def parsed_params(fields: dict) -> ImageParams:
    try:
        return ImageParams.model_validate(fields)
    except ValidationError as error:
        raise refusal(error) from None


def image_size(size: str | None) -> tuple[int | None, int | None]:
    """(width, height) of "WxH"; (None, None) for "auto" or none: the model's native size or the input's."""
    if size is None or size.strip().lower() in ("", "auto"):
        return None, None
    match = SIZE.match(size)
    if not match:
        raise ApiError(400, f"Invalid 'size' {size[:40]!r}: give width x height in pixels, like 1024x1024, or "
                            "'auto'.", "size")
    return int(match.group(1)), int(match.group(2))


# ----- models -----------------------------------------------------------------------------------


def api_models(studio) -> dict:
    """name -> ModelEntry of every model the API's tools run on."""
    kinds = {kind for tool in API_TOOLS for kind in TOOL_SPECS[tool].model_kinds}
    return {entry.name: entry for entry in studio.manager.list_models() if entry.kind in kinds}


def model_object(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "mflux-studio"}


def model_not_found(name: str) -> ApiError:
    return ApiError(404, f"The model {name!r} does not exist: GET /v1/models lists the studio's models.", "model",
                    "model_not_found")


def model_for(studio, tool: str, name: str | None, wrong_kind: str) -> str:
    """The model a request runs on: the one it names (which must suit the tool) or the tool's default (also for
    OpenAI's own model names, and a blank one, which Open WebUI sends when its admin picked no model)."""
    if name is None or not name.strip() or OPENAI_MODEL.match(name):
        return default_model_for(tool, studio.manager.models_dir)
    models = api_models(studio)
    if name not in models:
        raise model_not_found(name)
    kinds = TOOL_SPECS[tool].model_kinds + TOOL_SPECS[tool].also_kinds
    if models[name].kind not in kinds:
        suited = ", ".join(n for n, entry in models.items() if entry.kind in kinds)
        raise ApiError(400, f"{wrong_kind} {name} is a {models[name].kind} model; use one of: {suited}.", "model")
    return name


def is_fill_model(studio, name: str | None) -> bool:
    entry = api_models(studio).get(name)
    return entry is not None and entry.kind in TOOL_SPECS["fill"].model_kinds


def transparent_area(upload: UploadFile, param: str = "image") -> np.ndarray:
    """Where an uploaded image is transparent (OpenAI's edit area), as booleans."""
    return np.asarray(uploaded(upload, load_rgba, param).getchannel("A")) < OPAQUE


def edits_by_transparency(studio, model: str | None, images: list[UploadFile]) -> bool:
    """Whether an edit sent without a mask repaints its image's transparent area: on a Fill model, and as OpenAI's
    dall-e-2 (also its default model for edits) does with one image that has transparency."""
    if is_fill_model(studio, model):
        return True
    return model in (None, DALL_E_2) and len(images) == 1 and bool(transparent_area(images[0]).any())


# ----- requests and results -------------------------------------------------------------------


@contextmanager
def refused_as(param: str | None = None):
    """Our refusals of what happens inside as OpenAI's errors, naming `param` (by default the OpenAI parameter
    of the request setting the refusal is about, where there is one)."""
    try:
        yield
    except InvalidRequest as error:
        raise ApiError(400, str(error), param or PARAMS.get(error.setting)) from None


def image_requests(studio, params: ImageParams, tool: str, model: str, **inputs) -> list[GenerationRequest]:
    """The validated requests of one API call (n consecutive seeds), exactly as the page builds its own."""
    width, height = image_size(params.size)
    settings = {"tool": tool, "model": model, "prompt": params.prompt, "seed": params.seed,
                "batch_count": params.n or 1, "width": width, "height": height, "keep_unmasked": tool == "fill"}
    with refused_as():
        return requests_from_settings(settings, studio.request_context(), **inputs)


def run_in_turn(studio, requests: list[GenerationRequest], gone: threading.Event) -> list[Path]:
    """Run the requests when the engine's turn comes (after the page's and the API's earlier jobs); save each. The
    client going away (`gone`) stops them."""
    with studio.turns.turn(**request_about(requests), source=OPENAI_SOURCE, cancel=gone) as entry:
        with closing(studio.manager.batch(requests, entry.cancel.is_set)) as runs:  # on a cluster: over the replicas
            return [save_result(studio.folders.outputs, run(None)) for run in runs]


def images_response(studio, paths: list[Path], params: ImageParams, link: Callable[[str, str], str]) -> dict:
    """OpenAI's answer; `link(day, name)`: the URL of a saved result."""
    data = []
    for path in paths:
        item = {}
        if params.response_format in (None, "b64_json"):
            item["b64_json"] = params.output.base64_of(path)
        if params.response_format in (None, "url"):
            day, name = path.relative_to(studio.folders.outputs).parts
            item["url"] = link(day, name)
        data.append(item)
    return {"created": int(time.time()), "data": data, "output_format": params.output_format}


class ResultLinks:
    """The URLs of saved results. With credentials asked for, each carries its expiry and a signature of its path
    and expiry under a key made at start, so it opens without them for an hour, as OpenAI's pre-signed URLs do
    (apps put them in an <img> or download them plainly)."""

    def __init__(self, signed: bool):
        self._key = secrets.token_bytes(32) if signed else None

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self._key, f"{path} {expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, day: str, name: str) -> str:
        path = f"/v1/files/{day}/{name}"
        if self._key is None:
            return base_url.rstrip("/") + path
        expires = str(int(time.time()) + URL_LIFETIME_S)
        return f"{base_url.rstrip('/')}{path}?expires={expires}&signature={self._signature(path, expires)}"

    def opens(self, request: Request) -> bool:
        """Whether the request's URL is one of ours, signed and not expired."""
        expires, signature = request.query_params.get("expires", ""), request.query_params.get("signature", "")
        return (self._key is not None and expires.isdigit() and len(expires) <= 12 and int(expires) >= time.time()
                and hmac.compare_digest(signature, self._signature(request.url.path, expires)))


# ----- uploads ----------------------------------------------------------------------------------


def uploaded(upload: UploadFile, loader: Callable, param: str = "image") -> Image.Image:
    """An uploaded file decoded by `loader` with its checks (size, format, damage), named by its file name; a
    refusal names the form field, `param`."""
    with tempfile.NamedTemporaryFile(suffix=Path(upload.filename or "").suffix) as copy, refused_as(param):
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, copy)
        copy.flush()
        return loader(copy.name, name=upload.filename or "uploaded")


def edit_mask(upload: UploadFile, image: Image.Image, param: str) -> Image.Image:
    """OpenAI's mask (transparent = edit) as ours ('L', white = regenerate); `param`: the form field it came as."""
    edited = transparent_area(upload, param)
    if edited.shape != (image.height, image.width):
        raise ApiError(400, f"The mask is {edited.shape[1]}x{edited.shape[0]} pixels but the image is "
                            f"{image.width}x{image.height}: they must be the same size.", param)
    if not edited.any():
        if param == "image":  # no mask was sent: the image's own transparency was to be the mask
            raise ApiError(400, "No mask was sent and the image has no transparent pixels: send a mask, or an image "
                                "whose transparent (alpha 0) area is what gets edited.", param)
        raise ApiError(400, "The mask has no transparent pixels: its transparent (alpha 0) area is what gets "
                            "edited.", param)
    return Image.fromarray(np.where(edited, 255, 0).astype(np.uint8), "L")


def form_files(form, name: str) -> list[UploadFile]:
    """The files sent as `name` or, as the `openai` package sends a list, `name[]`."""
    return [value for key, value in form.multi_items() if key in (name, f"{name}[]") and isinstance(value, UploadFile)]


# ----- the routes ------------------------------------------------------------------------------


def generation_requests(studio, fields: dict) -> tuple[ImageParams, list[GenerationRequest]]:
    params = parsed_params(fields)
    model = model_for(studio, "generate", params.model, "Generating from text needs a text-to-image model:")
    return params, image_requests(studio, params, "generate", model)


def form_images(form, verb: str, **defaults) -> tuple[ImageParams, list[UploadFile]]:
    """A multipart request's fields (over `defaults`) and its image files, to `verb` ("edit")."""
    params = parsed_params({**defaults, **{key: value for key, value in form.multi_items() if isinstance(value, str)}})
    images = form_files(form, "image")
    if not images:
        raise ApiError(400, f"Missing required parameter: 'image' (the picture to {verb}, as a file).", "image")
    if len(images) > MAX_EDIT_IMAGES:
        raise ApiError(400, f"Send at most {MAX_EDIT_IMAGES} images; {len(images)} were sent.", "image")
    return params, images


def one_image(images: list[UploadFile], why: str) -> Image.Image:
    if len(images) != 1:
        raise ApiError(400, f"Send one image {why}; {len(images)} were sent.", "image")
    return uploaded(images[0], load_image)


def edit_requests(studio, form) -> tuple[ImageParams, list[GenerationRequest]]:
    params, images = form_images(form, "edit")
    masks, mask_param = form_files(form, "mask"), "mask"
    inputs = studio.request_context().inputs
    if not masks and edits_by_transparency(studio, params.model, images):
        masks, mask_param = images[:1], "image"
    if masks:
        model = model_for(studio, "fill", params.model, "An edit with a mask needs a Fill or base model:")
        image = one_image(images, "with a mask (Fill repaints one picture; several, without a mask, are combined "
                                  "by Kontext)")
        mask = edit_mask(masks[0], image, mask_param)
        requests = image_requests(studio, params, "fill", model, image_path=inputs.save(image, "api-image"),
                                  masked_image_path=inputs.save(mask, "api-mask"))
    else:
        model = model_for(studio, "kontext", params.model,
                          "An edit without a mask needs a Kontext model (or send a mask: transparent = edit):")
        # Kontext reads one reference: several images are one, side by side, decoded one at a time
        with refused_as("image"):
            reference = stitched_side_by_side(uploaded(image, load_image) for image in images)
        requests = image_requests(studio, params, "kontext", model, image_path=inputs.save(reference, "api-image"))
    return params, requests


def variation_requests(studio, form) -> tuple[ImageParams, list[GenerationRequest]]:
    """FLUX.1-Redux is FLUX's way of making variations: the image as its one reference, no prompt."""
    params, images = form_images(form, "vary", prompt="")
    image = one_image(images, "to vary")
    model = model_for(studio, "redux", params.model, "Variations run Redux on a text-to-image model:")
    path = studio.request_context().inputs.save(image, "api-image")
    return params, image_requests(studio, params, "redux", model, redux_image_paths=(path,))


def images_made(gone: threading.Event, studio, params: ImageParams, requests: list[GenerationRequest],
                link: Callable[[str, str], str]) -> dict:
    return images_response(studio, run_in_turn(studio, requests, gone), params, link)


def openai_router(studio, auth=None) -> APIRouter:
    """The API's routes; with `auth` (Gradio's launch argument) every route asks for those credentials."""
    router = APIRouter()
    threads = JobThreads(MAX_WAITING, ApiError)
    route = api_routes(router, auth, ApiError)
    links = ResultLinks(signed=auth is not None)

    async def answer(request: Request, params: ImageParams, requests: list[GenerationRequest], kind: str | None):
        """The images as JSON, or as OpenAI's event stream when asked for one (`kind`: the events' prefix)."""
        if kind and params.stream:
            events = threads.stream(run_streamed, studio, requests, kind, params.partial_images or 0, params.output,
                                    OPENAI_SOURCE)
            return StreamingResponse(server_sent(events, ApiError), media_type="text/event-stream")
        link = partial(links.url, str(request.base_url))
        return JSONResponse(await threads.run_for(request, images_made, studio, params, requests, link))

    @route("POST", "/v1/images/generations")
    async def generations(request: Request):
        fields = await json_object(request, ApiError)
        params, requests = await threads.run(generation_requests, studio, fields)
        return await answer(request, params, requests, "image_generation")

    async def multipart(request: Request, requests_of: Callable, what: str, kind: str | None):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, f"Send {what} as multipart/form-data: the image (and mask) as files, the rest as "
                                "fields.")
        async with request.form(max_files=MAX_FORM_FILES, max_fields=64) as form:
            params, requests = await threads.run(requests_of, studio, form)
        return await answer(request, params, requests, kind)

    @route("POST", "/v1/images/edits")
    async def edits(request: Request):
        return await multipart(request, edit_requests, "an edit", "image_edit")

    @route("POST", "/v1/images/variations")
    async def variations(request: Request):
        return await multipart(request, variation_requests, "a variation", None)  # OpenAI streams no variations

    @route("GET", "/v1/models")
    async def models(request: Request):
        listing = [model_object(name) for name, entry in api_models(studio).items() if offered(entry)]
        return JSONResponse({"object": "list", "data": listing})

    @route("GET", "/v1/models/{name:path}")
    async def model(request: Request):
        name = request.path_params["name"]
        if name not in api_models(studio) and not OPENAI_MODEL.match(name):  # OpenAI's names run the default
            raise model_not_found(name)
        return JSONResponse(model_object(name))

    @api_routes(router, None, ApiError)("GET", "/v1/files/{day}/{name}")  # its own credentials: a signed URL or auth
    async def result_file(request: Request):
        if auth is not None and not (links.opens(request) or authorized(credentials(request), auth)):
            raise ApiError.of(401, UNAUTHORIZED)
        day, name = request.path_params["day"], request.path_params["name"]
        path = studio.folders.outputs / day / name
        if not (DATE_FOLDER.match(day) and RESULT_NAME.match(name) and path.is_file()):
            raise ApiError(404, f"No result {day}/{name} in the studio's outputs.", code="not_found")
        return FileResponse(path, media_type="image/png")

    async def not_here(request: Request):
        raise ApiError(404, f"Invalid URL ({request.method} {request.url.path}): the studio serves OpenAI's images "
                            "API (generations, edits, variations) and its models.", code="unknown_url")

    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        route(method, "/v1/{rest:path}")(not_here)
    return router
