"""The leases this process holds, and the one daemon thread that keeps them alive.

Every :data:`HEARTBEAT_S` seconds the thread touches each held lease file (its
ctime becomes the heartbeat, its mtime the model's last use), removes the older
generations a reservation change left behind, and gives up a lease an
administrator revoked. At exit (``atexit``) the held leases are released; a forked
child inherits this object but not the parent's leases, so it releases nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..._periodic import Periodic
from .record import Lease

if TYPE_CHECKING:
    from .book import LeaseBook

logger = logging.getLogger("workbench.devices.leases")

#: Seconds between heartbeats of a kernel's leases.
HEARTBEAT_S = 15.0


@dataclass
class Held:
    """One lease this process holds: the newest generation, what reports its last use, and the
    older generations to remove at the next heartbeat (a reader may be listing right now)."""

    lease: Lease
    activity: Callable[[], float | None] | None = None
    superseded: list[str] = field(default_factory=list)
    pid: int = field(default_factory=os.getpid)


class Heartbeat:
    """The held leases of one :class:`~.book.LeaseBook` and their heartbeat thread.

    Args:
        book: whose leases these are (held weakly: a dropped book stops beating).
        interval_s: seconds between heartbeats; ``None`` starts no thread (call :meth:`beat`).
    """

    def __init__(self, book: LeaseBook, interval_s: float | None = HEARTBEAT_S) -> None:
        self._book = weakref.ref(book)
        self.interval_s = interval_s
        self.lock = threading.RLock()
        self.held: dict[str, Held] = {}
        self._loop = Periodic(self._beat, interval_s=interval_s or HEARTBEAT_S, name="workbench-lease-heartbeat",
                              immediate=False)
        self._atexit = False

    def hold(self, lease: Lease) -> None:
        with self.lock:
            self.held[lease.lease_id] = Held(lease)
            if not self._atexit:
                ref = self._book
                atexit.register(lambda: (book := ref()) is not None and book.release_all())
                self._atexit = True
            if self.interval_s:
                self._loop.start()

    def get(self, lease_id: str) -> Held | None:
        with self.lock:
            held = self.held.get(lease_id)
            return held if held is not None and held.pid == os.getpid() else None

    def mine(self) -> list[Held]:
        """The held leases of this very process (not a forked parent's)."""
        with self.lock:
            return [h for h in self.held.values() if h.pid == os.getpid()]

    def drop(self, lease_id: str) -> Held | None:
        with self.lock:
            return self.held.pop(lease_id, None)

    def _beat(self) -> bool:
        book = self._book()
        if book is None:
            return False  # the book was dropped: nothing to keep alive
        with self.lock:
            if not self.held:
                return False  # the next hold() starts the thread again
        try:
            book.heartbeat()
        except Exception as exc:  # the thread must outlive one bad beat (a folder an admin broke)
            logger.warning("lease heartbeat failed: %s", exc)
        return True

    def stop(self) -> None:
        """Stop the thread (the leases stay; the book's ``release_all`` gives them back)."""
        self._loop.stop()
