"""One Serve replica: its own ModelManager, one job at a time, routed by model (Serve's model multiplexing).

A job streams its events back (`generate` is an async generator, so Serve streams it); closing the stream in the
front (Stop, or the page went away) cancels the generator here, which sets the job's cancel flag: the manager stops
after its current step. Each replica posts its status (resident models, memory, busy, the job it runs, the last
one) to its front's board actor every HEARTBEAT_S and at each job's start and end; the front's status strip lists
the replicas heard from lately, so a dead or replaced one drops off. The board also carries the front's requests to
unload every model, which each replica carries out once it is idle.
"""

import asyncio
import logging
import os
import socket
import threading
import time
from pathlib import Path

import ray
from ray import serve

from mflux_core.cluster.code_version import code_fingerprint
from mflux_core.cluster.wire import Started, to_wire
from mflux_core.errors import StudioError
from mflux_core.events import Failed, Finished, Outcome, Stopped, stream
from mflux_core.request import GenerationRequest

log = logging.getLogger("mflux_studio.cluster")

NAMESPACE = "mflux-studio"
HEARTBEAT_S = 2.0  # how often a replica posts its status
SILENT_AFTER_S = 5 * HEARTBEAT_S  # a replica not heard from for this long is gone (killed, replaced, its machine lost)


@ray.remote(num_cpus=0)
class ReplicaBoard:
    """What each replica last said about itself, keyed by replica id, and the count of unload requests."""

    def __init__(self):
        self._replicas: dict[str, tuple[float, dict]] = {}
        self._unloads = 0

    def put(self, replica: str, status: dict) -> int:
        """Record a replica's status; returns the unload requests so far, for the replica to catch up with."""
        self._replicas[replica] = (time.monotonic(), status)
        return self._unloads

    def drop(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def all(self) -> dict[str, dict]:
        """The replicas heard from within SILENT_AFTER_S."""
        now = time.monotonic()
        return {name: status for name, (seen, status) in self._replicas.items() if now - seen < SILENT_AFTER_S}

    def request_unload(self) -> None:
        self._unloads += 1


def outcome_text(outcome: Outcome) -> str:
    if isinstance(outcome, Finished):
        return f"finished seed {outcome.result.request.seed}"
    if isinstance(outcome, Stopped):
        return outcome.message
    return f"failed: {outcome.error}"


# One job at a time per replica, as in-process; the front's requests queue in Serve until a replica is free.
@serve.deployment(max_ongoing_requests=1)
class StudioReplica:
    def __init__(self, board: str, front_code: str, models_dir: str, low_ram: bool = False,
                 memory_budget_bytes: int | None = None):
        from mflux_core.manager import ModelManager  # after Ray set up the worker (and mflux_core its BLAS)

        self.manager = ModelManager(models_dir=Path(models_dir), low_ram=low_ram,
                                    memory_budget_bytes=memory_budget_bytes)
        self.name = serve.get_replica_context().replica_id.unique_id
        self.board = ray.get_actor(board, namespace=NAMESPACE)
        self.other_code = None if front_code == code_fingerprint() else (
            f"Replica {self.name} runs other code than the studio's front (version {code_fingerprint()}, the front's "
            f"{front_code}): restart the studio once every machine has the same checkout.")
        self.running: int | None = None  # the seed of the job in progress
        self.last_job: str | None = None
        self.unloads = ray.get(self.post())  # unload requests from before this replica started are not its own
        threading.Thread(target=self.heartbeat, name="studio-replica-heartbeat", daemon=True).start()

    def heartbeat(self) -> None:
        """Post the status every HEARTBEAT_S; unload every model when the front has asked since the last time (once
        no job runs: the request waits for it)."""
        while True:
            time.sleep(HEARTBEAT_S)
            try:
                unloads = ray.get(self.post())
            except ray.exceptions.RayError:  # the front and its board are gone; Serve takes this replica down
                return
            if unloads > self.unloads and self.running is None:
                try:
                    self.manager.unload_all()
                    self.unloads = unloads
                except StudioError:  # a job started meanwhile: the next beat tries again
                    continue

    def post(self) -> ray.ObjectRef:
        """Tell the board how this replica is; ray.get() the answer to wait until it knows."""
        return self.board.put.remote(self.name, {**self.manager.status(), "replica": self.name, "pid": os.getpid(),
                                                 "host": socket.gethostname(), "running": self.running,
                                                 "last_job": self.last_job, "warning": self.other_code})

    @serve.multiplexed(max_num_models_per_replica=1)
    async def resident_model(self, model: str) -> str:
        """Serve keeps the models named here per replica and routes a model's requests to replicas that hold it;
        the manager itself loads the weights (or swaps them) when the job runs."""
        return model

    def finished(self, outcome: Outcome) -> None:
        if isinstance(outcome, Failed) and not isinstance(outcome.error, StudioError):
            log.error("Unexpected error in a studio job", exc_info=outcome.error)
        self.running, self.last_job = None, outcome_text(outcome)
        ray.get(self.post())  # before the front hears the outcome, so its next look at the board sees it

    async def generate(self, request: GenerationRequest):
        if self.other_code:
            yield Started(self.name)
            yield to_wire(Failed(StudioError(self.other_code)), self.name)
            return
        await self.resident_model(request.model)  # however the job was routed here, its model is now this replica's
        loop, events, cancel = asyncio.get_running_loop(), asyncio.Queue(), threading.Event()

        def run() -> None:  # on a thread of its own, so that it still records how the job ended after a cancel
            for event in stream(lambda report: self.manager.generate(request, report, cancel.is_set), cancel):
                if isinstance(event, Outcome):
                    self.finished(event)
                loop.call_soon_threadsafe(events.put_nowait, event)

        self.running = request.seed
        await self.post()
        threading.Thread(target=run, name="studio-replica-job", daemon=True).start()
        yield Started(self.name)
        try:
            while not isinstance(event := await events.get(), Outcome):
                yield to_wire(event, self.name)
            yield to_wire(event, self.name)
        finally:
            cancel.set()  # a closed stream lands here as GeneratorExit or CancelledError
