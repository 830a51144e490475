"""The engine's queue (webui.turns): order, places, withdrawing a waiting job, stopping the running one."""

import threading

import pytest

from mflux_core.errors import Cancelled
from webui.turns import WITHDRAWN, EngineTurns, QueueFull, job_about, ordinal

TIMEOUT_S = 30


def waiter(turns: EngineTurns, name: str, ran: list, outcome: dict, **about):
    """A thread that joins the queue now and records when its turn came (or how it was refused)."""
    entry = turns.join(source=name, **about)

    def run():
        try:
            for _ in turns.places(entry):
                pass
            ran.append(name)
        except Cancelled as stop:
            outcome[name] = str(stop)
        finally:
            turns.leave(entry)

    thread = threading.Thread(target=run)
    thread.start()
    return entry, thread


def test_jobs_run_in_arrival_order_and_leave_the_queue_when_done():
    turns, ran, outcome = EngineTurns(), [], {}
    with turns.turn(tool="generate", source="first") as first:
        assert first.state == "running" and [e.id for e in turns.entries()] == [first.id]
        threads = [waiter(turns, name, ran, outcome)[1] for name in ("a", "b", "c")]
        listed = turns.entries()
        assert [e.source for e in listed] == ["first", "a", "b", "c"]
        assert [e.state for e in listed] == ["running", "waiting", "waiting", "waiting"]
        assert ran == []
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert ran == ["a", "b", "c"] and turns.entries() == [] and outcome == {}


def test_a_waiting_job_sees_its_place_move_up():
    turns = EngineTurns()
    first, second, third = turns.join(), turns.join(), turns.join()
    places = turns.places(third)
    assert next(places) == 2
    turns.leave(first)
    assert next(places) == 1
    turns.leave(second)
    with pytest.raises(StopIteration):
        next(places)
    assert [e.state for e in turns.entries()] == ["running"]


def test_cancelling_a_waiting_job_refuses_it_and_the_others_still_run():
    turns, ran, outcome = EngineTurns(), [], {}
    with turns.turn(source="held"):
        kept, kept_thread = waiter(turns, "kept", ran, outcome)
        dropped, dropped_thread = waiter(turns, "dropped", ran, outcome)
        last, last_thread = waiter(turns, "last", ran, outcome)
        assert turns.cancel(dropped.id) == f"Job {dropped.id} cancelled: it left the queue."
        dropped_thread.join(TIMEOUT_S)
        assert outcome == {"dropped": WITHDRAWN}
        assert [e.source for e in turns.entries()] == ["held", "kept", "last"]
    for thread in (kept_thread, last_thread):
        thread.join(TIMEOUT_S)
    assert ran == ["kept", "last"] and turns.entries() == []
    assert "not in the queue" in turns.cancel(dropped.id)


def test_a_waiting_job_whose_stop_flag_is_set_leaves_the_queue_before_its_turn():
    """An API job whose client went away sets its entry's stop flag from another thread: the job frees its place
    while the running job still runs (the queue may be full of jobs nobody waits for)."""
    turns, ran, outcome = EngineTurns(max_waiting=1), [], {}
    with turns.turn(source="held"):
        gone, gone_thread = waiter(turns, "gone", ran, outcome)
        gone.cancel.set()  # no notify: as JobThreads.run_for sets it
        gone_thread.join(TIMEOUT_S)
        assert outcome == {"gone": WITHDRAWN} and [e.source for e in turns.entries()] == ["held"]
        after, after_thread = waiter(turns, "after", ran, outcome)  # its place is free for another job
    after_thread.join(TIMEOUT_S)
    assert ran == ["after"]


def test_a_tabs_stop_withdraws_only_its_own_waiting_jobs():
    turns, ran, outcome = EngineTurns(), [], {}
    with turns.turn(session="tab-a"):
        mine, mine_thread = waiter(turns, "mine", ran, outcome, session="tab-a")
        theirs, theirs_thread = waiter(turns, "theirs", ran, outcome, session="tab-b")
        assert turns.withdraw_waiting("tab-a") == 1 and turns.withdraw_waiting("") == 0
        mine_thread.join(TIMEOUT_S)
        assert outcome == {"mine": WITHDRAWN} and [e.session for e in turns.entries()] == ["tab-a", "tab-b"]
    theirs_thread.join(TIMEOUT_S)
    assert ran == ["theirs"]


def test_cancelling_the_running_job_sets_its_stop_flag():
    turns = EngineTurns()
    with turns.turn() as running:
        assert not running.cancel.is_set()
        assert turns.cancel(running.id) == f"Stopping job {running.id} after its current step."
        assert running.cancel.is_set() and turns.entries()[0].id == running.id  # it leaves when it stops


def test_many_threads_each_get_one_turn_and_never_overlap():
    turns, inside, seen, lock = EngineTurns(), [], [], threading.Lock()

    def job(number):
        with turns.turn(tool=str(number)):
            with lock:
                inside.append(number)
                seen.append(len(inside))
            with lock:
                inside.remove(number)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert len(seen) == 40 and set(seen) == {1} and turns.entries() == []
    assert turns._next_ticket == 40


