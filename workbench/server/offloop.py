"""Reads of shared files for REST and ``/metrics``: off the event loop, bounded in time and in threads.

The store and the lease folder hold other users' files (ARCHITECTURE.md section 2,
principle 14): every read of them is bounded, but a store of hostile entries still
costs seconds, and a file on a hung mount costs forever. A Jupyter server runs every
request of its user on one event loop, so such a read must never run there:

* :class:`OffLoop` runs each kind of read (``"store"``, ``"leases"``...) in a small
  thread pool, at most one at a time per kind: a request that finds its kind in flight
  waits for that same read instead of starting another, so a read that never ends
  holds one thread, not one per request. A request waits at most ``timeout_s``
  (:class:`ReadTimeout`, which the REST handlers answer with 503); the read goes on,
  and the next request gets its result.
* :class:`Snapshot` serves a caller that may not wait at all (``prometheus_client``
  calls a collector synchronously, on the loop, in jupyter_server's ``/metrics``
  handler): the value the last finished read produced, with its age, while a newer
  read runs in the background. It waits for a fresh read only briefly, and only while
  reads are quick.

Why our own code: ``loop.run_in_executor`` has no time bound and takes a new thread per
call (a stuck read per request exhausts the default pool and then every other handler
that uses it), and ``asyncio.wait_for`` alone cancels nothing in a thread. The two
dozen lines here join both with one in-flight read per kind.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

logger = logging.getLogger("workbench.server")

T = TypeVar("T")

#: Threads reading for one server: one per kind of read (devices, telemetry, store, one entry,
#: leases) can be stuck at once and the others still answer.
MAX_READ_THREADS = 6
#: The longest a ``/metrics`` scrape waits, on the event loop, for a fresh lease reading.
METRICS_WAIT_S = 0.5


class ReadTimeout(TimeoutError):
    """A read of ``what`` did not finish within ``timeout_s`` seconds (it goes on in the background)."""

    def __init__(self, what: str, timeout_s: float) -> None:
        self.what, self.timeout_s = what, timeout_s
        super().__init__(f"reading {what} took longer than {timeout_s:g} s")


class OffLoop:
    """A bounded pool running at most one read per kind at a time.

    Args:
        max_workers: threads of the pool (reads of different kinds beyond it queue).

    Example:
        >>> reads = OffLoop()
        >>> reads.submit("answer", lambda: 42).result(timeout=10)
        42
        >>> reads.close()
    """

    def __init__(self, max_workers: int = MAX_READ_THREADS) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers, thread_name_prefix="workbench-read")
        self._in_flight: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: Callable[[], T]) -> concurrent.futures.Future[T]:
        """The read of ``kind`` in flight, or ``fn`` started in the pool as the new one.

        ``kind`` names everything the result depends on (``"store/NAME"``): a caller whose
        ``kind`` is in flight gets that read's result, whatever its own ``fn``."""
        with self._lock:
            future = self._in_flight.get(kind)
            if future is not None and not future.done():
                return future
            future = self._pool.submit(fn)
            self._in_flight[kind] = future
        future.add_done_callback(lambda done: self._forget(kind, done))
        return future

    def _forget(self, kind: str, done: concurrent.futures.Future[Any]) -> None:
        # Kinds carry parameters (a telemetry window, a model name): finished reads are not kept.
        with self._lock:
            if self._in_flight.get(kind) is done:
                del self._in_flight[kind]

    def busy(self, kind: str) -> bool:
        """Whether a read of ``kind`` is in flight."""
        with self._lock:
            future = self._in_flight.get(kind)
            return future is not None and not future.done()

    async def run(self, kind: str, fn: Callable[[], T], timeout_s: float, what: str | None = None) -> T:
        """``fn()``'s result (or what it raised), waited for at most ``timeout_s`` without blocking the loop.

        Raises:
            ReadTimeout: the read did not finish in time; it goes on, and a later call of
                the same ``kind`` waits for it.
        """
        future = self.submit(kind, fn)
        try:
            # shield: a request that gives up must not cancel the read others wait for.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), timeout_s)
        except asyncio.TimeoutError:
            raise ReadTimeout(what or kind, timeout_s) from None

    def close(self) -> None:
        """Stop taking reads; queued ones are dropped, running ones end on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)


class Snapshot(Generic[T]):
    """The last value a background read of ``kind`` produced, for callers that may not wait.

    Args:
        reads: the pool the read runs in (shared with REST, so a REST request and a scrape
            wait for the same read).
        kind: the read's kind in ``reads``.
        fn: the read.
        wait_s: how long :meth:`get` may wait for a read it starts, when the last one took
            no longer than that; otherwise it serves the last value at once.
        clock: ``time.monotonic`` (tests pass their own).

    A read that raises leaves the last value in place and is logged once per distinct
    message (a bad file costs one warning, not one per scrape).
    """

    def __init__(self, reads: OffLoop, kind: str, fn: Callable[[], T], *, wait_s: float = METRICS_WAIT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._reads, self._kind, self._fn, self._wait_s, self._clock = reads, kind, fn, wait_s, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._taken_at: float | None = None  # clock() when the read behind _value started
        self._last_cost_s = 0.0
        self._last_error: str | None = None

    def read(self) -> T:
        """Run the read here and now (in a pool thread: REST's reads of the same kind call this), keeping its
        value; raises what the read raised."""
        start = self._clock()
        try:
            value = self._fn()
        except Exception as exc:  # the scrape goes on with the last value; the failure is logged once
            message = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self._last_cost_s = self._clock() - start
                repeat, self._last_error = message == self._last_error, message
            if not repeat:
                logger.warning("workbench metrics: reading %s failed (%s); serving the last reading", self._kind,
                               message)
            raise
        with self._lock:
            self._value, self._taken_at, self._last_cost_s = value, start, self._clock() - start
            self._last_error = None
        return value

    def get(self) -> tuple[T | None, float | None]:
        """``(value, age_s)``: the newest value read (``None`` before the first) and seconds since
        its read started (``None`` likewise). Never waits longer than ``wait_s``."""
        if not self._reads.busy(self._kind):
            future = self._reads.submit(self._kind, self.read)
            with self._lock:
                quick = self._last_cost_s <= self._wait_s
            if quick:
                try:
                    future.result(timeout=self._wait_s)
                except Exception:  # noqa: S110 (timed out or failed: logged by read(), the last value stands)
                    pass
        return self.peek()

    def peek(self) -> tuple[T | None, float | None]:
        """``(value, age_s)`` as :meth:`get` returns them, without starting a read."""
        with self._lock:
            if self._taken_at is None:
                return None, None
            return self._value, max(0.0, self._clock() - self._taken_at)
