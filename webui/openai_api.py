"""OpenAI's images API on the studio's own server, so clients that already speak it (the `openai` package, curl,
apps with an "OpenAI-compatible" setting) make images through the page's validation, queue, engine and outputs.

    POST /v1/images/generations  JSON: prompt, model, n, size "WxH" or "auto", response_format, seed  -> Generate
    POST /v1/images/edits        multipart: image and mask (transparent = edit) -> Fill; image alone -> Kontext
                                 (on a Fill model: the image's own transparent area is the mask)
    GET  /v1/models              the models these take (OpenAI's list shape); GET /v1/models/{id} one of them
    GET  /v1/files/{day}/{name}  a saved result: what response_format "url" points at

Results are saved with their metadata like the page's (so they appear in History). Without `response_format`
an image carries both `b64_json` and `url`, for clients of either habit. Other OpenAI fields (quality, style,
user, background, output_format...) are accepted and ignored. Every error is OpenAI's shape:
{"error": {"message", "type", "param", "code"}}.
"""

import asyncio
import base64
import binascii
import re
import secrets
import shutil
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mflux_core.errors import InvalidRequest
from mflux_core.images.io import load_image, load_rgba
from mflux_core.request import MAX_SEED, GenerationRequest
from mflux_core.settings_schema import MAX_BATCH
from mflux_core.tools.specs import TOOL_SPECS, default_model_for
from webui.gallery import DATE_FOLDER, save_result
from webui.jobs import error_text
from webui.requests import requests_from_settings


MAX_BODY_BYTES = 64 * 2**20  # the page's upload limit too
MAX_WAITING = 16  # API requests running or waiting for their turn at once; more are refused (429)
API_TOOLS = ("generate", "fill", "kontext")
SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
RESULT_NAME = re.compile(r"^[\w-]+\.png$")
OPAQUE = 128  # a mask pixel at least this opaque is kept; below, it is edited (OpenAI: transparent = edit)


class ImageParams(BaseModel):
    """The fields we use of OpenAI's image requests; the rest are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    model: str | None = None
    n: int | None = Field(None, ge=1, le=MAX_BATCH)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


@dataclass
class ApiError(Exception):
    status: int
    message: str
    param: str | None = None
    code: str | None = None
    kind: str = "invalid_request_error"

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Basic realm="mflux-studio"'} if self.status == 401 else None
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


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
        raise ApiError(400, f"Invalid 'size' {size!r}: give width x height in pixels, like 1024x1024, or 'auto'.",
                       "size")
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
    """The model a request runs on: the one it names (which must suit the tool) or the tool's default."""
    if name is None:
        return default_model_for(tool, studio.manager.models_dir)
    models = api_models(studio)
    if name not in models:
        raise model_not_found(name)
    if models[name].kind not in TOOL_SPECS[tool].model_kinds:
        suited = ", ".join(n for n, entry in models.items() if entry.kind in TOOL_SPECS[tool].model_kinds)
        raise ApiError(400, f"{wrong_kind} {name} is a {models[name].kind} model; use one of: {suited}.", "model")
    return name


def is_fill_model(studio, name: str | None) -> bool:
    entry = api_models(studio).get(name)
    return entry is not None and entry.kind in TOOL_SPECS["fill"].model_kinds


# ----- requests and results -------------------------------------------------------------------


def image_requests(studio, params: ImageParams, tool: str, model: str, **inputs) -> list[GenerationRequest]:
    """The validated requests of one API call (n consecutive seeds), exactly as the page builds its own."""
    width, height = image_size(params.size)
    settings = {"tool": tool, "model": model, "prompt": params.prompt, "seed": params.seed,
                "batch_count": params.n or 1, "width": width, "height": height, "keep_unmasked": tool == "fill"}
    return requests_from_settings(settings, studio.request_context(), **inputs)


def run_in_turn(studio, requests: list[GenerationRequest]) -> list[Path]:
    """Run the requests when the engine's turn comes (after the page's and the API's earlier jobs); save each."""
    with studio.turns.turn():
        with closing(studio.manager.batch(requests)) as runs:  # on a cluster: spread over the replicas, in order
            return [save_result(studio.folders.outputs, run(None)) for run in runs]


