"""The engine as Ray Serve replicas (`--cluster local --replicas 2`) on the shipped demo models, 64 px, 1-2 steps;
the long jobs a test stops or kills run at 256 px on an any-size copy, so they outlast a short job on a slow machine.

One local Ray cluster with two replicas serves the module (it takes a minute to start on a busy machine). The
README's test command installs the `cluster` extra (Ray Serve) these tests need; nothing here is skipped without it.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from mflux_core.errors import Cancelled
from mflux_core.events import Retrying, Step
from mflux_core.metadata import JSON_KEY
from mflux_core.request import GenerationRequest
from tests.fixtures.any_size_demo import any_size_demo_models  # noqa: F401 (a fixture)
from webui.gallery import save_result

ROOT = Path(__file__).resolve().parent.parent
WAIT = 120  # seconds a test waits for the cluster to report something before failing (not a speed claim)
LONG_SIDE = 256  # a long job's size: ~25 ms a step here, so its 300-500 steps outlast a 2-step job's seconds of overhead


@pytest.fixture(scope="module")
def engine(tmp_path_factory, any_size_demo_models):  # the replicas inherit its demo folder
    from mflux_core.cluster.engine import connect

    engine = connect("local", 2, tmp_path_factory.mktemp("models"))
    yield engine
    engine.close()


def request(seed: int, steps: int = 2, model: str = "demo", side: int = 64) -> GenerationRequest:
    return GenerationRequest(prompt="a lighthouse at dusk", model=model, seed=seed, steps=steps, width=side, height=side)


def long_request(seed: int, steps: int) -> GenerationRequest:
    return request(seed, steps, side=LONG_SIDE)


def saved_metadata(path: Path) -> dict:
    with Image.open(path) as image:
        return json.loads(image.info[JSON_KEY])


def board(engine) -> dict[str, dict]:
    return {replica["replica"]: replica for replica in engine.status()["replicas"]}


def every_replica_running(engine) -> bool:
    from ray import serve

    from mflux_core.cluster.replica import StudioReplica

    return serve.status().applications[engine.app].deployments[StudioReplica.name].replica_states == {
        "RUNNING": engine.jobs_at_once}


def wait_for(check, what: str):
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        assert time.monotonic() < deadline, f"the cluster never {what}"
        time.sleep(0.2)
    return found


def test_without_the_flag_nothing_imports_ray():
    code = "import sys, webui.app; webui.app.parse_args([]); assert 'ray' not in sys.modules, 'ray was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_clients_are_served_in_order_on_both_replicas(engine, tmp_path):
    served: dict[str, list] = {"batch": [], "one by one": []}

    def fan_out():  # one client's batch of seeds, sent all at once
        served["batch"] = [run(None) for run in engine.batch([request(seed) for seed in range(4)])]

    def one_by_one():
        served["one by one"] = [engine.generate(request(seed)) for seed in range(10, 14)]

    clients = [threading.Thread(target=fan_out), threading.Thread(target=one_by_one)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    assert [r.request.seed for r in served["batch"]] == [0, 1, 2, 3]
    assert [r.request.seed for r in served["one by one"]] == [10, 11, 12, 13]
    paths = [save_result(tmp_path, result) for results in served.values() for result in results]
    replicas = {saved_metadata(path)["replica"] for path in paths}
    assert len(paths) == 8 and replicas == set(board(engine)), replicas


def test_a_model_swap_on_one_replica_leaves_the_other_alone(engine):
    engine.generate(request(20))  # both replicas have served "demo" by now (previous test, or this and the next)
    swapped = engine.generate(request(21, model="demo-kontext")).metadata["replica"]
    replicas = board(engine)
    resident = {name: " ".join(entry["name"] for entry in status["resident"]) for name, status in replicas.items()}
    assert "demo-kontext/transformer" in resident[swapped]
    others = [name for name in replicas if name != swapped]
    assert others and all("demo/transformer" in resident[name] for name in others), resident


def test_a_batch_runs_on_every_free_replica_whatever_models_they_hold(engine):
    """Routed by model, every image of a batch waited for the one replica holding it while the other sat idle."""
    [run(None) for run in engine.batch([long_request(seed, 60) for seed in (88, 89)])]  # both hold the demo...
    engine.generate(request(90, model="demo-kontext"))  # ...then one holds another model
    results = [run(None) for run in engine.batch([long_request(seed, 60) for seed in range(91, 95)])]
    assert [r.request.seed for r in results] == [91, 92, 93, 94]
    assert len({r.metadata["replica"] for r in results}) == engine.jobs_at_once


def test_an_a1111_request_for_several_images_runs_on_every_replica(engine, tmp_path):
    """A1111's n_iter (and X/Y/Z cells) ran one image after another, each to the replica holding the model."""
    from webui.a1111_api import ApiJob, SdApiState, run_job as a1111_job
    from webui.studio import Studio, StudioFolders

    studio = Studio(manager=engine, folders=StudioFolders.default(tmp_path / "outputs"))
    requests = [long_request(seed, 60) for seed in range(100, 104)]
    results = a1111_job(studio, SdApiState(), ApiJob("txt2img", len(requests)), requests, False, threading.Event())
    assert [r.request.seed for r in results] == [100, 101, 102, 103]
    assert len({r.metadata["replica"] for r in results}) == engine.jobs_at_once


