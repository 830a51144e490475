"""The real server (`python -m webui.app` as a subprocess on a free 127.0.0.1 port, tiny models) under
bad input, load, SIGKILL and faults, driven with gradio_client and plain HTTP.

One server is SIGKILLed while it saves (its fsync slowed so the kill lands mid-save); a second one
is started on the same outputs folder and serves every other test here.
"""

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from mflux_core.manager import ModelManager
from tests.fixtures.bad_inputs import IMAGE_CASES, SETTING_CASES, write_images
from tests.test_webui_browser import free_port

ROOT = Path(__file__).resolve().parent.parent
FAST = dict(model="tiny-schnell", steps="1", width=32, height=32, init_image=None, image_strength=0.4,
            seed=1, random_seed=False, batch_count=1, prompt="a boat")
START_TIMEOUT_S = 120

# The real entry point; SLOW_SAVE_S (test only) stretches each fsync so a SIGKILL can land mid-save.
LAUNCHER = """
import os, sys, time
import mflux_core
if os.environ.get("SLOW_SAVE_S"):
    real_fsync = os.fsync
    def slow_fsync(fd):
        time.sleep(float(os.environ["SLOW_SAVE_S"]))
        real_fsync(fd)
    os.fsync = slow_fsync
from webui.app import main
sys.exit(main(sys.argv[1:]))
"""


def start_server(models: Path, outputs: Path, log: Path, *extra: str, env: dict | None = None):
    port = free_port()
    command = [sys.executable, "-c", LAUNCHER, "--port", str(port), "--models-dir", str(models),
               "--outputs-dir", str(outputs), "--lora-dir", str(models / "loras"), *extra]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
                   "PYTHONPATH": str(ROOT), **(env or {})}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return SimpleNamespace(process=process, url=url, port=port)
        except httpx.HTTPError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError("the server did not start:\n" + log.read_text()[-3000:])


def stop_server(server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def client_for(server):
    from gradio_client import Client

    return Client(server.url, analytics_enabled=False, verbose=False)


def result_files(outputs: Path) -> list[Path]:
    return sorted(p for p in outputs.glob("????-??-??/*") if p.is_file())


def linked_models(folder: Path, models: dict[str, Path]) -> Path:
    """A models folder, with an empty LoRA library in loras/, whose entries link to the given model folders."""
    (folder / "loras").mkdir(parents=True)
    for name, model in models.items():
        (folder / name).symlink_to(model)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_schnell, tiny_fill):
    root = tmp_path_factory.mktemp("reliability")
    models = linked_models(root / "models", {"tiny-schnell": tiny_schnell, "tiny-fill": tiny_fill})
    return SimpleNamespace(path=root, models=models, outputs=root / "outputs", images=write_images(root / "images"))


@pytest.fixture(scope="module")
def killed(root):
    """A server SIGKILLed while saving its third image; what was on disk then."""
    server = start_server(root.models, root.outputs, root.path / "killed.log", env={"SLOW_SAVE_S": "0.6"})
    try:
        client = client_for(server)
        for seed in (1, 2):
            status, preview, images = client.predict(**{**FAST, "seed": seed}, api_name="/generate")
            assert "Done: 1 image" in status, status
            # the preview is the last image, as the README's example reads it
            assert np.array_equal(np.asarray(Image.open(preview)), np.asarray(Image.open(images[-1]["image"])))
        intact = {p: p.read_bytes() for p in result_files(root.outputs)}
        client.submit(**{**FAST, "seed": 3}, api_name="/generate")
        deadline = time.monotonic() + 60
        while not list(root.outputs.glob("????-??-??/.*.tmp")):
            assert time.monotonic() < deadline, "no save started"
            time.sleep(0.02)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        temp_files = list(root.outputs.glob("????-??-??/.*.tmp"))
    finally:
        stop_server(server)
    return SimpleNamespace(intact=intact, temp_files=temp_files)


@pytest.fixture(scope="module")
def server(root, killed):
    server = start_server(root.models, root.outputs, root.path / "server.log", "--max-queue", "32")
    yield server
    stop_server(server)


