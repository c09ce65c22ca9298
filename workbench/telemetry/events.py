"""Event marks: what the runtime did, and when, to draw over the telemetry plots.

The runtime posts ``load_started`` / ``load_finished`` / ``generate_started`` /
``generate_finished`` / ``unload`` / ``error``; a plot draws a vertical line at
each, so a memory step lines up with the load that caused it.

Example:
    >>> from workbench.telemetry import post_event, get_event_log
    >>> e = post_event("load_started", "loading tiny", model="tiny", devices=["cpu"])
    >>> e.data
    {'devices': ['cpu']}
    >>> get_event_log().events(since_s=e.time_s - 1)[-1].kind
    'load_started'
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .._records import Record
from ..errors import ConfigError
from ._dispatch import Delivery, subscribe

EventKind = Literal[
    "load_started", "load_finished", "generate_started", "generate_finished", "unload", "idle_unload",
    "engine_started", "engine_ready", "engine_stopped", "error",
]
"""The kinds the workbench posts (runtime, idle unloads, serving engines); :meth:`EventLog.post`
accepts any other non-empty string too, for a notebook's own marks."""
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)


@dataclass(frozen=True)
class Event(Record):
    """One mark on the timeline.

    Attributes:
        time_s: when it happened (``time.time()``).
        kind: what happened, e.g. ``"load_finished"`` (see :data:`EVENT_KINDS`).
        message: one line for a tooltip or log, e.g. ``"loaded tiny in 1.2 s"``.
        model: the model it concerns, if any.
        data: extra JSON-friendly details (``devices=[...]``, ``load_s=1.2``...).
    """

    time_s: float
    kind: EventKind | str
    message: str = ""
    model: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


class EventLog:
    """A bounded, thread-safe log of events with subscribers.

    Subscribers are called on their own threads, in order, and never block
    :meth:`post`. Counts per kind keep growing when old events fall out of the
    log (they back the ``workbench_events_total`` Prometheus counter).

    Args:
        maxlen: events kept; the oldest are dropped first.
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: deque[Event] = deque(maxlen=maxlen)
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._subs: list[Delivery] = []

    def __len__(self) -> int:
        return len(self._events)

    def post(self, kind: EventKind | str, message: str = "", *, model: str | None = None, **data: Any) -> Event:
        """Record an event now and notify subscribers. See :func:`post_event`.

        Raises:
            ConfigError: ``kind`` is not a non-empty string.
        """
        if not isinstance(kind, str) or not kind:
            raise ConfigError(f"event kind must be a non-empty string, not {kind!r}",
                              hint="name the event, e.g. 'load' or 'error'", kind=kind)
        event = Event(time.time(), kind, str(message), model, dict(data))
        self.append(event)
        return event

    def append(self, event: Event) -> None:
        """Record an already-built event (e.g. one replayed from elsewhere)."""
        with self._lock:
            self._events.append(event)
            self._counts[event.kind] += 1
            subs = list(self._subs)
        for sub in subs:
            sub.offer(event)

    def events(self, since_s: float | None = None, kind: str | None = None) -> list[Event]:
        """Events in time order; only those after ``since_s`` and of ``kind`` if given."""
        with self._lock:
            found = list(self._events)
        if since_s is not None:
            found = [e for e in found if e.time_s > since_s]
        if kind is not None:
            found = [e for e in found if e.kind == kind]
        return found

    def counts(self) -> dict[str, int]:
        """How many events of each kind were ever posted (since the last :meth:`clear`)."""
        with self._lock:
            return dict(self._counts)

    def subscribe(self, callback: Callable[[Event], Any]) -> Callable[[], None]:
        """Call ``callback(event)`` for each new event, on a thread of its own.

        Returns:
            A function that unsubscribes (idempotent).
        """
        return subscribe(self._subs, self._lock, callback, name="workbench-events-subscriber", latest_only=False)

    def clear(self) -> None:
        """Forget every event and count (subscribers stay)."""
        with self._lock:
            self._events.clear()
            self._counts.clear()

    def close(self) -> None:
        """Drop every subscriber, joining their threads."""
        with self._lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()


_log_lock = threading.Lock()
_log: EventLog | None = None


def get_event_log() -> EventLog:
    """The process-wide :class:`EventLog` (created on first use)."""
    global _log
    with _log_lock:
        if _log is None:
            _log = EventLog()
        return _log


def reset_event_log() -> None:
    """Close and forget the process-wide log (tests use this)."""
    global _log
    with _log_lock:
        log, _log = _log, None
    if log is not None:
        log.close()


def post_event(kind: EventKind | str, message: str = "", *, model: str | None = None, **data: Any) -> Event:
    """Record that something happened, for plots and exports: the one way every layer posts.

    The runtime (loads, generations, unloads, idle unloads) and serving (engines started,
    ready, stopped) all call this function. Its error rule: posting never fails for
    telemetry's own reasons (the log is an in-memory deque; subscribers run on their own
    threads, and what they raise is logged there), so a load or a generation cannot be
    broken by it. The one error is the caller's: a ``kind`` that is not a non-empty string.

    Args:
        kind: e.g. ``"load_started"``, ``"generate_finished"``, ``"error"``.
        message: one line for humans.
        model: the model concerned, if any.
        **data: JSON-friendly details (``devices=["cuda:0"]``, ``tokens=128``...).

    Raises:
        ConfigError: ``kind`` is not a non-empty string.

    Example:
        >>> post_event("generate_finished", "128 tokens", model="tiny", tokens=128).kind
        'generate_finished'
    """
    return get_event_log().post(kind, message, model=model, **data)
