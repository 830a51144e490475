"""The one wrapper every panel's Run button goes through (Forge's idea, without its globals).

It puts the job in the studio's single queue, turns the panel's values into requests, runs each
through the ModelManager on a worker thread while streaming step count, time per step and a
live preview to the page, saves every image with its metadata, and turns every failure into a
readable message in the page: a StudioError's own sentence, or a one-line summary of a bug
(its traceback goes to the server log, never to the page). A refused input (InvalidRequest) also
ends the event as an error, so a gradio_client call raises with the sentence.
"""

import html
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import gradio as gr

from mflux_core.errors import Cancelled, InvalidRequest, StudioError
from mflux_core.request import GenerationRequest
from webui.gallery import save_result

log = logging.getLogger("mflux_studio.webui")

ENGINE_QUEUE = "studio-engine"  # every event that runs a model shares this concurrency id


class JobBoard:
    """The cancel flag of each browser session's running job (one per session: the queue runs one at a time)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, threading.Event] = {}

    def begin(self, session: str) -> threading.Event:
        cancel = threading.Event()
        with self._lock:
            self._running[session] = cancel
        return cancel

    def end(self, session: str, cancel: threading.Event) -> None:
        with self._lock:
            if self._running.get(session) is cancel:
                del self._running[session]

    def cancel(self, session: str) -> bool:
        """Ask the session's running job to stop after its current step; False when none runs."""
        with self._lock:
            cancel = self._running.get(session)
        if cancel is not None:
            cancel.set()
        return cancel is not None


@dataclass
class StepUpdate:
    step: int  # while a model downloads: bytes written
    total: int  # while a model downloads: bytes to write
    preview: object  # PIL image or None
    seconds_per_step: float | None
    download: dict | None = None  # ModelManager.download while a missing model downloads


def run_with_progress(manager, request: GenerationRequest, cancel: threading.Event) -> Iterator:
    """Yield StepUpdates while the manager generates on a worker thread, then the GenerationResult.

    The engine checks `cancel` after every step. If this generator is closed early (the page went
    away), the engine is told to stop too.
    """
    updates: queue.Queue = queue.Queue()

    def on_step(step: int, total: int, preview) -> None:
        download = manager.download
        updates.put(("step", (step, total, preview, time.perf_counter(), download)))

    def work() -> None:
        try:
            updates.put(("done", manager.generate(request, on_step=on_step, cancelled=cancel.is_set)))
        except BaseException as error:  # handed to the page's thread, which reports it
            updates.put(("error", error))

    threading.Thread(target=work, name="studio-generate", daemon=True).start()
    first_step: tuple[int, float] | None = None
    finished = False
    try:
        while True:
            kind, payload = updates.get()
            latest = None
            while kind == "step":
                latest = payload
                try:
                    kind, payload = updates.get_nowait()
                except queue.Empty:
                    kind = None
            if latest is not None:
                step, total, preview, now, download = latest
                if download:
                    yield StepUpdate(step, total, None, None, download)
                else:
                    first_step = first_step or (step, now)
                    rate = (now - first_step[1]) / (step - first_step[0]) if step > first_step[0] else None
                    yield StepUpdate(step, total, preview, rate)
            if kind == "done":
                finished = True
                yield payload
                return
            if kind == "error":
                finished = True
                raise payload
    finally:
        if not finished:
            cancel.set()


def progress_html(text: str, step: int = 0, total: int = 0, kind: str = "info") -> str:
    bar = f'<progress max="{total}" value="{step}"></progress>' if total else ""
    return f'<div class="studio-status studio-{kind}">{bar}<span>{html.escape(text)}</span></div>'


def step_text(update: StepUpdate, index: int, count: int) -> str:
    if update.download:
        return (f"Downloading {update.download['model']}: {update.step / 2**20:,.0f} of "
                f"{update.total / 2**20:,.0f} MB")
    parts = [f"Image {index} of {count}"] if count > 1 else []
    parts.append(f"step {update.step} of {update.total}")
    if update.seconds_per_step is not None:
        parts.append(f"{update.seconds_per_step:.2f} s/step")
        parts.append(f"about {update.seconds_per_step * (update.total - update.step):.0f} s left")
    return " · ".join(parts)