def test_sigkill_during_a_save_loses_nothing_and_shows_no_partial_file(root, killed, server):
    assert len(killed.intact) == 2 and killed.temp_files, "the kill must land during the third save"
    for path, data in killed.intact.items():
        assert path.read_bytes() == data
        Image.open(path).verify()
    assert not any(p.suffix == ".png" and p.name.startswith(".") for p in result_files(root.outputs))
    history, _ = client_for(server).predict(api_name="/history")  # the gallery as rebuilt on restart
    shown = [item["caption"] for item in history]
    assert len(shown) == len(killed.intact) and all("seed 1" in c or "seed 2" in c for c in shown), shown


def test_the_server_binds_only_this_machine(server):
    listening = {c.laddr.ip for c in psutil.Process(server.process.pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port}
    assert listening == {"127.0.0.1"}


def test_a_foreign_web_page_or_host_name_cannot_use_the_studio(root, server):
    """A page from another origin may send a browser's 'simple' POST (text/plain, a form) with no preflight: it would
    run jobs, change options and upload files; a DNS-rebinding page (another name for 127.0.0.1) could read too."""
    own = server.url.rstrip("/")
    body = '{"prompt": "a boat", "steps": 1, "width": 32, "height": 32}'
    foreign = {"Origin": "http://evil.test:8000", "Content-Type": "text/plain"}
    before = set(result_files(root.outputs))
    for path in ("sdapi/v1/txt2img", "sdapi/v1/options", "sdapi/v1/unload-checkpoint", "v1/images/generations"):
        refused = httpx.post(server.url + path, content=body, headers=foreign, timeout=30)
        assert refused.status_code == 403 and "A web page from http://evil.test:8000 may not use" in \
            refused.json()["detail"], (path, refused.text)
    upload = httpx.post(server.url + "gradio_api/upload", files={"files": ("a.png", b"x")},
                        headers={"Origin": "null"})
    assert upload.status_code == 403
    rebound = httpx.get(server.url + "sdapi/v1/options", headers={"Host": f"rebind.evil.test:{server.port}"})
    assert rebound.status_code == 403 and "served to this machine only" in rebound.json()["detail"]
    assert set(result_files(root.outputs)) == before
    for headers in ({}, {"Origin": own}, {"Origin": f"http://localhost:{server.port}",
                                          "Host": f"localhost:{server.port}"}):
        assert httpx.post(server.url + "sdapi/v1/options", json={"samples_format": "png"},
                          headers=headers).status_code == 200, headers
    assert httpx.get(server.url, headers={"Host": f"[::1]:{server.port}"}).status_code == 200


GENERIC_GRADIO_ERROR = "has not enabled verbose error reporting"


def page_reply(client, values: dict, api_name: str = "/generate") -> tuple[str, bool]:
    """(the job's status line, False) or (the event's error: a refusal, ours or Gradio's, True)."""
    from gradio_client.exceptions import AppError

    try:
        reply = client.predict(**values, api_name=api_name)
        return (reply[0] if isinstance(reply, (list, tuple)) else reply), False
    except AppError as error:
        return str(error), True


def check_reply(name: str, reply: tuple[str, bool], expected: str | None) -> None:
    text, refused_by_gradio = reply
    assert text and "Traceback" not in text and GENERIC_GRADIO_ERROR not in text, (name, text)
    if expected is None:
        assert not refused_by_gradio and "Done: 1 image" in text, (name, text)
    elif not refused_by_gradio:  # Gradio's own refusals ("Value 100000 is greater than maximum value 4096.") differ
        assert expected in text, (name, text)


def test_bad_inputs_through_gradio_client(root, server):
    from gradio_client import handle_file

    client = client_for(server)
    before = result_files(root.outputs)
    tried = 0
    for name, changes, expected in SETTING_CASES:
        expected = None if name == "width zero" else expected  # in the page, 0 means "the default size"
        check_reply(name, page_reply(client, {**FAST, **changes}), expected)
        tried += 1
    for name, expected in IMAGE_CASES.items():
        values = {**FAST, "init_image": handle_file(str(root.images[name])), "width": 0, "height": 0}
        check_reply(name, page_reply(client, values), expected)
        tried += 1
    assert tried == len(SETTING_CASES) + len(IMAGE_CASES)
    after = result_files(root.outputs)
    assert set(before) <= set(after) and not [p for p in set(after) - set(before) if p.suffix != ".png"]
    assert "Backend" in client.predict(api_name="/status")  # still serving


def test_thirty_queued_requests_from_several_clients_all_finish_and_memory_returns(root, server):
    clients = [client_for(server) for _ in range(3)]
    process = psutil.Process(server.process.pid)
    status, *_ = clients[0].predict(**{**FAST, "seed": 100}, api_name="/generate")  # warm: models resident
    assert "Done" in status
    baseline = process.memory_info().rss
    jobs: dict[int, list] = {}

    def submit(index, client):
        jobs[index] = [client.submit(**{**FAST, "seed": 1000 * (index + 1) + n}, api_name="/generate")
                       for n in range(10)]

    threads = [threading.Thread(target=submit, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = baseline
    finished = {}
    for index, client_jobs in jobs.items():
        for job in client_jobs:
            status, _, results, *_ = job.result(timeout=120)
            assert "Done: 1 image" in status, status
            path = Path(results[0]["image"] if isinstance(results[0]["image"], str) else results[0]["image"]["path"])
            finished[job] = path.name
            peak = max(peak, process.memory_info().rss)
    assert len(finished) == 30
    # one at a time through the shared engine queue: 30 distinct files, each client's all there
    assert len(set(finished.values())) == 30
    for index in jobs:
        seeds = {f"-{1000 * (index + 1) + n}.png" for n in range(10)}
        assert sum(name[name.rindex("-"):] in seeds for name in finished.values()) == 10
    after = process.memory_info().rss
    print(f"\nserver RSS: baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB, "
          f"after 30 requests {after / 2**20:.0f} MiB")
    assert after < baseline * 1.25 + 64 * 2**20


def test_the_queue_has_a_maximum_and_refuses_politely(root):
    server = start_server(root.models, root.outputs, root.path / "small-queue.log", "--max-queue", "2")
    try:
        client = client_for(server)
        jobs = [client.submit(**{**FAST, "seed": 5000 + n}, api_name="/generate") for n in range(10)]
        done = refused = 0
        for job in jobs:
            try:
                status, *_ = job.result(timeout=120)
                done += "Done" in status
            except Exception as error:
                assert "queue is full" in str(error).lower(), error
                refused += 1
        assert refused > 0 and done > 0 and done + refused == 10, (done, refused)
        assert "Done" in client.predict(**FAST, api_name="/generate")[0]
    finally:
        stop_server(server)


# ----- security --------------------------------------------------------------------------------


def test_files_outside_the_allowed_folders_are_never_served(root, server):
    secret = root.path / "secret.txt"
    secret.write_text("root:secret")
    day = next(root.outputs.glob("????-??-??"))
    (day / "link.png").symlink_to(secret)
    try:
        for outside in ("/etc/passwd", secret, f"{day}/../../secret.txt", f"{day}/link.png",
                        root.models / "tiny-schnell" / "model_index.json", "%2e%2e/%2e%2e/etc/passwd"):
            response = httpx.get(f"{server.url}gradio_api/file={outside}")
            assert response.status_code in (403, 404) and b"root:" not in response.content, outside
        history, _ = client_for(server).predict(api_name="/history")  # the link left out, the results shown
        assert history and not any("link" in str(item) for item in history), history
    finally:
        (day / "link.png").unlink()


def test_no_endpoint_takes_a_server_path_it_was_not_given(root, server):
    """Path-like strings: the training files and the model picker. Uploads are covered by the browser test."""
    client = client_for(server)
    secret = root.path / "secret.json"
    secret.write_text('{"root": "x"}')
    tried = 0
    for path in ("/etc/passwd", "../../etc/passwd", str(secret)):
        for values in ({"config_path": path, "checkpoint_path": ""}, {"config_path": "", "checkpoint_path": path}):
            status, refused = page_reply(client, values, "/train")
            assert refused and "inside the studio" in status and "root" not in status.replace("root:", ""), status
            tried += 1
        text, _ = page_reply(client, {**FAST, "model": path})
        assert "Done" not in text, text
        tried += 1
    assert tried == 9
    # a model named as text (a prompt-list line, a plot axis, A1111's prompt-list script): the studio's models only
    elsewhere = root.path / "elsewhere-schnell"
    elsewhere.symlink_to(root.models / "tiny-schnell", target_is_directory=True)
    before = set(result_files(root.outputs))
    for model in (str(elsewhere), "someone/any-flux-repo", "/" + "a" * 5000):
        status, _ = page_reply(client, {**FAST, "prompt_lines": f'--prompt "a boat" --model {model}'})
        assert "is not one of the studio's" in status and "Done" not in status, status
        status, _ = page_reply(client, {"prompt": "a boat", "model": "tiny-schnell", "steps": "1", "width": 32,
                                        "height": 32, "x_kind": "model", "x_values": f"tiny-schnell, {model}"},
                               "/plot")
        assert "is not one of the studio's" in status and "Done" not in status, status
        answer = httpx.post(f"{server.url}sdapi/v1/txt2img", timeout=120, json={
            "prompt": "a boat", "steps": 1, "width": 32, "height": 32, "script_name": "prompts from file or textbox",
            "script_args": [False, False, "start", f'--prompt "a boat" --model "{model}"']})
        assert answer.status_code == 400 and "is not one of the studio's" in answer.json()["detail"], answer.text
    assert set(result_files(root.outputs)) == before
    status, _ = page_reply(client, {**FAST, "prompt_lines": '--prompt "a boat" --model tiny-schnell'})
    assert "Done: 1 image" in status, status


def test_listen_and_auth_flags(monkeypatch, tmp_path):
    import gradio as gr

    from webui import app

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    base = ["--models-dir", str(tmp_path / "models"), "--outputs-dir", str(tmp_path / "outputs")]
    app.main(base)
    app.main([*base, "--listen", "--auth", "me:secret"])
    app.main([*base, "--host", "0.0.0.0", "--auth", "me:secret"])  # the password held only with --listen
    app.main([*base, "--auth", "me:secret"])
    assert launched[0]["server_name"] == "127.0.0.1" and launched[0]["auth"] is None
    assert launched[1]["server_name"] == "0.0.0.0" and launched[1]["auth"] == ("me", "secret")
    assert [(call["server_name"], call["auth"]) for call in launched[2:]] == [("0.0.0.0", ("me", "secret")),
                                                                              ("127.0.0.1", ("me", "secret"))]
    with pytest.raises(SystemExit):
        app.parse_args(["--listen", "--host", "192.168.1.5"])
    allowed = launched[0]["allowed_paths"]
    assert str((tmp_path / "outputs").resolve()) in allowed and "/" not in allowed
    with pytest.raises(SystemExit):
        app.parse_args(["--auth", "nocolon"])


# ----- faults ----------------------------------------------------------------------------------


def test_model_files_disappearing_mid_session_is_a_clear_error_and_the_next_request_works(root, server):
    client = client_for(server)
    link, hidden = root.models / "tiny-schnell", root.models / ".tiny-schnell-away"
    assert "Done" in client.predict(**FAST, api_name="/generate")[0]
    target = link.resolve()
    link.rename(hidden)
    try:
        status, failed = page_reply(client, {**FAST, "seed": 77})
        assert failed and "tiny-schnell" in status and "Traceback" not in status, status
    finally:
        hidden.rename(link)
    assert link.resolve() == target
    assert "Done" in client.predict(**{**FAST, "seed": 78}, api_name="/generate")[0]


def test_a_full_disk_in_the_web_job_is_a_clear_error_and_the_next_job_works(tiny_schnell, tmp_path, monkeypatch):
    import gradio as gr

    from mflux_core.images import io as image_io
    from webui.jobs import run_job
    from webui.panels import generate
    from webui.studio import Studio, StudioFolders

    studio = Studio(manager=ModelManager(models_dir=tiny_schnell.parent),
                    folders=StudioFolders.default(tmp_path / "outputs", loras=[]))
    studio.outputs = SimpleNamespace(history="history", history_paths="paths", status_strip="strip")
    view = SimpleNamespace(status="status", preview="preview", results="results", tool="generate", compared=None)
    values = {**{k: v for k, v in FAST.items()}, "model": tiny_schnell.name, "quantize": "off", "guidance": "",
              **{f"lora_{i}": "" for i in (1, 2, 3)}, **{f"lora_scale_{i}": 1.0 for i in (1, 2, 3)}}

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    updates = []
    with monkeypatch.context() as patch, pytest.raises(gr.Error, match="No space left on device"):
        patch.setattr(image_io.os, "fsync", disk_full)
        updates.extend(run_job(studio, view, generate.build_requests, values, "s"))  # the job ends as an error
    assert "No space left on device" in updates[-1]["status"] and updates[-1]["results"] == []
    assert not [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    last = list(run_job(studio, view, generate.build_requests, values, "s"))[-1]
    assert "Done: 1 image" in last["status"] and len(last["results"]) == 1
