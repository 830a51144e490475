"""The front's engine on a Ray cluster: what the page and the APIs call instead of the in-process ModelManager.

`generate` and `batch` run on the replicas (a batch is sent all at once, so Serve spreads it over them, and comes
back in order); everything else (the model list, concept maps, depth previews, training) runs on the front's own
ModelManager. A replica lost mid-job (its process killed, its machine gone) costs one retry on another replica.
Each front deploys its replicas as a Serve application of its own, with a board of its own, so that two studios on one
cluster neither replace nor list each other's replicas.
"""

import uuid
from pathlib import Path
from typing import Callable, Iterator

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError

from mflux_core.cluster.address import check_head, running_cluster_address
from mflux_core.cluster.code_version import code_fingerprint
from mflux_core.cluster.local import LocalCluster
from mflux_core.cluster.replica import NAMESPACE, ReplicaBoard, StudioReplica
from mflux_core.cluster.wire import Started, from_wire
from mflux_core.errors import Cancelled, StudioError
from mflux_core.events import Failed, Finished, Report, Retrying, Step, Stopped
from mflux_core.manager import GenerationResult, ModelManager
from mflux_core.request import GenerationRequest

APP_PREFIX = "mflux-studio"  # a front's application is APP_PREFIX-<its id>
MAC_RESOURCE = "studio_mac"  # `ray start --resources='{"studio_mac": 1}'` on each Mac: one replica per Mac
REPLICA_LOST = (RayActorError, ActorUnavailableError)

CancelCheck = Callable[[], bool] | None


def replica_options() -> dict:
    """One replica per GPU where the cluster has GPUs, one per Mac where Macs carry MAC_RESOURCE, else one CPU."""
    resources = ray.cluster_resources()
    if resources.get("GPU"):
        return {"num_gpus": 1, "num_cpus": 1}
    if resources.get(MAC_RESOURCE):
        return {"num_cpus": 0, "resources": {MAC_RESOURCE: 1}}
    return {"num_cpus": 1}


def default_replicas() -> int:
    resources = ray.cluster_resources()
    return int(resources.get("GPU") or resources.get(MAC_RESOURCE) or len([n for n in ray.nodes() if n["Alive"]]))


