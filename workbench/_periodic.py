"""One periodic daemon thread: start, stop, restart, bounded join. Every background loop uses it.

The telemetry sampler, the ``/metrics`` watchers, the idle-unload watcher and the lease
heartbeat all "call something every N seconds until told to stop"; written by hand four
times they had drifted (one could not restart after ``stop()``, one joined for ever).

Rules, kept here once:

* ``start()`` is a no-op while the thread runs; after ``stop()`` (or after the loop ended
  itself) it starts a fresh thread. Each run gets its own stop event, so a thread that
  outlived ``stop()``'s bounded join (a tick hanging in a driver) exits when its tick
  returns instead of being revived beside the new one.
* ``stop()`` joins at most ``join_timeout_s`` and says whether the thread ended; called
  from the tick itself it only asks the loop to end.
* Ticks keep a fixed rate; a tick that overruns skips the missed ticks instead of
  firing them in a burst (a slow source, a suspended laptop).
* ``tick()`` returning ``False`` ends the loop (nothing left to watch), unless ``start()`` was
  called since that tick began: the owner added something to watch after the tick looked
  (a lease held, a model loaded) and found the thread still alive, so the loop ticks again
  instead of ending with the new work unwatched. An exception from a tick is logged once,
  counted in :attr:`errors`, and the loop goes on.

Example:
    >>> beats = []
    >>> p = Periodic(lambda: beats.append(1), interval_s=60, name="doc-example")
    >>> p.start().running, p.stop(), p.running
    (True, True, False)
    >>> beats      # the first tick runs at start
    [1]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: ``tick()`` -> ``False`` to end the loop, anything else (``None``) to go on.
Tick = Callable[[], "bool | None"]


class Periodic:
    """Calls ``tick()`` every ``interval_s`` seconds on a daemon thread.

    Args:
        tick: the work of one period; returns ``False`` to end the loop.
        interval_s: seconds between tick starts, a number or a function read before
            every wait (an owner whose interval can change).
        name: the thread's name (``workbench-...``), shown in logs and thread dumps.
        immediate: tick at once on start (a sampler's first row) rather than after one interval
            (a heartbeat, an idle check).
        join_timeout_s: how long :meth:`stop` waits for the thread by default.

    Attributes:
        ticks: ticks run, over every run.
        errors: ticks that raised.
        busy_s: wall seconds spent in ticks; ``max_tick_s`` the longest one.
        thread_cpu_s: CPU seconds of the loop's threads (ticks included), over every run.
    """

    def __init__(self, tick: Tick, *, interval_s: float | Callable[[], float], name: str,
                 immediate: bool = True, join_timeout_s: float = 5.0) -> None:
        self._tick = tick
        self._interval = interval_s
        self.name = name
        self.immediate = immediate
        self.join_timeout_s = float(join_timeout_s)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._kicked = False  # start() was called while the thread ran (see _run)
        self.ticks = 0
        self.errors = 0
        self.busy_s = 0.0
        self.max_tick_s = 0.0
        self.thread_cpu_s = 0.0
        self.started_at: float | None = None  # time.monotonic() of the first start

    @property
    def interval_s(self) -> float:
        value = self._interval
        return float(value() if callable(value) else value)

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def start(self) -> Periodic:
        """Start the thread unless it runs; returns ``self``."""
        with self._lock:
            if self.running:
                self._kicked = True
                return self
            self._stop = threading.Event()
            if self.started_at is None:
                self.started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> bool:
        """End the loop and join its thread for at most ``timeout_s`` (default ``join_timeout_s``).

        Returns:
            Whether no thread is left running (``False``: a tick is still stuck; its thread
            ends when the tick returns and ticks no more).
        """
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(self.join_timeout_s if timeout_s is None else timeout_s)
        if thread.is_alive():
            logger.warning("%s did not stop within %.1f s (a tick is hanging)", self.name,
                           self.join_timeout_s if timeout_s is None else timeout_s)
            return False
        return True

    def restart(self) -> Periodic:
        """:meth:`stop`, then :meth:`start` (a new interval takes effect at once)."""
        self.stop()
        return self.start()

    def _once(self) -> bool:
        t0 = time.monotonic()
        try:
            go_on = self._tick() is not False
        except Exception:
            # The loop must outlive one bad tick (a driver error, a folder an admin broke);
            # a tick failing every period must not flood the log.
            self.errors += 1
            if self.errors == 1:
                logger.exception("%s: a tick raised; later errors are counted, not logged", self.name)
            go_on = True
        took = time.monotonic() - t0
        self.ticks += 1
        self.busy_s += took
        self.max_tick_s = max(self.max_tick_s, took)
        return go_on

    def _run(self, stop: threading.Event) -> None:
        cpu0 = time.thread_time()
        cpu_before = self.thread_cpu_s
        next_tick = time.monotonic() + (0.0 if self.immediate else self.interval_s)
        try:
            if not self.immediate and stop.wait(self.interval_s):
                return
            while not stop.is_set():
                with self._lock:
                    self._kicked = False
                if not self._once():
                    with self._lock:
                        # A start() since the tick began found this thread alive and relied on it;
                        # otherwise end here, under the lock start() takes (it then starts afresh).
                        if self._kicked and self._stop is stop and not stop.is_set():
                            continue
                        if self._stop is stop:
                            self._thread = None
                    break
                self.thread_cpu_s = cpu_before + time.thread_time() - cpu0
                next_tick += self.interval_s
                now = time.monotonic()
                if next_tick < now:
                    next_tick = now  # fell behind: skip the missed ticks
                if stop.wait(next_tick - now):
                    break
        finally:
            self.thread_cpu_s = cpu_before + time.thread_time() - cpu0
            with self._lock:
                if self._stop is stop:  # ended itself: the next start() starts afresh
                    self._thread = None