def images_response(studio, paths: list[Path], response_format: str | None, base_url: str) -> dict:
    data = []
    for path in paths:
        item = {}
        if response_format in (None, "b64_json"):
            item["b64_json"] = base64.b64encode(path.read_bytes()).decode("ascii")
        if response_format in (None, "url"):
            day, name = path.relative_to(studio.folders.outputs).parts
            item["url"] = f"{base_url.rstrip('/')}/v1/files/{day}/{name}"
        data.append(item)
    return {"created": int(time.time()), "data": data}


# ----- uploads ----------------------------------------------------------------------------------


def uploaded(upload: UploadFile, loader: Callable) -> Image.Image:
    """An uploaded file decoded by `loader` with its checks (size, format, damage), named by its file name."""
    with tempfile.NamedTemporaryFile(suffix=Path(upload.filename or "").suffix) as copy:
        upload.file.seek(0)
        shutil.copyfileobj(upload.file, copy)
        copy.flush()
        return loader(copy.name, name=upload.filename or "uploaded")


def edit_mask(upload: UploadFile, image: Image.Image) -> Image.Image:
    """OpenAI's mask (transparent = edit) as ours ('L', white = regenerate)."""
    alpha = np.asarray(uploaded(upload, load_rgba).getchannel("A"))
    if alpha.shape != (image.height, image.width):
        raise ApiError(400, f"The mask is {alpha.shape[1]}x{alpha.shape[0]} pixels but the image is "
                            f"{image.width}x{image.height}: they must be the same size.", "mask")
    edited = alpha < OPAQUE
    if not edited.any():
        raise ApiError(400, "The mask has no transparent pixels: its transparent (alpha 0) area is what gets "
                            "edited.", "mask")
    return Image.fromarray(np.where(edited, 255, 0).astype(np.uint8), "L")


def form_files(form, name: str) -> list[UploadFile]:
    """The files sent as `name` or, as the `openai` package sends a list, `name[]`."""
    return [value for key, value in form.multi_items() if key in (name, f"{name}[]") and isinstance(value, UploadFile)]


# ----- the routes ------------------------------------------------------------------------------


def generate_images(studio, fields: dict, base_url: str) -> dict:
    params = parsed_params(fields)
    model = model_for(studio, "generate", params.model, "Generating from text needs a text-to-image model:")
    paths = run_in_turn(studio, image_requests(studio, params, "generate", model))
    return images_response(studio, paths, params.response_format, base_url)


def edit_images(studio, form, base_url: str) -> dict:
    params = parsed_params({key: value for key, value in form.multi_items() if isinstance(value, str)})
    images, masks = form_files(form, "image"), form_files(form, "mask")
    if len(images) != 1:
        raise ApiError(400, "Send exactly one image to edit (the 'image' file)." if images else
                       "Missing required parameter: 'image' (the picture to edit, as a file).", "image")
    image = uploaded(images[0], load_image)
    inputs = studio.request_context().inputs
    if not masks and is_fill_model(studio, params.model):
        masks = images  # OpenAI's other way: an image alone whose transparent area is what gets edited
    if masks:
        model = model_for(studio, "fill", params.model, "An edit with a mask needs a Fill model:")
        mask = edit_mask(masks[0], image)
        requests = image_requests(studio, params, "fill", model, image_path=inputs.save(image, "api-image"),
                                  masked_image_path=inputs.save(mask, "api-mask"))
    else:
        model = model_for(studio, "kontext", params.model,
                          "An edit without a mask needs a Kontext model (or send a mask: transparent = edit):")
        requests = image_requests(studio, params, "kontext", model, image_path=inputs.save(image, "api-image"))
    return images_response(studio, run_in_turn(studio, requests), params.response_format, base_url)


def credentials(request: Request) -> tuple[str, str] | None:
    """(user, password) of HTTP basic auth, or of a bearer token "user:password" (an `openai` client's api_key)."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    elif scheme.lower() != "bearer":
        return None
    user, colon, password = value.strip().partition(":")
    return (user, password) if colon else None


def authorized(given: tuple[str, str] | None, auth) -> bool:
    """Whether `given` passes the page's Gradio `auth`: a (user, password) pair, a list of them, or a function."""
    if given is None:
        return False
    if callable(auth):
        return bool(auth(*given))
    pairs = [auth] if isinstance(auth, tuple) else list(auth)
    return any(secrets.compare_digest(f"{u}:{p}".encode(), ":".join(given).encode()) for u, p in pairs)


