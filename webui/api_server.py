"""What the studio's HTTP APIs (webui.openai_api, webui.a1111_api) share: the page's basic-auth credentials,
a body-size limit, one thread per job, and a route decorator that turns every failure into the API's own
error shape, so no input can end the server or answer with a traceback."""

import asyncio
import base64
import binascii
import json
import re
import secrets
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, model_validator
from starlette.exceptions import HTTPException

from mflux_core.downloads import is_offline
from mflux_core.errors import Cancelled, InvalidRequest, ModelLoadError
from mflux_core.registry import ModelEntry
from webui.jobs import error_text
from webui.turns import QueueFull

MAX_BODY_BYTES = 64 * 2**20  # the page's upload limit too
MAX_WAITING = 16  # API requests running or waiting for their turn at once; more are refused (429)
DISCONNECT_POLL_S = 0.25  # how often a job's request looks whether its client is still there
UNAUTHORIZED = "This studio needs its user and password: HTTP basic auth, or 'user:password' as the API key."


@dataclass
class ApiRefusal(Exception):
    """An answer other than success: an HTTP status and one sentence. Each API words the body its own way."""

    status: int
    message: str

    @classmethod
    def of(cls, status: int, message: str, setting: str | None = None) -> "ApiRefusal":
        """The API's refusal for a status the shared code decides (401, 413, 429, a malformed body, 500, a refused
        request); `setting`: the request field a refusal is about (InvalidRequest.setting), for an API that names it."""
        return cls(status, message)

    def body(self) -> dict:
        raise NotImplementedError

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Basic realm="mflux-studio"'} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class ApiFields(BaseModel):
    """A request body's fields: a field sent as null takes its default, as A1111's API (every field Optional) and
    OpenAI's (nullable parameters) accept it from clients that send every field they know; a required one sent as
    null is missing. Fields we do not use are accepted and ignored; NaN and infinities are refused."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _nulls_left_out(cls, fields):
        return {key: value for key, value in fields.items() if value is not None} if isinstance(fields, dict) \
            else fields


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


def offered(entry: ModelEntry) -> bool:
    """Whether an API's model list offers the model: one a request can run on now, on disk, or an alias while
    downloads are on (clients pick from the list; with downloads off an alias would be refused)."""
    return entry.available or not is_offline()


def studio_models(studio, only_offered: bool = False) -> list[ModelEntry]:
    """The studio's models; `only_offered`: those an API's model list offers (`offered`)."""
    return [entry for entry in studio.manager.list_models() if not only_offered or offered(entry)]


class JobThreads:
    """API jobs on a thread each, as the page's jobs run: waiting for their turn on the pool Gradio runs those on,
    a crowd of API requests could leave the running page job without a thread to finish on."""

    def __init__(self, limit: int, refusal: type[ApiRefusal]):
        self.limit, self.refusal = limit, refusal
        self._slots = threading.BoundedSemaphore(limit)

    async def run(self, work: Callable, *args):
        """`work(*args)`'s result (or error), once it ran on its thread; a 429 refusal when `limit` already wait."""
        if not self._slots.acquire(blocking=False):
            raise self.refusal.of(429, f"The studio has {self.limit} API requests waiting already: try again later.")
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

        threading.Thread(target=job, name="api-job", daemon=True).start()
        return await answer

    async def run_for(self, request: Request, work: Callable, *args):
        """As `run`, for `work(gone, *args)`: `gone` (a threading.Event, to stop the job with) is set when the client
        disconnects before its answer, as a client that timed out and retries does; A1111 and ComfyUI would make
        every image nobody will read."""
        gone = threading.Event()
        answer = asyncio.ensure_future(self.run(work, gone, *args))
        while not gone.is_set():
            done, _ = await asyncio.wait({answer}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if await request.is_disconnected():
                gone.set()
        return await answer

    def stream(self, work: Callable, *args) -> AsyncIterator:
        """What `work(emit, gone, *args)` hands to `emit` while it runs on its thread, as it comes; its error is
        raised after what it emitted. `gone` (a threading.Event) is set when the client stops reading. The thread
        starts now (a 429 refusal when `limit` already wait), so a refusal comes before any answer has begun."""
        if not self._slots.acquire(blocking=False):
            raise self.refusal.of(429, f"The studio has {self.limit} API requests waiting already: try again later.")
        loop, items, gone, finished = asyncio.get_running_loop(), asyncio.Queue(), threading.Event(), object()

        def job():
            last = finished
            try:
                work(lambda item: loop.call_soon_threadsafe(items.put_nowait, item), gone, *args)
            except BaseException as error:  # raised to the reader after the items before it
                last = error
            self._slots.release()
            loop.call_soon_threadsafe(items.put_nowait, last)

        async def emitted():
            try:
                while (item := await items.get()) is not finished:
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                gone.set()  # a client that went away stops the job after its current step

        threading.Thread(target=job, name="api-stream", daemon=True).start()
        return emitted()


class NotJsonNumber(str):
    """NaN or an infinity in a body, as written: Python's json reads them (and its clients write them), JSON has no
    such numbers. Read as this marker, so that the refusal can name the field that holds one."""


def non_finite_field(fields) -> tuple[str, str] | None:
    """(where, as written) of the first NaN or infinity in a parsed body: "seed", or "alwayson_scripts.x[0].y"."""
    pending = [("", fields)]
    while pending:  # a walk of its own: the body may nest as deep as json reads, past Python's recursion limit
        where, value = pending.pop()
        if isinstance(value, NotJsonNumber):
            return where, str(value)
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        pending.extend(reversed([(f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}".lstrip("."), item)
                                 for key, item in items]))
    return None


async def json_object(request: Request, refusal: type[ApiRefusal]) -> dict:
    """The request's JSON body, which must be an object of finite numbers; a 400 refusal otherwise."""
    try:
        fields = json.loads(await request.body(), parse_constant=NotJsonNumber)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise refusal.of(400, "The body must be a JSON object (Content-Type: application/json).") from None
    except ValueError:  # Python reads no integer of more than 4,300 digits
        raise refusal.of(400, "The body holds a number too long to read: no setting takes one that size.") from None
    except RecursionError:
        raise refusal.of(400, "The body nests its lists or objects too deeply to read: no setting takes that.") \
            from None
    if not isinstance(fields, dict):
        raise refusal.of(400, "The body must be a JSON object of the request's fields.")
    found = non_finite_field(fields)
    if found:
        where, written = found
        raise refusal.of(400, f"{where} must be a finite number, not {written}.", re.split(r"[.\[]", where)[0])
    return fields


def refusal_of(error: Exception, refusal: type[ApiRefusal]) -> ApiRefusal:
    """The API's answer to a failure: refused input and bugs alike get a status and one sentence."""
    if isinstance(error, ApiRefusal):
        return error
    if isinstance(error, QueueFull):
        return refusal.of(429, str(error))
    if isinstance(error, InvalidRequest):
        return refusal.of(400, str(error), error.setting)
    if isinstance(error, ModelLoadError):  # a model not on disk: the client's to change, not a bug
        return refusal.of(400, str(error), "model")
    if isinstance(error, Cancelled):  # withdrawn from the engine's queue, or stopped there
        return refusal.of(409, str(error))
    if isinstance(error, HTTPException):  # Starlette's refusal of a malformed body
        return refusal.of(error.status_code, str(error.detail))
    return refusal.of(500, error_text(error))


def without_tracebacks(error: BaseException) -> None:
    """Drop the tracebacks of an answered error and of the errors it came from: their frames, and the future that
    carried the error to the request, form reference cycles that would keep what the request read (a refused
    60-megapixel image) until the next garbage collection, past the memory budget in a few refusals."""
    waiting, seen = [error], set()
    while waiting:
        error = waiting.pop()
        if error is not None and id(error) not in seen:
            seen.add(id(error))
            error.__traceback__ = None
            waiting += [error.__cause__, error.__context__]


def body_capped(request: Request, refusal: type[ApiRefusal]) -> Request:
    """The request, its body refused with 413 once past MAX_BODY_BYTES as it is read: a chunked body states no
    length beforehand."""
    read = 0

    async def receive():
        nonlocal read
        message = await request.receive()
        read += len(message.get("body", b""))
        if read > MAX_BODY_BYTES:
            raise too_large(refusal)
        return message

    return Request(request.scope, receive)


def too_large(refusal: type[ApiRefusal]) -> ApiRefusal:
    return refusal.of(413, f"The request is larger than {MAX_BODY_BYTES // 2**20} MB.")


def api_routes(router: APIRouter, auth, refusal: type[ApiRefusal]):
    """A decorator factory, route(method, path), that adds an endpoint to `router`: with `auth` (Gradio's launch
    argument) it asks for those credentials; bodies past MAX_BODY_BYTES, refused input and bugs alike get a
    `refusal` answer."""

    def route(method: str, path: str):
        def register(answer: Callable[..., Awaitable]):
            async def endpoint(request: Request):
                try:
                    if auth is not None and not authorized(credentials(request), auth):
                        raise refusal.of(401, UNAUTHORIZED)
                    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
                        raise too_large(refusal)
                    return await answer(body_capped(request, refusal))
                except Exception as error:  # the server must survive anything a client sends
                    answered = refusal_of(error, refusal).response()
                    without_tracebacks(error)
                return answered

            endpoint.__name__ = answer.__name__
            router.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
            return answer

        return register

    return route
