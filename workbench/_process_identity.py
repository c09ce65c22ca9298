"""One notion of "this process": a PID, when it started, and the PID namespace and boot it lives in.

A PID alone names nothing for long: it is recycled after the process ends, means
another process in another PID namespace (a container, a host-network pod that
shares the host name), and another again after a reboot. GPU leases (which record
who holds memory) and serving (which stops the engines it started) both need to
ask "is the process I recorded still running?", so both use this record and its
one rule, :meth:`ProcessIdentity.status`:

* ``"elsewhere"``: the record names a PID namespace or a boot that is not the
  reader's; the PID cannot be looked at from here (leases judge such a holder by
  its heartbeat alone);
* ``"gone"``: proven gone: no such PID, a zombie (``Z``/``X`` in ``/proc/PID/stat``;
  PID 1 of some containers never reaps re-parented children), or a process that
  started at another time (the PID was recycled);
* ``"unverified"``: a process with that PID exists but its start time may not be
  read (another user's process under ``hidepid``, psutil's ``AccessDenied``): it is
  *not* called gone, because calling it gone would drop another user's live lease;
  it is not proven ours either, so nothing signals it;
* ``"running"``: the very process recorded (same start time, not a zombie).

:meth:`ProcessIdentity.alive` is ``status() != "gone"`` (counting and refusing:
whatever cannot be proven gone still counts); code that signals a process
requires ``"running"``.

The start time is compared in clock ticks since boot (``/proc/PID/stat`` field 22),
which is exact and the same number for every reader in one boot; psutil's
``create_time`` (boot time plus those ticks) is kept for display and for systems
without ``/proc``, and compared within :data:`CREATE_TIME_TOLERANCE_S` because each
process computes the boot time itself and it moves when the clock is stepped.

Example:
    >>> me = ProcessIdentity.current()
    >>> me.status(), me.alive()
    ('running', True)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Literal

from ._records import Record

Status = Literal["running", "gone", "unverified", "elsewhere"]

#: Largest difference of two ``create_time`` readings of one process, seconds (each process
#: computes the boot time from the wall clock itself; see the module doc).
CREATE_TIME_TOLERANCE_S = 1.5


def _read_small(path: str, limit: int = 4096) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def boot_id() -> str | None:
    """This boot's id (``/proc/sys/kernel/random/boot_id``), or ``None`` without ``/proc``."""
    text = _read_small("/proc/sys/kernel/random/boot_id")
    return (text.strip() or None) if text else None


def pid_namespace() -> int | None:
    """The inode of ``/proc/self/ns/pid``: equal for two processes exactly when they share a PID namespace."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` split after the command name (which may hold spaces and parentheses)."""
    text = _read_small(f"/proc/{pid}/stat")
    if not text or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def _start_ticks_and_state(pid: int) -> tuple[int | None, str | None]:
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None, None
    # After "pid (comm)": field 3 (state) is fields[0], field 22 (starttime) is fields[19].
    try:
        return int(fields[19]), fields[0]
    except ValueError:
        return None, fields[0]


@dataclass(frozen=True)
class ProcessIdentity(Record):
    """A process as recorded by whoever saw it: PID, start and the namespace and boot it ran in.

    Attributes:
        pid: the process id, in ``pid_ns``.
        start_ticks: its start, clock ticks after boot (``/proc/PID/stat`` field 22); ``None``: unknown.
        create_time_s: psutil's ``create_time`` (seconds since the epoch); ``None``: unknown.
        pid_ns: the inode of its PID namespace (``/proc/PID/ns/pid``); ``None``: not recorded
            (then the reader's namespace is assumed, see :meth:`status`).
        boot_id: the boot it ran in; ``None``: not recorded.
    """

    pid: int
    start_ticks: int | None = None
    create_time_s: float | None = None
    pid_ns: int | None = None
    boot_id: str | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        """This process (cached per PID: a forked child gets its own)."""
        pid = os.getpid()
        with _current_lock:
            cached = _current.get("me")
            if cached is None or cached.pid != pid:
                cached = cls.of(pid)
                _current["me"] = cached
            return cached

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        """What can be recorded now of ``pid`` as this process numbers it (fields ``None`` where hidden or gone).

        ``pid_ns`` is the reader's namespace, the one in which the number ``pid`` means this
        process (a process in a nested namespace has another number in its own).
        """
        ticks, _state = _start_ticks_and_state(pid)
        created = _create_time(pid)
        return cls(int(pid), ticks, created if isinstance(created, float) else None, pid_namespace(), boot_id())

    def here(self) -> bool:
        """Whether this record was made in the reader's PID namespace and boot (both recorded and equal)."""
        me = ProcessIdentity.current()
        return (self.pid_ns is not None and self.boot_id is not None
                and self.pid_ns == me.pid_ns and self.boot_id == me.boot_id)

    def status(self) -> Status:
        """``"running"``, ``"gone"``, ``"unverified"`` or ``"elsewhere"``: the one rule (see the module doc).

        A record without a namespace or boot (``pid_ns``/``boot_id`` ``None``) is taken to be
        of the reader's; callers that may read records from elsewhere check :meth:`here` first.
        """
        me = ProcessIdentity.current()
        if (self.pid_ns is not None and self.pid_ns != me.pid_ns) or (
                self.boot_id is not None and self.boot_id != me.boot_id):
            return "elsewhere"
        if self.pid <= 0:
            return "gone"
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            pass  # it exists; it is another user's
        except OSError:
            return "unverified"
        ticks, state = _start_ticks_and_state(self.pid)
        if state in ("Z", "X", "x"):
            return "gone"
        if ticks is not None and self.start_ticks is not None:
            return "running" if ticks == self.start_ticks else "gone"
        created = _create_time(self.pid, zombie_is_gone=True)
        if created == "gone":
            return "gone"
        if self.start_ticks is None and self.create_time_s is None:
            return "running"  # nothing recorded to compare: a live PID is all there is to know
        if created is None or self.create_time_s is None:
            return "unverified"  # it exists, but its start time is hidden from us
        return "running" if abs(created - self.create_time_s) < CREATE_TIME_TOLERANCE_S else "gone"

    def alive(self) -> bool:
        """Not proven gone: what counting and refusing use (``"unverified"`` and ``"elsewhere"`` count)."""
        return self.status() != "gone"

    def same_process(self, other: ProcessIdentity) -> bool:
        """Whether two records name one process (same PID, namespace, boot and start)."""
        if self.pid != other.pid or self.pid_ns != other.pid_ns or self.boot_id != other.boot_id:
            return False
        if self.start_ticks is not None and other.start_ticks is not None:
            return self.start_ticks == other.start_ticks
        if self.create_time_s is not None and other.create_time_s is not None:
            return abs(self.create_time_s - other.create_time_s) < CREATE_TIME_TOLERANCE_S
        return True


_current_lock = threading.Lock()
_current: dict[str, ProcessIdentity] = {}


def _create_time(pid: int, *, zombie_is_gone: bool = False):  # type: ignore[no-untyped-def]
    """psutil's create time of ``pid``; ``None`` when hidden or gone; ``"gone"`` (only with
    ``zombie_is_gone``) when psutil proves it gone or a zombie."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if zombie_is_gone and proc.status() == psutil.STATUS_ZOMBIE:
            return "gone"
        return float(proc.create_time())
    except psutil.NoSuchProcess:
        # hidepid hides other users' processes from /proc entirely: kill(pid, 0) said it exists.
        return None
    except (psutil.Error, OSError):
        return None