class JobThreads:
    """API jobs on a thread each, as the page's jobs run: waiting for their turn on the pool Gradio runs those on,
    a crowd of API requests could leave the running page job without a thread to finish on."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    async def run(self, work: Callable, *args):
        """`work(*args)`'s result (or error), once it ran on its thread; ApiError 429 when `limit` already wait."""
        if not self._slots.acquire(blocking=False):
            raise ApiError(429, f"The studio has {self.limit} API requests waiting already: try again later.",
                           code="rate_limit_exceeded", kind="requests")
        loop = asyncio.get_running_loop()
        answer = loop.create_future()

        def settle(outcome: Callable, value) -> None:
            if not answer.done():  # done: the client went away and its request was cancelled
                outcome(value)

        def job():
            try:
                outcome, value = answer.set_result, work(*args)
            except BaseException as error:  # handed to the request, which answers with it
                outcome, value = answer.set_exception, error
            self._slots.release()  # before the answer, so the slot is free once a request has its answer
            loop.call_soon_threadsafe(settle, outcome, value)

        threading.Thread(target=job, name="openai-api-job", daemon=True).start()
        return await answer


def openai_router(studio, auth=None) -> APIRouter:
    """The API's routes; with `auth` (Gradio's launch argument) every route asks for those credentials."""
    router = APIRouter()
    threads = JobThreads(MAX_WAITING)

    def route(method: str, path: str):
        def register(answer: Callable[..., Awaitable]):
            async def endpoint(request: Request):
                try:
                    if auth is not None and not authorized(credentials(request), auth):
                        raise ApiError(401, "This studio needs its user and password: HTTP basic auth, or "
                                            "'user:password' as the API key.", code="invalid_api_key")
                    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
                        raise ApiError(413, f"The request is larger than {MAX_BODY_BYTES // 2**20} MB.")
                    return await answer(request)
                except ApiError as error:
                    return error.response()
                except InvalidRequest as error:
                    return ApiError(400, str(error)).response()
                except HTTPException as error:  # Starlette's refusal of a malformed body
                    return ApiError(error.status_code, str(error.detail)).response()
                except Exception as error:  # the server must survive anything a client sends
                    return ApiError(500, error_text(error), kind="server_error").response()

            endpoint.__name__ = answer.__name__
            router.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
            return answer

        return register

    @route("POST", "/v1/images/generations")
    async def generations(request: Request):
        try:
            fields = await request.json()
        except ValueError:
            raise ApiError(400, "The body must be a JSON object (Content-Type: application/json).") from None
        if not isinstance(fields, dict):
            raise ApiError(400, "The body must be a JSON object of the request's fields.")
        return JSONResponse(await threads.run(generate_images, studio, fields, str(request.base_url)))

    @route("POST", "/v1/images/edits")
    async def edits(request: Request):
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ApiError(400, "Send an edit as multipart/form-data: the image (and mask) as files, the rest as "
                                "fields.")
        async with request.form(max_files=8, max_fields=64) as form:
            return JSONResponse(await threads.run(edit_images, studio, form, str(request.base_url)))

    @route("GET", "/v1/models")
    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [model_object(name) for name in api_models(studio)]})

    @route("GET", "/v1/models/{name:path}")
    async def model(request: Request):
        name = request.path_params["name"]
        if name not in api_models(studio):
            raise model_not_found(name)
        return JSONResponse(model_object(name))

    @route("GET", "/v1/files/{day}/{name}")
    async def result_file(request: Request):
        day, name = request.path_params["day"], request.path_params["name"]
        path = studio.folders.outputs / day / name
        if not (DATE_FOLDER.match(day) and RESULT_NAME.match(name) and path.is_file()):
            raise ApiError(404, f"No result {day}/{name} in the studio's outputs.", code="not_found")
        return FileResponse(path, media_type="image/png")

    return router
