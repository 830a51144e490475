"""The event stream of a job: what a generation reports, in order, and how stream() ends it."""

import threading

import numpy as np
from PIL import Image

from mflux_core.errors import ModelLoadError
from mflux_core.events import Failed, Finished, Loading, Step, Stopped, result_of, stream
from mflux_core.manager import ModelManager
from mflux_core.request import GenerationRequest

SIZE = 32


def fox(model, steps: int = 3) -> GenerationRequest:
    return GenerationRequest(model=str(model), prompt="a fox", steps=steps, width=SIZE, height=SIZE)


def test_a_generation_reports_its_loads_then_each_step_in_order_with_a_preview(tiny_schnell):
    manager = ModelManager(models_dir=tiny_schnell.parent)
    events = []
    result = manager.generate(fox(tiny_schnell), events.append)
    assert [type(event) for event in events] == [Loading] * 3 + [Step] * 3
    loads = [event.what for event in events[:3]]
    assert [what.split(" ")[0] for what in loads] == ["transformer", "VAE", "text"]
    steps = events[3:]
    assert [(step.step, step.total) for step in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(step.preview.size == result.image.size == (SIZE, SIZE) for step in steps)
    assert steps[0].seconds_per_step is None and all(step.seconds_per_step > 0 for step in steps[1:])

    again = []
    manager.generate(fox(tiny_schnell), again.append)
    assert [type(event) for event in again] == [Step] * 3  # everything was resident


def test_the_stream_ends_with_the_result_and_equals_a_plain_generate(tiny_schnell):
    manager = ModelManager(models_dir=tiny_schnell.parent)
    events = list(stream(lambda report: manager.generate(fox(tiny_schnell), report), threading.Event()))
    assert all(isinstance(event, (Loading, Step)) for event in events[:-1])
    assert isinstance(events[-1], Finished) and events[-1].result.request.seed == fox(tiny_schnell).seed
    plain = manager.generate(fox(tiny_schnell))
    assert np.array_equal(np.asarray(events[-1].result.image), np.asarray(plain.image))


def test_a_stop_ends_the_stream_after_the_current_step_and_the_next_job_runs(tiny_schnell):
    manager = ModelManager(models_dir=tiny_schnell.parent)
    cancel = threading.Event()

    def work(report):
        def stop_at_step_2(event):
            report(event)
            if isinstance(event, Step) and event.step == 2:
                cancel.set()

        return manager.generate(fox(tiny_schnell, steps=6), stop_at_step_2, cancel.is_set)

    events = list(stream(work, cancel))
    assert events[-1] == Stopped("Stopped after step 3 of 6.")
    # step 3 ran, then the stop was seen before its report
    assert [event.step for event in events if isinstance(event, Step)][-1] == 2
    assert not manager.status()["busy"]

    stopped_early = threading.Event()
    stopped_early.set()
    events = list(stream(lambda report: manager.generate(fox(tiny_schnell), report, stopped_early.is_set),
                         stopped_early))
    assert events == [Stopped("Stopped before the model was loaded.")]


def test_closing_the_stream_early_stops_the_job(tiny_schnell):
    manager = ModelManager(models_dir=tiny_schnell.parent)
    cancel = threading.Event()
    events = stream(lambda report: manager.generate(fox(tiny_schnell, steps=50), report, cancel.is_set), cancel)
    assert next(event for event in events if isinstance(event, Step)).step >= 1
    events.close()  # the page went away
    assert cancel.is_set()
    assert manager.generate(fox(tiny_schnell, steps=1)).image.size == (SIZE, SIZE)  # waits for the stopped job


def test_a_missing_model_while_offline_fails_with_the_sentence(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    manager = ModelManager(models_dir=tmp_path)
    events = list(stream(lambda report: manager.generate(fox("acme/not-here"), report), threading.Event()))
    assert len(events) == 1 and isinstance(events[0], Failed) and isinstance(events[0].error, ModelLoadError)
    assert "acme/not-here" in str(events[0].error) and "hf download" in str(events[0].error)


def test_a_waiting_step_is_skipped_for_a_newer_one_but_nothing_else_is():
    go, reported = threading.Event(), threading.Event()

    def work(report):
        report(Loading("first"))
        go.wait()
        for event in (Step(1, 3), Step(2, 3), Loading("second"), Step(3, 3)):
            report(event)
        reported.set()
        return "done"

    events = stream(work, threading.Event())
    assert next(events) == Loading("first")
    go.set()
    reported.wait()
    assert list(events) == [Step(2, 3), Loading("second"), Step(3, 3), Finished("done")]


def test_result_of_hands_each_event_on_and_returns_the_generators_value():
    def job():
        yield Step(1, 2)
        yield Step(2, 2)
        return "image"

    seen = []
    assert result_of(job(), seen.append) == "image" and seen == [Step(1, 2), Step(2, 2)]
    assert result_of(job()) == "image"


def test_the_cli_saves_each_steps_preview_from_the_reported_steps(tiny_schnell, tmp_path):
    from tests.parity import run_cli

    final = run_cli("generate", "--path", tiny_schnell, "--prompt", "a fox", "--steps", 2, "--width", SIZE, "--height",
                    SIZE, "--seed", 5, "--output", tmp_path / "fox.png", "--stepwise-image-output-dir",
                    tmp_path / "steps")
    saved = sorted(path.name for path in (tmp_path / "steps").iterdir())
    assert saved == ["seed_5_step_1of2.png", "seed_5_step_2of2.png"]
    with Image.open(tmp_path / "steps" / saved[-1]) as last:  # a full decode every step: the last is the image
        assert np.array_equal(np.asarray(last.convert("RGB")), np.asarray(final))