class ClusterEngine:
    def __init__(self, local: ModelManager, app: str, handle, board, replicas: int, head: LocalCluster | None = None):
        self.local, self.app, self.handle, self.board, self.head = local, app, handle, board, head
        self.jobs_at_once = replicas  # the studio's queue runs this many jobs at once; Serve spreads them

    def __getattr__(self, name: str):  # models_dir, list_models, session, estimate_depth...: the front's manager
        return getattr(self.local, name)

    def generate(self, request: GenerationRequest, report: Report | None = None,
                 cancelled: CancelCheck = None) -> GenerationResult:
        return self._follow(request, self._start(request), report, cancelled)

    def batch(self, requests: list[GenerationRequest],
              cancelled: CancelCheck = None) -> Iterator[Callable[[Report], GenerationResult]]:
        """One job per request, all sent now to whichever replicas are free (a replica without the model loads it:
        routed by model, every image waited for the one replica that had it); calling the i-th follows request i to
        its result."""
        started = [self._start(request, by_model=len(requests) == 1) for request in requests]
        try:
            for request, responses in zip(requests, started):
                yield lambda report, request=request, responses=responses: self._follow(request, responses, report,
                                                                                         cancelled)
        finally:
            for responses in started:  # the ones not followed, after a stop or a failure (no-op for the others)
                responses.cancel()

    def _start(self, request: GenerationRequest, by_model: bool = True):
        """Send a job: `by_model`, to a replica that has its model loaded if one is free (Serve's model multiplexing),
        else to any free replica."""
        request = self.local.locator.named(request.validated())  # refused here, before any replica sees it
        options = self.handle.options(stream=True, **({"multiplexed_model_id": request.model} if by_model else {}))
        return options.generate.remote(request)

    def _follow(self, request: GenerationRequest, responses, report: Report | None,
                cancelled: CancelCheck) -> GenerationResult:
        report = report or (lambda event: None)
        for attempt in (1, 2):
            taken_by: list[str] = []  # the replica that took the job, once it says so
            try:
                return self._outcome(responses, report, cancelled, taken_by)
            except REPLICA_LOST:
                replica = taken_by[0] if taken_by else "?"
                if attempt == 2:
                    raise StudioError("Two replicas were lost while running this image; check the cluster "
                                      "(`ray status`).") from None
            self.board.drop.remote(replica)
            report(Retrying(f"Replica {replica} was lost during seed {request.seed}; retrying it on another "
                            f"replica."))
            responses = self._start(request)

    def _outcome(self, responses, report: Report, cancelled: CancelCheck, taken_by: list[str]) -> GenerationResult:
        last_step = None
        for wired in responses:
            event = from_wire(wired)
            if isinstance(event, Started):
                taken_by.append(event.replica)
            elif isinstance(event, Finished):
                return event.result
            elif isinstance(event, Stopped):
                raise Cancelled(event.message)
            elif isinstance(event, Failed):
                raise event.error
            else:
                last_step = event if isinstance(event, Step) else last_step
                report(event)
            if cancelled is not None and cancelled():
                responses.cancel()  # reaches the replica's generator, which stops its job after the current step
                raise Cancelled(f"Stopped after step {last_step.step} of {last_step.total}." if last_step
                                else "Stopped before the replica began.")
        raise StudioError("The replica ended the job without a result.")

    def status(self) -> dict:
        replicas = sorted(ray.get(self.board.all.remote(), timeout=10).values(), key=lambda r: r["replica"])
        return {"backend": f"Ray cluster, {len(replicas)} replicas", "replicas": replicas,
                "busy": any(r.get("busy") for r in replicas), "download": None}

    def unload_all(self) -> str:
        """The front's own models now, and every replica's once it is idle (A1111's "Unload SD checkpoint")."""
        ray.get(self.board.request_unload.remote(), timeout=10)
        self.local.unload_all()
        return "Every replica unloads its models once its current job (if any) has finished: the next job loads " \
               "what it needs."

    def close(self) -> None:
        """Take the replicas down (and the local cluster, for `--cluster local`); a shared cluster stays up."""
        serve.delete(self.app)
        ray.shutdown()
        if self.head:
            self.head.stop()


def connect(address: str, replicas: int | None, models_dir: Path, low_ram: bool = False,
            memory_budget_bytes: int | None = None) -> ClusterEngine:
    """Join (or, for "local", start) a Ray cluster and deploy the replicas; `address` "auto" is the cluster this
    machine joined with `ray start`."""
    if address == "local":
        replicas = replicas or 2
    elif address == "auto":
        address = running_cluster_address()
    else:
        check_head(address)  # in seconds, where ray.init would retry for minutes
    head = LocalCluster(cpus=replicas) if address == "local" else None  # one logical CPU per replica
    ray.init(address=head.address if head else address, namespace=NAMESPACE)
    serve.start(proxy_location="Disabled")
    app = f"{APP_PREFIX}-{uuid.uuid4().hex[:8]}"
    board = ReplicaBoard.options(name=f"{app}-board", namespace=NAMESPACE).remote()  # it ends with the front
    replicas = replicas or default_replicas()
    deployment = StudioReplica.options(num_replicas=replicas, ray_actor_options=replica_options())
    models = str(Path(models_dir).resolve())  # the same path on every machine
    handle = serve.run(deployment.bind(f"{app}-board", code_fingerprint(), models, low_ram, memory_budget_bytes),
                       name=app, route_prefix=None)
    return ClusterEngine(ModelManager(models_dir=models_dir, low_ram=low_ram, memory_budget_bytes=memory_budget_bytes),
                         app, handle, board, replicas, head)