def long_job(engine, seed: int, steps: int, cancel: threading.Event | None = None):
    """Start a long job on a thread; returns (thread, outcome dict, the first Step seen, the events)."""
    outcome, first_step, events = {}, threading.Event(), []

    def report(event):
        events.append(event)
        if isinstance(event, Step):
            first_step.set()

    def run():
        try:
            outcome["result"] = engine.generate(long_request(seed, steps), report, cancel.is_set if cancel else None)
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    assert first_step.wait(WAIT), "no step came back"
    return thread, outcome, events


def running(engine, seed: int) -> dict | None:
    return next((status for status in board(engine).values() if status.get("running") == seed), None)


def test_stop_reaches_the_replica_and_ends_its_job_within_a_step(engine):
    cancel = threading.Event()
    thread, outcome, events = long_job(engine, 30, 400, cancel)
    replica = wait_for(lambda: running(engine, 30), "said which replica runs the job")["replica"]
    wait_for(lambda: board(engine)[replica].get("busy"), "said the replica is busy")  # its heartbeat, mid-job
    cancel.set()
    thread.join()
    seen = max(event.step for event in events if isinstance(event, Step))
    assert isinstance(outcome.get("error"), Cancelled), outcome
    ended = wait_for(lambda: board(engine)[replica]["last_job"] if not board(engine)[replica]["running"] else None,
                     "reported the stopped job")
    assert ended.startswith("Stopped after step ")
    stopped_at = int(ended.split()[3])
    # The replica runs ahead of the events the front has read; it stops at the first step after the cancel arrives.
    assert seen <= stopped_at < 400, (seen, ended)


def test_a_replica_killed_mid_job_is_retried_on_another_and_every_image_is_saved_once(engine, tmp_path):
    results, outcome = [], {}

    def batch():
        try:
            with_long = [long_request(40, 300), request(41), request(42)]
            for run in engine.batch(with_long):
                results.append(run(lambda event: events.append(event)))
        except Exception as error:
            outcome["error"] = error

    events: list = []
    client = threading.Thread(target=batch)
    client.start()
    victim = wait_for(lambda: running(engine, 40), "started the long job")
    wait_for(lambda: any(isinstance(event, Step) for event in events), "reported a step")
    os.kill(victim["pid"], signal.SIGKILL)
    client.join()
    assert "error" not in outcome, outcome
    assert [r.request.seed for r in results] == [40, 41, 42]
    assert results[0].metadata["replica"] != victim["replica"]
    retries = [event for event in events if isinstance(event, Retrying)]
    assert len(retries) == 1 and victim["replica"] in retries[0].message
    paths = [save_result(tmp_path, result) for result in results]
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(p.name for p in paths)
    assert len(set(paths)) == 3
    # Serve notices the death at a health check (seconds later) and starts a replacement, which joins the board; the
    # tests after this one need both replicas (CI saw a job wait for the replacement while the other ran 500 steps).
    wait_for(lambda: victim["replica"] not in (names := board(engine)) and len(names) == engine.jobs_at_once
             and every_replica_running(engine), "replaced the killed replica")


