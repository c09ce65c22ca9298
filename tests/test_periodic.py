"""The one periodic-thread helper every background loop uses (sampler, watchers, idle unload,
lease heartbeat): start, stop, start again, bounded join, a loop that ends itself, a tick that raises."""

from __future__ import annotations

import threading

from workbench._periodic import Periodic


class Ticks:
    """A tick that counts, releases a semaphore per tick, and can be told to end or hang."""

    def __init__(self, result: bool | None = None) -> None:
        self.n = 0
        self.done = threading.Semaphore(0)
        self.result = result
        self.hang: threading.Event | None = None
        self.raise_first = False

    def __call__(self) -> bool | None:
        self.n += 1
        self.done.release()
        if self.hang is not None:
            self.hang.wait(30)
        if self.raise_first and self.n == 1:
            raise RuntimeError("sensor on fire")
        return self.result


def test_start_stop_and_start_again() -> None:
    tick = Ticks()
    loop = Periodic(tick, interval_s=60, name="workbench-test-periodic")
    assert loop.start() is loop
    assert tick.done.acquire(timeout=10)  # immediate: the first tick at start
    assert loop.start().running  # a second start while running is a no-op
    assert loop.stop() is True
    assert loop.running is False
    loop.start()
    try:
        assert tick.done.acquire(timeout=10)  # a fresh thread after stop()
    finally:
        loop.stop()
    assert (tick.n, loop.ticks) == (2, 2)


def test_restart_runs_a_new_thread() -> None:
    tick = Ticks()
    loop = Periodic(tick, interval_s=60, name="workbench-test-periodic")
    loop.start()
    assert tick.done.acquire(timeout=10)
    first = loop._thread
    loop.restart()
    try:
        assert tick.done.acquire(timeout=10)
        assert loop._thread is not first
    finally:
        loop.stop()


def test_not_immediate_waits_one_interval_and_stop_cuts_the_wait() -> None:
    tick = Ticks()
    loop = Periodic(tick, interval_s=3600, name="workbench-test-periodic", immediate=False).start()
    assert loop.stop(timeout_s=10) is True  # the wait is on the stop event: no hour to sit out
    assert tick.n == 0


def test_a_tick_returning_false_ends_the_loop_and_start_begins_again() -> None:
    tick = Ticks(result=False)
    loop = Periodic(tick, interval_s=0.01, name="workbench-test-periodic").start()
    assert tick.done.acquire(timeout=10)
    thread = loop._thread
    if thread is not None:
        thread.join(10)
    assert loop.running is False
    loop.start()
    assert tick.done.acquire(timeout=10)
    assert loop.stop() is True
    assert tick.n == 2


def test_a_raising_tick_is_counted_and_the_loop_goes_on(caplog) -> None:
    tick = Ticks()
    tick.raise_first = True
    loop = Periodic(tick, interval_s=0.01, name="workbench-test-periodic").start()
    try:
        assert tick.done.acquire(timeout=10)
        assert tick.done.acquire(timeout=10)  # a second tick came after the first raised
    finally:
        loop.stop()
    assert loop.errors == 1
    assert [r.levelname for r in caplog.records if "a tick raised" in r.getMessage()] == ["ERROR"]


def test_stop_joins_for_a_bounded_time_and_the_stuck_thread_ticks_no_more() -> None:
    tick = Ticks()
    tick.hang = threading.Event()
    loop = Periodic(tick, interval_s=0.01, name="workbench-test-periodic").start()
    assert tick.done.acquire(timeout=10)
    stuck = loop._thread
    assert loop.stop(timeout_s=0.05) is False  # the tick hangs: stop() gives up, says so
    tick.hang.set()
    stuck.join(10)
    assert stuck.is_alive() is False  # its own stop event was set: it ended after the tick
    assert tick.n == 1


def test_stop_from_inside_a_tick_does_not_join_itself() -> None:
    ended = threading.Event()
    loop: Periodic

    def tick() -> None:
        assert loop.stop() is True
        ended.set()

    loop = Periodic(tick, interval_s=0.01, name="workbench-test-periodic").start()
    assert ended.wait(10)
    thread = loop._thread
    assert thread is None  # stop() from the tick handed the thread back without joining it


def test_work_added_while_a_tick_decides_to_end_is_not_left_unwatched() -> None:
    """The lease heartbeat's race: the tick finds nothing held and returns False; meanwhile a lease
    is held and start() finds the thread still alive. The loop must tick again, not end."""
    work: list[int] = []
    beats = threading.Semaphore(0)
    state = {"first": True}

    def tick() -> bool:
        if not work:
            if state["first"]:
                state["first"] = False
                # Another thread holds a lease between this tick's look and its return.
                t = threading.Thread(target=lambda: (work.append(1), loop.start()))
                t.start()
                t.join(10)
            return False
        beats.release()
        return True

    loop = Periodic(tick, interval_s=60, name="workbench-test-periodic-race")
    loop.start()
    try:
        assert beats.acquire(timeout=10)
        assert loop.running
    finally:
        loop.stop()