def error_text(error: Exception) -> str:
    """A readable sentence for the page; bugs are logged with their traceback."""
    if isinstance(error, StudioError):
        return str(error)
    log.exception("Unexpected error in a studio job", exc_info=error)
    return f"Something went wrong inside the studio ({type(error).__name__}: {error}). The server log has the details."


@dataclass
class JobView:
    """The components a panel's job writes to."""

    status: gr.HTML
    preview: gr.Image
    results: gr.Gallery


# build(values, context) -> the requests to run, in order
RequestBuilder = Callable[[dict, object], list[GenerationRequest]]


def studio_job(studio, view: JobView):
    """Decorator: a panel's request builder becomes the streaming Gradio handler of its Run button."""

    def decorate(build: RequestBuilder):
        def handler(request: gr.Request, **values):
            yield from run_job(studio, view, build, values, request.session_hash if request else "")

        handler.__name__ = build.__name__
        return handler

    return decorate


def run_job(studio, view: JobView, build: RequestBuilder, values: dict, session: str):
    cancel = studio.jobs.begin(session)
    saved: list[tuple[str, str]] = []
    failure = None
    try:
        yield {view.status: progress_html("Preparing…")}
        requests = build(values, studio.request_context())
        for index, request in enumerate(requests, start=1):
            if request.tool not in studio.available_tools():
                raise StudioError(f"The {request.tool} tool is not available in this version of the studio yet.")
            for update in run_with_progress(studio.manager, request, cancel):
                if isinstance(update, StepUpdate):
                    changes = {view.status: progress_html(step_text(update, index, len(requests)),
                                                          update.step, update.total)}
                    if update.preview is not None:
                        changes[view.preview] = update.preview
                    yield changes
                    continue
                path = save_result(studio.folders.outputs, update)
                saved.append((str(path), f"seed {update.request.seed} · {update.seconds:.1f} s"))
                yield {view.preview: str(path)}
        message, kind = f"Done: {_images(len(saved))} saved to {studio.folders.outputs}.", "done"
    except Cancelled as stopped:
        message, kind = f"{stopped} {_images(len(saved))} saved.", "stopped"
    except Exception as error:  # the server must survive anything a user sends
        failure, message, kind = error, error_text(error), "error"
    finally:
        studio.jobs.end(session, cancel)
    # The results once, at the end: what a gradio_client call gets back, next to the status.
    yield {view.status: progress_html(message, kind=kind), view.results: saved}
    report_failure(failure, message)


def _images(count: int) -> str:
    return f"{count} image{'s' if count != 1 else ''}"


def stop_handler(studio):
    """Stop this session's running job after its current step; the job itself reports how far it got."""

    def stop(request: gr.Request):
        if studio.jobs.cancel(request.session_hash if request else ""):
            gr.Info("Stopping after the current step.")
        else:
            gr.Info("Nothing is running.")

    return stop


def message_markdown(text: str, kind: str = "error") -> str:
    return f"**{'Error' if kind == 'error' else 'Note'}:** {text}"


def report_failure(failure: Exception | None, message: str) -> None:
    """After the page shows `message`: a refused input ends the event as an error (gradio_client raises with the
    sentence, the page shows it); any other failure is a warning beside the status line."""
    if isinstance(failure, InvalidRequest):
        raise gr.Error(message, print_exception=False)
    if failure is not None:
        gr.Warning(message)


def safe_action(message_output, run: Callable, render: Callable[..., str] = progress_html) -> Callable:
    """Wrap a small panel action (estimate depth, preview edges, presets) so errors land in `message_output`."""

    def handler(*args, **kwargs):
        try:
            yield run(*args, **kwargs)
        except Exception as error:
            text = error_text(error)
            yield {message_output: render(text, kind="error")}
            report_failure(error, text)

    handler.__name__ = getattr(run, "__name__", "action")
    return handler