def test_what_the_queue_shows_of_a_job():
    about = job_about("generate", "  a   red\nfox " + "x" * 100, 512, 768)
    assert about["tool"] == "generate" and about["size"] == "512x768"
    assert about["prompt"].startswith("a red fox x") and len(about["prompt"]) == 60 and about["prompt"][-1] == "…"
    assert job_about("train", None, None, None) == {"tool": "train", "prompt": "", "size": ""}
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st"]


def test_a_job_past_the_most_waiting_is_refused_and_the_queue_is_unchanged():
    turns, ran, outcome = EngineTurns(max_waiting=2), [], {}
    with turns.turn(source="running"):
        threads = [waiter(turns, name, ran, outcome)[1] for name in ("a", "b")]
        with pytest.raises(QueueFull, match=r"The queue is full \(2 jobs waiting\)"):
            turns.join(source="c")
        assert [e.source for e in turns.entries()] == ["running", "a", "b"]
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert ran == ["a", "b"]
    with turns.turn(source="later") as later:  # room again once they ran
        assert later.state == "running"


def test_with_two_slots_two_jobs_run_at_once_and_the_third_waits_first_in_line():
    turns = EngineTurns(slots=2)
    first, second, third, fourth = (turns.join(source=name) for name in ("first", "second", "third", "fourth"))
    assert [e.state for e in turns.entries()] == ["running", "running", "waiting", "waiting"]
    with pytest.raises(StopIteration):  # the second job's turn has come: it does not wait
        next(turns.places(second))
    third_places, fourth_places = turns.places(third), turns.places(fourth)
    assert next(third_places) == 1 and next(fourth_places) == 2
    turns.leave(first)  # a running job ends: the first waiting one takes its slot, the next moves up
    with pytest.raises(StopIteration):
        next(third_places)
    assert next(fourth_places) == 1
    assert [(e.source, e.state) for e in turns.entries()] == [("second", "running"), ("third", "running"),
                                                              ("fourth", "waiting")]


def test_with_two_slots_the_most_waiting_counts_only_waiting_jobs_and_stop_reaches_each_running_one():
    turns, ran, outcome = EngineTurns(max_waiting=1, slots=2), [], {}
    mine, theirs = turns.join(session="tab-a"), turns.join(session="tab-b")
    waiting, waiting_thread = waiter(turns, "waiting", ran, outcome, session="tab-a")
    with pytest.raises(QueueFull, match=r"The queue is full \(1 jobs waiting\)"):
        turns.join()
    assert turns.withdraw_waiting("tab-b") == 0  # tab-b's job runs: withdrawing leaves it alone
    assert turns.cancel(theirs.id) == f"Stopping job {theirs.id} after its current step."
    assert theirs.cancel.is_set() and not mine.cancel.is_set()
    assert turns.withdraw_waiting("tab-a") == 1  # only tab-a's waiting job, not its running one
    waiting_thread.join(TIMEOUT_S)
    assert outcome == {"waiting": WITHDRAWN} and [e.id for e in turns.entries()] == [mine.id, theirs.id]


def test_with_two_slots_many_threads_never_run_more_than_two_at_once():
    turns, inside, seen, lock = EngineTurns(slots=2), [], [], threading.Lock()
    both_in, release = threading.Barrier(3, timeout=TIMEOUT_S), threading.Event()  # the two jobs and this test

    def job(number):
        with turns.turn(tool=str(number)):
            with lock:
                inside.append(number)
                seen.append(len(inside))
            if number < 2:  # the first two wait for each other: they must be in at once
                both_in.wait()
                release.wait(TIMEOUT_S)
            with lock:
                inside.remove(number)

    threads = [threading.Thread(target=job, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    both_in.wait()  # raises BrokenBarrierError if the second never got a slot beside the first
    threads += [threading.Thread(target=job, args=(n,)) for n in range(2, 30)]
    for thread in threads[2:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(TIMEOUT_S)
    assert len(seen) == 30 and max(seen) == 2 and turns.entries() == []


def test_the_queue_view_lists_every_running_job_and_numbers_only_the_waiting_ones():
    from webui.panels.queue import queue_rows, queue_title

    turns = EngineTurns(slots=2)
    for source in ("a", "b", "c", "d"):
        turns.join(source=source)
    entries = turns.entries()
    assert [row[1] for row in queue_rows(entries, "")] == ["running", "running", "waiting, 1st", "waiting, 2nd"]
    assert queue_title(entries) == "Queue: 2 running, 2 waiting"


def test_a_tabs_stop_reaches_each_of_its_running_jobs_and_no_other_tabs():
    from webui.jobs import JobBoard

    board = JobBoard()
    first, second, other = board.begin("tab-a"), board.begin("tab-a"), board.begin("tab-b")
    assert board.cancel("tab-a") and first.is_set() and second.is_set() and not other.is_set()
    board.end("tab-a", first)
    second.clear()
    assert board.cancel("tab-a") and second.is_set()  # the one still running
    board.end("tab-a", second)
    assert not board.cancel("tab-a") and not other.is_set()
