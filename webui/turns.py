"""The engine's one queue: every job of the page and of the APIs takes its turn here, in arrival order.

Gradio's queue orders only the page's events and ModelManager's lock wakes its waiters in no set order, so a
job joins this queue when it reaches the engine and runs when a running slot is free: one in-process (the
ModelManager runs one job at a time), one per replica on a cluster (Serve's router spreads the running jobs).
Each job is listed while it waits or runs (what the page's queue view shows): a waiting job can be withdrawn, a
running one asked to stop.
"""

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Generator

from mflux_core.errors import Cancelled, StudioError

WITHDRAWN = "Cancelled while waiting in the queue."
PROMPT_CHARS = 60  # how much of a prompt the queue shows
STOP_POLL_S = 0.25  # how often a waiting job looks at its stop flag


@dataclass
class QueueEntry:
    id: int
    tool: str = ""
    prompt: str = ""  # its start
    size: str = ""  # "WxH"
    source: str = "page"  # "page", "OpenAI API", "A1111 API"
    session: str = ""  # a page job's Gradio session hash: which tab submitted it
    submitted: float = field(default_factory=time.time)
    state: str = "waiting"  # "running" once it has a slot
    cancel: threading.Event = field(default_factory=threading.Event)  # the job's stop flag (API jobs: client left too)
    withdrawn: bool = False


def job_about(tool: str, prompt: str | None, width, height) -> dict:
    """What the queue shows of a job: its tool, its prompt's start and its size."""
    prompt = " ".join((prompt or "").split())
    short = prompt if len(prompt) <= PROMPT_CHARS else prompt[:PROMPT_CHARS - 1] + "…"
    return {"tool": tool, "prompt": short, "size": f"{width}x{height}" if width and height else ""}


def request_about(requests: list) -> dict:
    """What the queue shows of an API job: its first GenerationRequest's tool, prompt and size."""
    first = requests[0] if requests else None
    return job_about(first.tool, first.prompt, first.width, first.height) if first else {}


def ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


class QueueFull(StudioError):
    """The queue already holds as many waiting jobs as the studio allows (--max-queue)."""


class EngineTurns:
    """The jobs at the engine, the first `slots` of them running; `turn()` is a job's whole stay. With
    `max_waiting`, a job that would be one waiting job too many is refused (QueueFull) instead of joining."""

    def __init__(self, max_waiting: int | None = None, slots: int = 1):
        self.max_waiting, self.slots = max_waiting, slots
        self._changed = threading.Condition()
        self._next_ticket = 0
        self._entries: list[QueueEntry] = []

    def join(self, **about) -> QueueEntry:
        """Put a job at the end of the queue; `about`: QueueEntry's descriptive fields (and `cancel`)."""
        with self._changed:
            waiting = len(self._waiting())
            if self.max_waiting is not None and len(self._entries) >= self.slots and waiting >= self.max_waiting:
                raise QueueFull(f"The queue is full ({waiting} jobs waiting): try again when one has finished.")
            entry = QueueEntry(id=self._next_ticket + 1, **about)
            self._next_ticket += 1
            self._entries.append(entry)
            self._promote()
        return entry

    def places(self, entry: QueueEntry) -> Generator[int, None, None]:
        """The entry's place among the waiting jobs (1: next) each time it changes; returns when its turn comes
        (the entry is then running) and raises Cancelled when it was withdrawn, or stopped while it waited (an API
        client that went away: its place is free at once, not at its turn)."""
        place = None
        while True:
            with self._changed:
                while not (entry.withdrawn or entry.cancel.is_set() or self._place(entry) != place):
                    self._changed.wait(STOP_POLL_S)  # whoever sets `cancel` (an API's thread) does not notify
                if entry.withdrawn:
                    raise Cancelled(WITHDRAWN)
                place = self._place(entry)
                if place == 0:
                    return
                if entry.cancel.is_set():
                    self._withdraw([entry])
                    raise Cancelled(WITHDRAWN)
            yield place

    def _place(self, entry: QueueEntry) -> int:
        """0 while it runs, else its place among the waiting jobs."""
        return max(0, self._entries.index(entry) - self.slots + 1)

    def _waiting(self) -> list[QueueEntry]:
        return self._entries[self.slots:]

    def leave(self, entry: QueueEntry) -> None:
        with self._changed:
            if entry in self._entries:
                self._entries.remove(entry)
                self._promote()

    @contextmanager
    def turn(self, **about):
        """Wait for this job's turn, run the block in its slot, and leave the queue."""
        entry = self.join(**about)
        try:
            for _ in self.places(entry):
                pass
            if entry.cancel.is_set():  # stopped while it waited (an API client that went away)
                raise Cancelled(WITHDRAWN)
            yield entry
        finally:
            self.leave(entry)

    def entries(self) -> list[QueueEntry]:
        """A snapshot of the queue, the running jobs first."""
        with self._changed:
            return [replace(entry) for entry in self._entries]

    def withdraw_waiting(self, session: str) -> int:
        """Withdraw the waiting jobs a tab submitted (its Stop button when nothing of it runs); how many."""
        with self._changed:
            waiting = [e for e in self._waiting() if session and e.session == session]
            self._withdraw(waiting)
            return len(waiting)

    def _withdraw(self, entries: list[QueueEntry]) -> None:
        for entry in entries:
            entry.withdrawn = True
            self._entries.remove(entry)
        self._promote()

    def _promote(self) -> None:
        """After a change: the first jobs, one per slot, are the running ones; wake every waiter to look at its
        place."""
        for entry in self._entries[:self.slots]:
            entry.state = "running"
        self._changed.notify_all()

    def cancel(self, job_id: int) -> str:
        """Withdraw a waiting job (its caller gets WITHDRAWN) or ask a running one to stop; one sentence says
        which."""
        with self._changed:
            entry = next((e for e in self._entries if e.id == job_id), None)
            if entry is None:
                return f"Job {job_id} is not in the queue (it may have finished)."
            if entry.state == "running":
                entry.cancel.set()
                return f"Stopping job {job_id} after its current step."
            self._withdraw([entry])
            return f"Job {job_id} cancelled: it left the queue."
