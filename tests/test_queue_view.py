"""The queue view over real HTTP: while a job holds the engine, A1111 API jobs and a page job wait in the engine's
queue with their places, the page lists them (this tab or another, or the API), and cancelling one from the
page's queue view refuses its call with a clear error while the others still run.

The server is tests/test_a1111_api.py's (the demo models, the page and /sdapi/v1 on one port).
"""

import threading
import time

from gradio_client import Client

from mflux_core.demo.family import IMAGE_SIZE
from tests.test_a1111_api import CAPTION, TIMEOUT_S, assert_a1111_error, made, studio  # noqa: F401 (fixture)
from webui.panels.queue import queue_rows, queue_title
from webui.turns import WITHDRAWN


def wait_for_entries(turns, count: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(turns.entries()) < count:
        assert time.monotonic() < deadline and thread.is_alive(), "the job took no place in the queue"
        time.sleep(0.02)


def test_waiting_jobs_show_their_places_and_a_cancelled_one_gets_a_clear_error(studio):  # noqa: F811
    turns, answers, threads = studio.studio.turns, {}, {}
    client = {"verbose": False, "analytics_enabled": False, "download_files": False,
              "httpx_kwargs": {"timeout": TIMEOUT_S}}
    page = Client(str(studio.http.base_url).split("/sdapi")[0] + "/", **client)

    def post(seed):
        answers[seed] = studio.http.post("/txt2img", json={"prompt": f"{CAPTION} {seed}", "seed": seed, "steps": 2,
                                                           "width": IMAGE_SIZE, "height": IMAGE_SIZE})

    with turns.turn(tool="generate", prompt="held", source="page", session="tab-a"):
        for count, seed in enumerate((21, 22), start=2):
            threads[seed] = threading.Thread(target=post, args=(seed,))
            threads[seed].start()
            wait_for_entries(turns, count, threads[seed])
        page_job = page.submit(prompt="a page job", seed=23, steps=2, width=IMAGE_SIZE, height=IMAGE_SIZE,
                               random_seed=False, api_name="/generate")
        wait_for_entries(turns, 4, threads[22])
        entries = turns.entries()
        rows = queue_rows(entries, "tab-a")
        assert [row[1] for row in rows] == ["running", "waiting, 1st", "waiting, 2nd", "waiting, 3rd"]
        assert [row[5] for row in rows] == ["this tab", "A1111 API", "A1111 API", "another tab"]
        assert rows[1][2:5] == ["generate", f"{CAPTION} 21", f"{IMAGE_SIZE}x{IMAGE_SIZE}"]
        assert rows[3][2:5] == ["generate", "a page job", f"{IMAGE_SIZE}x{IMAGE_SIZE}"]
        assert queue_rows(entries, entries[3].session)[3][5] == "this tab"
        assert queue_title(entries) == "Queue: 1 running, 3 waiting"
        assert answers == {}

        # the page's own progress line says where it waits
        deadline = time.monotonic() + TIMEOUT_S
        while not any("Waiting: 3rd in the queue" in str(output) for output in page_job.outputs()):
            assert time.monotonic() < deadline, page_job.outputs()
            time.sleep(0.05)

        message = page.predict(rows[1][0], api_name="/queue_cancel")
        assert message == f"Job {rows[1][0]} cancelled: it left the queue."
        threads[21].join(TIMEOUT_S)
        assert assert_a1111_error(answers[21], 409) == WITHDRAWN
        assert [row[1] for row in queue_rows(turns.entries(), "tab-a")] == ["running", "waiting, 1st", "waiting, 2nd"]

        # another tab's Stop withdraws its own waiting job, and only that
        other = Client(page.src, **client)
        withdrawn = other.submit(prompt="withdrawn", seed=24, steps=2, width=IMAGE_SIZE, height=IMAGE_SIZE,
                                 random_seed=False, api_name="/generate")
        wait_for_entries(turns, 4, threads[22])
        other.predict(api_name="/stop")
        assert withdrawn.result(timeout=TIMEOUT_S)[0].count(WITHDRAWN) == 1
        assert [row[3] for row in queue_rows(turns.entries(), "")] == ["held", f"{CAPTION} 22", "a page job"]
    threads[22].join(TIMEOUT_S)
    assert made(answers[22])["info"]["all_seeds"] == [22]
    status, _, results = page_job.result(timeout=TIMEOUT_S)
    assert "Done: 1 image saved" in status and len(results) == 1
    assert turns.entries() == [] and queue_title([]) == "Queue: empty"
