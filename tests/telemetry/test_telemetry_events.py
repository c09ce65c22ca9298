"""Event marks: the process-wide log, bounds, thread safety, subscribers."""

from __future__ import annotations

import threading
import time

import pytest

from workbench.telemetry import EVENT_KINDS, Event, EventLog, get_event_log, post_event, reset_event_log


def test_post_event_records_what_the_runtime_says() -> None:
    before = time.time()
    e = post_event("load_started", "loading tiny", model="tiny", devices=["cuda:0", "cuda:1"])
    assert isinstance(e, Event)
    assert e.kind in EVENT_KINDS
    assert e.time_s >= before
    assert e.model == "tiny"
    assert e.data == {"devices": ["cuda:0", "cuda:1"]}
    post_event("load_finished", "loaded tiny in 1.2 s", model="tiny", load_s=1.2)
    post_event("error", "out of memory")
    log = get_event_log()
    assert [x.kind for x in log.events()] == ["load_started", "load_finished", "error"]
    assert [x.kind for x in log.events(since_s=e.time_s)] == ["load_finished", "error"]
    assert [x.message for x in log.events(kind="error")] == ["out of memory"]
    assert e.to_dict()["data"] == {"devices": ["cuda:0", "cuda:1"]}
    with pytest.raises(ValueError):
        post_event("")


def test_log_is_bounded_but_counts_keep_growing() -> None:
    log = EventLog(maxlen=10)
    for i in range(25):
        log.post("generate_finished", f"#{i}")
    assert len(log) == 10
    assert log.events()[0].message == "#15"
    assert log.counts() == {"generate_finished": 25}
    log.clear()
    assert len(log) == 0
    assert log.counts() == {}


def test_posting_from_many_threads() -> None:
    log = get_event_log()
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        barrier.wait()
        for i in range(200):
            log.post("generate_started", model=f"m{n}", i=i)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.events()) == 1600
    assert log.counts()["generate_started"] == 1600


def test_subscribers_get_every_event_in_order_and_cannot_block_posting() -> None:
    log = get_event_log()
    got: list[str] = []
    done = threading.Event()
    gate = threading.Event()

    def slow(e: Event) -> None:
        gate.wait(60)
        got.append(e.message)
        if e.message == "4":
            done.set()

    unsubscribe_bad = log.subscribe(lambda e: 1 / 0)
    unsubscribe = log.subscribe(slow)
    poster = threading.Thread(target=lambda: [log.post("unload", str(i)) for i in range(5)], daemon=True)
    poster.start()
    poster.join(30)
    assert not poster.is_alive()  # all posted while the slow subscriber was stuck on the gate
    gate.set()
    assert done.wait(30)
    assert got == ["0", "1", "2", "3", "4"]  # events are not skipped, unlike samples
    unsubscribe()
    unsubscribe_bad()
    log.post("unload", "late")
    assert got[-1] == "4"  # unsubscribe joined the delivery thread: nothing can arrive now


def test_reset_gives_a_fresh_log() -> None:
    post_event("unload")
    old = get_event_log()
    reset_event_log()
    assert get_event_log() is not old
    assert get_event_log().events() == []
