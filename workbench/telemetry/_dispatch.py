"""Per-subscriber delivery threads, so that no callback can stall the producer.

Each subscriber gets a small mailbox and its own daemon thread. The producer
(the sampler thread, or whoever posts an event) only appends to the mailbox and
notifies: O(1), never blocked by a callback. A slow callback only delays itself;
one that raises is logged once and keeps receiving.

Two mailbox kinds:

* ``latest_only=True`` (samples): the mailbox holds one item; a slow subscriber
  gets the newest sample and skips the ones it was too slow for (``dropped``).
* ``latest_only=False`` (events): a bounded FIFO; nothing is skipped unless the
  subscriber falls ``maxlen`` items behind.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import ArgumentTypeError

logger = logging.getLogger(__name__)


class Delivery:
    """Calls ``callback(item)`` on its own thread for each item offered."""

    def __init__(
        self, callback: Callable[[Any], Any], *, name: str, latest_only: bool, maxlen: int = 10_000
    ) -> None:
        if not callable(callback):
            raise ArgumentTypeError(f"subscriber must be callable, not {type(callback).__name__}",
                                    hint="pass a function that takes one argument")
        self.callback = callback
        self.name = name
        self._items: deque[Any] = deque(maxlen=1 if latest_only else maxlen)
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.dropped = 0
        self.errors = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._cond:
            if self._closed or self.alive:
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def offer(self, item: Any) -> None:
        """Queue ``item`` (replacing an undelivered one in latest-only mode); never blocks."""
        with self._cond:
            if self._closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(item)
            self._cond.notify()

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop delivering (pending items are dropped) and join the thread.

        A callback stuck for longer than ``timeout_s`` cannot be interrupted; its
        daemon thread is left to finish on its own and will deliver nothing more.
        """
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                logger.warning(
                    "telemetry subscriber %r did not return within %.1f s", self.callback, timeout_s
                )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                item = self._items.popleft()
            try:
                self.callback(item)
            except Exception:
                # A subscriber is user or UI code: whatever it raises must not end delivery,
                # and a callback failing every tick must not flood the log.
                self.errors += 1
                if self.errors == 1:
                    logger.exception(
                        "telemetry subscriber %r raised; later errors from it are counted, not logged",
                        self.callback,
                    )
            self.delivered += 1


def subscribe(subscribers: list[Delivery], lock: threading.Lock | threading.RLock, callback: Callable[[Any], Any],
              *, name: str, latest_only: bool) -> Callable[[], None]:
    """Add a :class:`Delivery` for ``callback`` to ``subscribers`` (guarded by ``lock``) and start it.

    Returns:
        A function that unsubscribes (idempotent), joining the callback's thread.
    """
    delivery = Delivery(callback, name=f"{name}-{id(callback):x}", latest_only=latest_only)
    with lock:
        subscribers.append(delivery)
    delivery.start()

    def unsubscribe() -> None:
        with lock:
            if delivery in subscribers:
                subscribers.remove(delivery)
        delivery.close()

    return unsubscribe