def test_unloading_reaches_every_replica(engine):
    engine.generate(request(70))
    assert any(status["resident"] for status in board(engine).values())
    assert "Every replica unloads its models" in engine.unload_all()
    wait_for(lambda: not any(status["resident"] for status in board(engine).values()), "unloaded its models")


def test_a_second_studio_on_other_code_leaves_the_first_ones_replicas_alone_and_is_refused_in_a_sentence(
        engine, tmp_path):
    """Each front deploys an application and a board of its own: one joining the cluster (and leaving it) neither
    replaces the first one's replicas nor shows up in its status strip. Its code differs from its replica's here (its
    fingerprint is changed, as after a `git pull` that a restarted replica picked up), so its job gets a sentence,
    not a failure on a pickled field."""
    code = """
import sys
from mflux_core.cluster import engine
from mflux_core.errors import StudioError
from mflux_core.request import GenerationRequest
engine.replica_options = lambda: {"num_cpus": 0}  # the first studio's replicas hold this cluster's logical CPUs
engine.code_fingerprint = lambda: "0" * 12
second = engine.connect(sys.argv[1], 1, sys.argv[2])
try:
    second.generate(GenerationRequest(prompt="a boat", model="demo", steps=1, width=64, height=64))
except StudioError as error:
    print("REFUSED", error)
replicas = second.status()["replicas"]
print("WARNING", replicas[0]["warning"])
print("APP", second.app, len(replicas))
second.close()
"""
    before = set(board(engine))
    second = subprocess.run([sys.executable, "-c", code, engine.head.address, str(tmp_path)], cwd=ROOT, text=True,
                            capture_output=True, timeout=10 * WAIT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert second.returncode == 0, second.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in second.stdout.splitlines() if line.split(" ", 1)[0] in (
        "REFUSED", "WARNING", "APP"))
    assert "runs other code than the studio's front" in lines["REFUSED"], lines
    assert "the front's 000000000000" in lines["REFUSED"] and lines["WARNING"] == lines["REFUSED"]
    app, replicas = lines["APP"].split()
    assert app != engine.app and replicas == "1"
    assert set(board(engine)) == before and every_replica_running(engine)


def test_the_page_shows_a_retry():
    from webui.jobs import image_progress

    view = SimpleNamespace(status="status", preview="preview")
    with pytest.warns(UserWarning, match="was lost"):  # gr.Warning, outside a page event
        update = image_progress(view, 1, 3)(Retrying("Replica ab12 was lost during seed 7; retrying it on another "
                                                      "replica."))
    assert "Replica ab12 was lost during seed 7" in update["status"] and "preview" not in update


def test_a_page_batch_fans_out_and_is_saved_in_order_with_its_replicas(engine, tmp_path):
    from webui.jobs import JobView, run_job
    from webui.studio import Studio, StudioFolders

    studio = Studio(manager=engine, folders=StudioFolders.default(tmp_path / "outputs"))
    view = JobView(status="status", preview="preview", results="results")
    build = lambda values, context: [request(seed) for seed in values["seeds"]]  # noqa: E731
    updates = list(run_job(studio, view, build, {"seeds": [50, 51, 52, 53]}, "session"))
    saved = updates[-1]["results"]
    assert "Done: 4 images saved" in updates[-1]["status"]
    assert [saved_metadata(Path(path))["request"]["seed"] for path, _ in saved] == [50, 51, 52, 53]
    replicas = {saved_metadata(Path(path))["replica"] for path, _ in saved}
    strip = studio.status_text()
    assert replicas and all(f"**Replica {name}**" in strip for name in replicas), strip


