"""The one wrapper every panel's Run button goes through (Forge's idea, without its globals).

It puts the job in the studio's single queue, turns the panel's values into requests, runs each
through the ModelManager on a worker thread (events.stream) while streaming step count, time per
step and a live preview to the page, saves every image with its metadata, and turns every failure
into a readable message in the page: a StudioError's own sentence, or a one-line summary of a bug
(its traceback goes to the server log, never to the page). A failure also ends the event as an
error, so a gradio_client call raises with the sentence. The concept and
training panels run their own jobs through the same `page_job` and `follow`.
"""

import html
import logging
import threading
from contextlib import closing
from dataclasses import dataclass
from typing import Callable, Generator

import gradio as gr

from mflux_core.errors import Cancelled, StudioError
from mflux_core.events import Downloading, Failed, Finished, Loading, Progress, Report, Retrying, Step, Stopped, stream
from mflux_core.request import GenerationRequest
from webui.compare import before_and_after
from webui.gallery import save_result
from webui.turns import WITHDRAWN, QueueFull, job_about, ordinal

log = logging.getLogger("mflux_studio.webui")

ENGINE_QUEUE = "studio-engine"  # every event that runs a model shares this concurrency id


class JobBoard:
    """The cancel flags of each browser session's running jobs (on a cluster, one tab's jobs from two of its
    panels can run at once)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, list[threading.Event]] = {}

    def begin(self, session: str, cancel: threading.Event | None = None) -> threading.Event:
        cancel = cancel or threading.Event()
        with self._lock:
            self._running.setdefault(session, []).append(cancel)
        return cancel

    def end(self, session: str, cancel: threading.Event) -> None:
        with self._lock:
            running = self._running.get(session, [])
            if cancel in running:
                running.remove(cancel)
            if not running:
                self._running.pop(session, None)

    def cancel(self, session: str) -> bool:
        """Ask the session's running jobs to stop after their current step; False when none runs."""
        with self._lock:
            running = list(self._running.get(session, []))
        for cancel in running:
            cancel.set()
        return bool(running)


# changes(progress) -> the page's components and their new values ({}: nothing to show)
PageChanges = Callable[[Progress], dict]


def follow(work: Callable[[Report], object], cancel: threading.Event, changes: PageChanges) -> Generator:
    """Run an engine job on a worker thread and yield `changes` of each progress event; returns its result.

    A stop or a failure is raised here, on the page's thread, so that `page_job` reports it like the
    page's own errors.
    """
    with closing(stream(work, cancel)) as events:
        for event in events:
            if isinstance(event, Finished):
                return event.result
            if isinstance(event, Stopped):
                raise Cancelled(event.message)
            if isinstance(event, Failed):
                raise event.error
            update = changes(event)
            if update:
                yield update


def progress_html(text: str, step: int = 0, total: int = 0, kind: str = "info") -> str:
    bar = f'<progress max="{total}" value="{step}"></progress>' if total else ""
    return f'<div class="studio-status studio-{kind}">{bar}<span>{html.escape(text)}</span></div>'


def event_text(event: Downloading | Step, index: int, count: int) -> str:
    """The status line of image `index` of `count` while it downloads or steps."""
    if isinstance(event, Downloading):
        return f"Downloading {event.model}: {event.done_bytes / 2**20:,.0f} of {event.total_bytes / 2**20:,.0f} MB"
    parts = [f"Image {index} of {count}"] if count > 1 else []
    parts.append(f"step {event.step} of {event.total}")
    if event.stage:
        parts.append(event.stage)
    if event.seconds_per_step is not None:
        parts.append(f"{event.seconds_per_step:.2f} s/step")
        parts.append(f"about {event.seconds_per_step * (event.total - event.step):.0f} s left")
    return " · ".join(parts)


def image_progress(view, index: int, count: int) -> PageChanges:
    """Changes for an image job's progress: the status line with its bar (bytes while downloading), and the
    step's preview. While models load the status keeps saying "Preparing…"."""

    def changes(event: Downloading | Loading | Retrying | Step) -> dict:
        if isinstance(event, Loading):
            return {}
        if isinstance(event, Retrying):  # a cluster replica was lost: say so beside the status line too
            gr.Warning(event.message)
            return {view.status: progress_html(event.message, kind="error")}
        if isinstance(event, Downloading):
            return {view.status: progress_html(event_text(event, index, count), event.done_bytes, event.total_bytes)}
        update = {view.status: progress_html(event_text(event, index, count), event.step, event.total)}
        if event.preview is not None:
            update[view.preview] = event.preview
        return update

    return changes


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
    compare: gr.ImageSlider | None = None  # before / after of the last result (webui.compare), on some panels
    compared: gr.State | None = None  # that pair, handed from the job to the slider
    tool: str = ""  # what the queue calls its jobs


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
    saved: list[tuple[str, str]] = []
    compared = None  # the last result's (before, after) paths, for a panel's slider
    notes: list[str] = []  # each said once, however many images it concerns

    def work(cancel: threading.Event):
        nonlocal compared
        requests = build(values, studio.request_context())
        for request in requests:
            if request.tool not in studio.available_tools():
                raise StudioError(f"The {request.tool} tool is not available in this version of the studio yet.")
        with closing(studio.batch(requests, cancel.is_set)) as runs:
            for index, run in enumerate(runs, start=1):
                result = yield from follow(run, cancel, image_progress(view, index, len(requests)))
                path = save_result(studio.folders.outputs, result)
                saved.append((str(path), f"{seed_caption(result.request)} · {result.seconds:.1f} s"))
                compared = before_and_after(result, path, studio.folders.inputs)
                notes.extend(note for note in result.notes if note not in notes)
                yield {view.preview: str(path)}
        return " ".join([f"Done: {_images(len(saved))} saved to {studio.folders.outputs}.", *notes])

    # The results once, at the end: what a gradio_client call gets back, next to the status, with the preview as the
    # last image (the API's "preview"). A run that saved nothing (refused, failed, stopped before its first image)
    # clears the last run's preview, which would look like its result (its before / after: Studio.wire_run).
    def final() -> dict:
        return {view.results: saved, view.preview: saved[-1][0] if saved else None,
                **({view.compared: compared} if view.compared else {})}

    yield from page_job(studio, session, view.status, work, final=final,
                        stopped=lambda stop: f"{stop} {_images(len(saved))} saved.",
                        about=job_about(view.tool, values.get("prompt"), values.get("width"), values.get("height")))


