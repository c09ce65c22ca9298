"""Idle unload: give back the memory (and GPU lease) of a model nobody has used for a while.

On a shared machine an idle kernel can hold a GPU for days. With the setting
``idle_unload_s`` above 0 (off by default; 1800 on a JupyterHub is a good value),
a watcher thread per registry unloads every model that has not generated for that
long, which releases its GPU lease, marks an ``idle_unload`` event on the
telemetry timeline, and leaves a notice the Load panel shows as a banner
("unloaded after 30 min idle: load again to continue").

A model is busy, never idle, while a generation holds its lock; the watcher never
waits for that lock. Tests drive :meth:`IdleWatcher.check` with their own clock.

Example:
    >>> watcher = IdleWatcher(get_registry(), idle_s=1800)   # doctest: +SKIP
    >>> watcher.check()                                      # doctest: +SKIP
    []
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._periodic import Periodic
from ..errors import ConfigError, WorkbenchError
from ..telemetry.events import post_event
from .spec import UnloadReason

logger = logging.getLogger(__name__)

#: The event kind marked on the telemetry timeline.
EVENT_KIND = "idle_unload"


def _duration(seconds: float) -> str:
    from ..devices.leases import duration_str

    return duration_str(seconds)


@dataclass(frozen=True)
class IdleUnload:
    """One model unloaded for idleness.

    Attributes:
        name: its registry name.
        idle_s: how long it had not generated.
        limit_s: the setting it exceeded.
        time_s: when it was unloaded (``time.time()``).
        freed_bytes: what the unload gave back.
    """

    name: str
    idle_s: float
    limit_s: float
    time_s: float
    freed_bytes: int

    @property
    def message(self) -> str:
        """``"SmolLM2 unloaded after 30 min idle: load again to continue"``."""
        return f"{self.name} unloaded after {_duration(self.limit_s)} idle: load again to continue"


class IdleWatcher:
    """Unloads a registry's models once idle longer than ``idle_s``.

    Args:
        registry: the :class:`~workbench.runtime.Registry` to watch.
        idle_s: seconds without generation before a model is unloaded (> 0).
        clock: ``time.time`` unless a test injects its own.
        interval_s: seconds between checks of the thread; default a tenth of
            ``idle_s``, between 1 s and 60 s.

    Raises:
        ConfigError: ``idle_s`` is not a positive number of seconds.
    """

    def __init__(self, registry: Any, idle_s: float, *, clock: Callable[[], float] = time.time,
                 interval_s: float | None = None) -> None:
        if not idle_s or idle_s <= 0:
            raise ConfigError(f"idle_s must be a positive number of seconds, not {idle_s!r}",
                              hint="set idle_unload_s > 0, or 0 to never unload", idle_s=idle_s)
        self.registry = registry
        self.idle_s = float(idle_s)
        self.clock = clock
        self.interval_s = interval_s if interval_s is not None else min(60.0, max(1.0, idle_s / 10))
        self.unloaded: deque[IdleUnload] = deque(maxlen=100)
        self._busy_seen: dict[str, float] = {}
        self._loop = Periodic(self._tick, interval_s=lambda: self.interval_s, name="workbench-idle-unload",
                              immediate=False)

    def last_activity_s(self, loaded: Any) -> float:
        """The model's last generation, or the last check that found one running."""
        return max(loaded.last_used, self._busy_seen.get(loaded.name, float("-inf")))

    def check(self, now: float | None = None) -> list[IdleUnload]:
        """Unload every model idle longer than ``idle_s``; returns what was unloaded."""
        now = self.clock() if now is None else now
        done: list[IdleUnload] = []
        for m in self.registry.list():
            if not m.lock.acquire(blocking=False):  # generating right now: busy, not idle
                self._busy_seen[m.name] = now
                continue
            try:
                idle = now - self.last_activity_s(m)
                if idle <= self.idle_s or not m.loaded:
                    continue
                # Holding the model's lock, no generation can start between the check and the unload;
                # one that was waiting fails with this reason instead of "was unloaded".
                reason = UnloadReason(f"unloaded after {_duration(self.idle_s)} idle", "load again to continue")
                try:
                    report = self.registry.unload(m.name, reason)
                except WorkbenchError as exc:  # unloaded meanwhile by someone else
                    logger.debug("idle unload of %s skipped: %s", m.name, exc)
                    continue
            finally:
                m.lock.release()
            self._busy_seen.pop(m.name, None)
            unload = IdleUnload(m.name, idle, self.idle_s, now, report.freed_bytes)
            self.unloaded.append(unload)
            done.append(unload)
            post_event(EVENT_KIND, unload.message, model=m.name, idle_s=idle, limit_s=self.idle_s,
                 freed_bytes=report.freed_bytes, devices=list(m.devices))
        return done

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Check every ``interval_s`` on a daemon thread, until :meth:`stop` or the registry is empty."""
        self._loop.start()

    def _tick(self) -> bool:
        if not len(self.registry):
            return False  # nothing left to watch; the next load starts the thread again
        self.check()
        return True

    @property
    def running(self) -> bool:
        return self._loop.running

    def stop(self) -> None:
        self._loop.stop()


def ensure_watcher(registry: Any) -> IdleWatcher | None:
    """Start (or retune) ``registry``'s watcher when the setting ``idle_unload_s`` is on; ``None`` when off."""
    from ..config import get_settings

    idle_s = float(get_settings().idle_unload_s or 0)
    watcher: IdleWatcher | None = registry.idle_watcher
    if idle_s <= 0:
        if watcher is not None:
            watcher.stop()
        return None
    if watcher is None or watcher.idle_s != idle_s:
        if watcher is not None:
            watcher.stop()
        watcher = IdleWatcher(registry, idle_s)
        registry.idle_watcher = watcher
    watcher.start()
    return watcher


def idle_notices(registry: Any, since_s: float | None = None) -> list[IdleUnload]:
    """What ``registry``'s watcher unloaded (after ``since_s``), oldest first: the panel's banner."""
    watcher = registry.idle_watcher
    if watcher is None:
        return []
    return [u for u in list(watcher.unloaded) if since_s is None or u.time_s > since_s]