def test_two_sessions_run_at_once_on_two_replicas_and_each_stops_on_its_own(engine, tmp_path):
    from webui.jobs import JobView, run_job
    from webui.studio import Studio, StudioFolders
    from webui.turns import EngineTurns

    studio = Studio(manager=engine, folders=StudioFolders.default(tmp_path / "outputs"),
                    turns=EngineTurns(slots=engine.jobs_at_once))
    view = JobView(status="status", preview="preview", results="results")
    timeline, last, queue_states, stepping = [], {}, [], {tab: threading.Event() for tab in ("tab-a", "tab-b")}

    def tab(session: str, job: GenerationRequest):  # one page tab's Run, as Gradio drives it
        build = lambda values, context: [job]  # noqa: E731
        for update in run_job(studio, view, build, {}, session):
            if "step " in update.get("status", "") and not stepping[session].is_set():
                timeline.append((session, "stepping"))
                queue_states.append([(entry.session, entry.state) for entry in studio.turns.entries()])
                stepping[session].set()
            last[session] = update
        timeline.append((session, "ended"))

    long_tab = threading.Thread(target=tab, args=("tab-a", long_request(60, 500)))
    long_tab.start()
    assert stepping["tab-a"].wait(WAIT), "the first tab's job never stepped"
    tab("tab-b", request(61))  # queued behind tab-a's 500 steps, it would end after it
    job = next(entry for entry in studio.turns.entries() if entry.session == "tab-a")
    long_replica = running(engine, 60)["replica"]
    assert studio.turns.cancel(job.id) == f"Stopping job {job.id} after its current step."  # the queue view's Stop
    long_tab.join()
    assert timeline == [("tab-a", "stepping"), ("tab-b", "stepping"), ("tab-b", "ended"), ("tab-a", "ended")]
    assert queue_states[1] == [("tab-a", "running"), ("tab-b", "running")]
    assert "Done: 1 image saved" in last["tab-b"]["status"] and "Stopped after step" in last["tab-a"]["status"]
    (path, _), = last["tab-b"]["results"]
    assert saved_metadata(Path(path))["replica"] != long_replica
    assert studio.turns.entries() == []


@pytest.mark.parametrize("address", ["127.0.0.1:{free_port}", "no-such-studio-head.invalid:6379", "127.0.0.1:99999",
                                     "127.0.0.1:²"])
def test_an_unreachable_address_is_refused_at_once_in_one_sentence(address):
    from mflux_core.cluster.local import free_port
    from webui.app import engine as studio_engine, parse_args

    address = address.format(free_port=free_port())
    host, port = address.rsplit(":", 1)
    with pytest.raises(SystemExit) as refused:  # before ray.init, which would retry for about 14 minutes
        studio_engine(parse_args(["--cluster", address]))
    message = str(refused.value)
    assert message.startswith(f"Could not use the Ray cluster '{address}': ") and message.count(". ") == 0, message
    if port in ("99999", "²"):  # no port (socket refused the first with OverflowError, int() the second)
        assert f"'{address}' is not a Ray address" in message
    elif host == "127.0.0.1":
        assert f"nothing answers at {address}" in message and f"`ray start --head --port={port}`" in message
    else:
        assert f"the name '{host}' in {address} does not resolve" in message


def test_a_web_server_at_the_address_is_refused_at_once_in_one_sentence():
    """The studio's or the dashboard's port given by mistake: ray.init would retry it for minutes."""
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    from webui.app import engine as studio_engine, parse_args

    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(SystemExit) as refused:
            studio_engine(parse_args(["--cluster", address]))
    finally:
        server.shutdown()
    assert str(refused.value) == (f"Could not use the Ray cluster '{address}': a web server answers at {address}, "
                                  "not a Ray head: give the port `ray start --head` printed (its GCS port, 6379 unless "
                                  "you chose another).")