def seed_caption(request: GenerationRequest) -> str:
    """"seed 30", or with a variation "seed 30 · var 12 @ 0.3" (A1111's variation seed and strength)."""
    if not request.variation_strength:
        return f"seed {request.seed}"
    return f"seed {request.seed} · var {request.variation_seed} @ {request.variation_strength:g}"


def _images(count: int) -> str:
    return f"{count} image{'s' if count != 1 else ''}"


def scoped(session: str, scope: str | None) -> str:
    """The key a job is stopped by: a tab with a job of its own (a training) keeps it from the other tabs' Stop."""
    return f"{session}:{scope}" if scope else session


def stop_handler(studio, scope: str | None = None):
    """Stop this session's running jobs (of `scope`) after their current step (each job reports how far it got), or
    else withdraw its waiting ones from the engine's queue."""

    def stop(request: gr.Request):
        session = scoped(request.session_hash if request else "", scope)
        if studio.jobs.cancel(session):
            gr.Info("Stopping after the current step.")
        elif studio.turns.withdraw_waiting(session):
            gr.Info(WITHDRAWN)
        else:
            gr.Info("Nothing is running.")

    return stop


def message_markdown(text: str, kind: str = "error") -> str:
    return f"**{'Error' if kind == 'error' else 'Note'}:** {text}"


def report_failure(failure: Exception | None, message: str) -> None:
    """After the page shows `message`: a failure (a refused input, a model that cannot load, ...) ends the event as an
    error: gradio_client raises with the sentence, the page shows it in an "Error" toast."""
    if failure is not None:
        raise gr.Error(message, print_exception=False)


# work(cancel) yields changes for the page and returns the closing status line
PageWork = Callable[[threading.Event], Generator[dict, None, str]]


def page_job(studio, session: str, status: gr.HTML, work: PageWork, *, preparing: str = "Preparing…",
             stopped: Callable[[Cancelled], str] = str, final: Callable[[], dict] = dict,
             about: dict | None = None, scope: str | None = None):
    """Run a panel's work as this session's job (Stop sets its cancel flag; with a `scope`, only the Stop wired with
    it) when its turn in the engine's queue comes (its place shows while it waits; `about`: what the queue shows of
    it, webui.turns.job_about) and end it with one status line: the work's own, the stop's sentence, or the
    failure's. `final()` adds the job's results to that last update."""
    session = scoped(session, scope)
    try:
        entry = studio.turns.join(**(about or {}), source="page", session=session)
    except QueueFull as full:
        raise gr.Error(str(full), print_exception=False) from None
    cancel = entry.cancel
    failure = None
    try:
        for place in studio.turns.places(entry):
            yield {status: progress_html(f"Waiting: {ordinal(place)} in the queue")}
        studio.jobs.begin(session, cancel)  # the tab's Stop button stops it from now on
        yield {status: progress_html(preparing)}
        message, kind = (yield from work(cancel)), "done"
    except Cancelled as stop:
        message, kind = stopped(stop), "stopped"
    except Exception as error:  # the server must survive anything a user sends
        failure, message, kind = error, error_text(error), "error"
    finally:
        studio.turns.leave(entry)
        studio.jobs.end(session, cancel)
    yield {status: progress_html(message, kind=kind), **final()}
    report_failure(failure, message)


def safe_action(message_output, run: Callable, render: Callable[..., str] = progress_html,
                clears: tuple = ()) -> Callable:
    """Wrap a small panel action (estimate depth, preview edges, presets) so errors land in `message_output`;
    `clears`: outputs emptied on an error (a preview of the input before, which no longer matches)."""

    def handler(*args, **kwargs):
        try:
            yield run(*args, **kwargs)
        except Exception as error:
            text = error_text(error)
            yield {message_output: render(text, kind="error"), **dict.fromkeys(clears)}
            report_failure(error, text)

    handler.__name__ = getattr(run, "__name__", "action")
    return handler
