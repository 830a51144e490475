"""What a studio job tells its caller, as typed events, and the one place a job becomes an iterator of them.

A job (`ModelManager.generate`, the concept maps, LoRA training) hands its progress to a `Report`
function as it runs, on the job's own thread. Its steps come from a generator (generation.run_tool
yields a Step after each denoise step; `result_of` runs one to its end), but downloads are reported
from inside huggingface_hub's callbacks, which cannot yield: hence a function. A caller that wants
an iterator (the page) runs the job through `stream`, which puts it on a worker thread and ends the
events with the job's outcome: `Finished`, `Stopped` or `Failed`.
"""

import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Generator, Iterator, TypeVar

from PIL import Image

from mflux_core.errors import Cancelled


@dataclass(frozen=True)
class Downloading:
    model: str
    done_bytes: int
    total_bytes: int  # of the files started so far: it grows as files start


@dataclass(frozen=True)
class Loading:
    what: str  # e.g. "VAE models/dev/vae"


@dataclass(frozen=True)
class Step:
    step: int  # steps done, from 1
    total: int
    preview: Image.Image | None = None
    seconds_per_step: float | None = None  # measured from the first step on; None at the first
    stage: str = ""  # which pass of a job of several, e.g. "hires fix pass 2 of 2"; empty for one pass


@dataclass(frozen=True)
class TrainingStep:
    step: int
    total: int
    loss: float
    smoothed_loss: float
    seconds_per_step: float | None
    eta_seconds: float | None
    losses: list[float]  # every step's loss so far, across resumes
    validation_image: Path | None = None  # written at this step
    checkpoint: Path | None = None  # written at this step


@dataclass(frozen=True)
class Retrying:
    message: str  # e.g. "Replica 3f2a was lost during image 2; retrying it on another replica."


@dataclass(frozen=True)
class Finished:
    result: object  # the job's return value: a GenerationResult, ConceptResult or TrainingOutcome


@dataclass(frozen=True)
class Stopped:
    message: str  # the Cancelled sentence, e.g. "Stopped after step 3 of 8."


@dataclass(frozen=True)
class Failed:
    error: BaseException  # a StudioError carries a sentence for the user; anything else is a bug


Progress = Downloading | Loading | Step | TrainingStep | Retrying
Outcome = Finished | Stopped | Failed
Event = Progress | Outcome
Report = Callable[[Progress], None]
NEWEST_ONLY = (Downloading, Step)  # a waiting report of these is skipped when a newer one of its kind is queued


Result = TypeVar("Result")


def result_of(job: Generator[Progress, None, Result], report: Report | None = None) -> Result:
    """Run a generator job (such as `generation.run_tool`) to its end, handing what it yields to `report`."""
    while True:
        try:
            event = next(job)
        except StopIteration as end:
            return end.value
        if report is not None:
            report(event)


def passes_report(report: Report | None, offset: int, total: int, stage: str) -> Report | None:
    """`report` with the steps of one part of a job (a hires pass, a tile) counted across the whole job and named
    by their part."""
    if report is None:
        return None

    def relay(event) -> None:
        report(replace(event, step=offset + event.step, total=total, stage=stage) if isinstance(event, Step)
               else event)

    return relay


class StepClock:
    """Makes Step events, with the seconds per step measured from the first step (which carries the warm-up)."""

    def __init__(self):
        self._first: tuple[int, float] | None = None

    def step(self, step: int, total: int, preview: Image.Image | None = None) -> Step:
        now = time.perf_counter()
        first_step, started = self._first = self._first or (step, now)
        return Step(step, total, preview, (now - started) / (step - first_step) if step > first_step else None)


def stream(work: Callable[[Report], object], cancel: threading.Event) -> Iterator[Event]:
    """Run `work(report)` on a worker thread; yield what it reports, then its outcome, always last.

    The job should stop when `cancel` is set; closing this iterator early (the page went away) sets it.
    """
    events: queue.Queue = queue.Queue()

    def run() -> None:
        try:
            events.put(Finished(work(events.put)))
        except Cancelled as stopped:
            events.put(Stopped(str(stopped)))
        except BaseException as error:  # handed to the consumer's thread, which reports it
            events.put(Failed(error))

    threading.Thread(target=run, name="studio-job", daemon=True).start()
    finished, waiting = False, None
    try:
        while not finished:
            event, waiting = waiting or events.get(), None
            while isinstance(event, NEWEST_ONLY) and not events.empty():
                newer = events.get()
                if type(newer) is not type(event):
                    waiting = newer
                    break
                event = newer
            finished = isinstance(event, Outcome)
            yield event
    finally:
        if not finished:
            cancel.set()
