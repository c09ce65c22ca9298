"""GPU leases: advisory reservations of GPU memory that every user of the machine can see.

Our own code because it is the product: NVML says how much memory a process
*uses*, not how much a load is *about to* take, whose notebook is behind it, or
whether that notebook still wants it. No library keeps such reservations across
users, so the workbench does, in plain files, with nothing but the standard library.

Layout. One JSON file per GPU, named by the GPU's NVML UUID (``GPU-….json``;
UUIDs, not ``cuda:N``, because each user's ``CUDA_VISIBLE_DEVICES`` numbers GPUs
differently), in the lease directory: the setting ``lease_dir``, by default
``workbench-leases`` in the system temp folder, created with mode ``1777`` like
``/tmp`` itself (anyone may add a file, only its owner may delete or rename it).
Because of that sticky bit a file is never replaced by rename: it is rewritten in
place under an exclusive :func:`fcntl.flock` (readers take a shared one), and made
mode ``0666`` so every user can update the leases in it. An existing file is
opened without ``O_CREAT``, which ``fs.protected_regular`` refuses for another
user's file in a sticky folder.

Each lease holds who (owner: ``$JUPYTERHUB_USER``, else the OS user), where (host,
PID and the PID's start time, so a recycled PID does not keep a dead kernel's
lease), what (model name, bytes reserved) and a heartbeat. A kernel heartbeats its
leases every :data:`HEARTBEAT_S` seconds from one daemon thread, releases them on
unload and at exit (``atexit``). A lease is *stale*, and anyone reclaims it, when
its process is gone (same host), or when it has not heartbeated for
:data:`STALE_AFTER_S` seconds (a frozen or crashed kernel). Leases taken for a
serving engine's PID (:func:`acquire_for_pid`) are watched by PID only.

Counting. A lease promises memory its holder may not have allocated yet. The
memory a device offers is NVML's free memory (which already excludes every
process's allocations) minus, per holding process, ``max(0, leased - used)``
where ``used`` is NVML's memory for that PID on that GPU: a holder is counted
``max(leased, used)`` in all, never ``leased + used``.

Nobody releases another user's lease: :func:`release` refuses with
:class:`~workbench.errors.LeaseNotOwnedError` unless ``force=True``, the
administrator's explicit override (``workbench leases release ID --force``).

Example:
    >>> from workbench.devices.leases import acquire, list_leases, release
    >>> lease = acquire("cuda:0", 14 * 2**30, "Mistral-7B")   # doctest: +SKIP
    >>> [l.describe() for l in list_leases()]                   # doctest: +SKIP
    ['cuda:0: 14.0 GiB leased by alice (Mistral-7B, kernel 4242, idle 0 s)']
    >>> release(lease)                                          # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import getpass
import json
import logging
import os
import socket
import stat
import threading
import time
import uuid as uuid_module
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .._format import format_bytes
from .._records import Record
from ..errors import ConfigError, DeviceError, InsufficientMemoryError, LeaseError, LeaseNotOwnedError
from .budget import DeviceOffer, decide_fit

logger = logging.getLogger(__name__)

#: Seconds between heartbeats of a kernel's leases.
HEARTBEAT_S = 15.0
#: A lease whose holder has not heartbeated for this long is stale (a crashed or frozen kernel).
STALE_AFTER_S = 60.0
#: The lease files' format version.
VERSION = 1

Watch = Literal["heartbeat", "pid"]


def owner_name() -> str:
    """Who holds leases taken by this process: ``$JUPYTERHUB_USER``, else the OS user."""
    hub = os.environ.get("JUPYTERHUB_USER")
    if hub:
        return hub
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return f"uid{os.getuid()}"


def host_name() -> str:
    return socket.gethostname()


def duration_str(seconds: float | None) -> str:
    """``7200 -> '2 h'``, ``1800 -> '30 min'``, ``12 -> '12 s'``: for "idle 2 h".

    Example:
        >>> duration_str(7200), duration_str(1800), duration_str(12.4)
        ('2 h', '30 min', '12 s')
    """
    if seconds is None:
        return "N/A"
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.0f} h"
    return f"{s / 86400:.0f} d"


def process_start_s(pid: int) -> float | None:
    """When ``pid`` started (``psutil``'s create time), or ``None`` if it is gone or hidden."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(proc.create_time())
    except (psutil.Error, OSError):
        return None


def process_alive(pid: int, start_s: float | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start_s`` (not a recycled PID)."""
    import psutil

    # The signal-0 probe first: /proc mounted with hidepid hides other users' processes from
    # psutil, which must not make their kernels look dead.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists and is someone else's; its start time may be hidden from us
    except OSError:
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, OSError):
        return True  # exists, but we may not look at it: not ours to call dead
    return start_s is None or abs(created - start_s) < 1.0


@dataclass(frozen=True)
class Lease(Record):
    """One reservation of memory on one GPU.

    Attributes:
        lease_id: unique id (12 hex digits); what ``workbench leases release`` takes.
        gpu_uuid: NVML's UUID of the GPU (``"GPU-…"`` or ``"MIG-…"``).
        device: the holder's name for the GPU (``"cuda:0"``); others may number it differently.
        owner: ``$JUPYTERHUB_USER`` or the OS user of the holder.
        host: the holder's host name.
        pid: the holding process (a kernel, or a serving engine).
        pid_start_s: that process's start time, to tell a recycled PID apart.
        model: the model the memory is for.
        reserved_bytes: bytes reserved on this GPU.
        created_s, heartbeat_s: ``time.time()`` stamps of the acquire and the last heartbeat.
        last_used_s: when the model last generated (``None``: not known; idle since ``created_s``).
        watch: ``"heartbeat"`` (a kernel that heartbeats) or ``"pid"`` (a process watched by PID only).
    """

    lease_id: str
    gpu_uuid: str
    device: str
    owner: str
    host: str
    pid: int
    model: str
    reserved_bytes: int
    created_s: float
    heartbeat_s: float
    pid_start_s: float | None = None
    last_used_s: float | None = None
    watch: Watch = "heartbeat"

    @property
    def reserved_str(self) -> str:
        return format_bytes(self.reserved_bytes)

    def idle_s(self, now: float | None = None) -> float:
        """Seconds since the model last generated (or since the lease was taken)."""
        now = time.time() if now is None else now
        return max(0.0, now - (self.last_used_s if self.last_used_s is not None else self.created_s))

    def heartbeat_age_s(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        return max(0.0, now - self.heartbeat_s)

    def describe(self, device: str | None = None, now: float | None = None) -> str:
        """``"cuda:0: 30.1 GiB leased by alice (Mixtral-8x7B, kernel 4242, idle 2 h)"``.

        Args:
            device: the GPU's name in the reader's numbering (default: the holder's).
        """
        who = "kernel" if self.watch == "heartbeat" else "process"
        return (f"{device or self.device}: {self.reserved_str} leased by {self.owner} "
                f"({self.model}, {who} {self.pid}, idle {duration_str(self.idle_s(now))})")

    def to_dict(self, now: float | None = None) -> dict[str, Any]:
        """JSON-ready: the fields plus ``idle_s`` and ``heartbeat_age_s`` (``workbench leases --json``)."""
        d = super().to_dict()
        d["idle_s"] = self.idle_s(now)
        d["heartbeat_age_s"] = self.heartbeat_age_s(now)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lease:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class LeaseShare:
    """What other leases take from one GPU, as a fit check needs it.

    Attributes:
        device: the GPU as the reader names it.
        leases: the live leases on it.
        outstanding_bytes: leased but not yet allocated: per holding process,
            ``max(0, leased - NVML used by that PID)``; subtract it from NVML's free memory.
        process_used_bytes: NVML's used memory per PID on this GPU (``None``: unknown).
    """

    device: str
    leases: tuple[Lease, ...] = ()
    outstanding_bytes: int = 0
    process_used_bytes: dict[int, int | None] = field(default_factory=dict)

    @property
    def leased_bytes(self) -> int:
        return sum(lease.reserved_bytes for lease in self.leases)

    def holders(self, now: float | None = None) -> list[str]:
        """One line per lease, largest first (see :meth:`Lease.describe`)."""
        return [lease.describe(self.device, now) for lease in sorted(self.leases, key=lambda x: -x.reserved_bytes)]

    def describe(self, now: float | None = None) -> str:
        return "; ".join(self.holders(now))


# --- device resolution ----------------------------------------------------------------------


def _is_uuid(device: str) -> bool:
    return device[:4].upper() in ("GPU-", "MIG-")


def resolve_gpu(device: str) -> tuple[str, str]:
    """``(uuid, name)`` of a GPU given as ``"cuda:0"`` or as its UUID.

    Raises:
        DeviceNotFoundError: no such GPU in this session.
        LeaseError: the GPU has no UUID to key its lease file by (no NVML, torch too old).
    """
    from . import visibility

    if _is_uuid(device):
        try:
            for vg in visibility.visible_gpus(import_torch=False).gpus:
                if vg.uuid and vg.uuid.lower() == device.lower():
                    return vg.uuid, vg.name
        except (OSError, RuntimeError):
            pass
        return device, device
    vg = visibility.resolve_gpu(device)
    if not vg.uuid:
        raise LeaseError(f"{vg.name} has no UUID (NVML unavailable), so its lease cannot be shared with other users",
                         hint="install the NVIDIA driver's NVML (nvidia-ml-py) to use GPU leases", device=vg.name)
    return vg.uuid, vg.name


def _nvml_free(device: str) -> int | None:
    from .inventory import memory_free_bytes

    return memory_free_bytes(device)


def _nvml_processes(device: str) -> dict[int, int | None]:
    from . import nvml, visibility

    vg = visibility.resolve_gpu(device)
    if vg.nvml is None:
        return {}
    found: dict[int, int | None] = {}
    for pid, used in nvml.compute_processes(vg.nvml.handle) or []:
        if used is None:  # NVML cannot attribute memory (MIG): count the lease in full
            found.setdefault(pid, None)
        else:
            found[pid] = (found.get(pid) or 0) + used
    return found


# --- the lease book --------------------------------------------------------------------------


def ensure_lease_dir(path: Path) -> Path:
    """Create the shared lease folder with mode 1777 if missing; refuse a symlink or a file there.

    Raises:
        LeaseError: the path is not a usable folder.
    """
    try:
        os.mkdir(path, 0o777)
        os.chmod(path, 0o1777)  # mkdir's mode goes through the umask; chmod does not
    except FileExistsError:
        pass
    except OSError as exc:
        raise LeaseError(f"cannot create the lease folder {path}: {exc.strerror or exc}",
                         hint="set lease_dir (WORKBENCH_LEASE_DIR) to a folder every user may write", path=path) from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise LeaseError(f"the lease folder {path} is not a folder (a link or a file)",
                         hint="remove it, or set lease_dir (WORKBENCH_LEASE_DIR) elsewhere", path=path)
    return path


class LeaseBook:
    """The leases in one lease folder, and the ones this process holds there.

    Args:
        lease_dir: the shared folder; default the setting ``lease_dir``.
        clock: ``time.time`` unless a test injects its own.
        owner, host: who this process is (default :func:`owner_name`, :func:`host_name`).
        stale_after_s: no heartbeat for this long makes a lease stale.
        free: ``device -> NVML free bytes`` (default the inventory's).
        processes: ``device -> {pid: NVML used bytes}`` (default NVML's compute processes).
        heartbeat_s: seconds between heartbeats of held leases; ``None`` starts no thread
            (call :meth:`heartbeat` yourself).
    """

    def __init__(self, lease_dir: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time,
                 owner: str | None = None, host: str | None = None, stale_after_s: float = STALE_AFTER_S,
                 free: Callable[[str], int | None] | None = None,
                 processes: Callable[[str], dict[int, int | None]] | None = None,
                 heartbeat_s: float | None = HEARTBEAT_S) -> None:
        if lease_dir is None:
            from ..config import get_settings

            lease_dir = get_settings().lease_dir
        self.lease_dir = Path(lease_dir).expanduser()
        self.clock = clock
        self.owner = owner or owner_name()
        self.host = host or host_name()
        self.stale_after_s = stale_after_s
        self._free = free or _nvml_free
        self._processes = processes or _nvml_processes
        self.heartbeat_interval_s = heartbeat_s
        self._lock = threading.RLock()
        self._held: dict[str, Lease] = {}
        self._activity: dict[str, Callable[[], float | None]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._atexit = False

    # -- files ----------------------------------------------------------------------------

    def path_for(self, gpu_uuid: str) -> Path:
        """The lease file of one GPU (``<lease_dir>/<uuid>.json``).

        Raises:
            LeaseError: ``gpu_uuid`` is not a GPU or MIG UUID (it would name another path).
        """
        if not _is_uuid(gpu_uuid) or "/" in gpu_uuid or "\0" in gpu_uuid:
            raise LeaseError(f"{gpu_uuid!r} is not a GPU UUID", hint="pass a GPU-… or MIG-… UUID", device=gpu_uuid)
        return self.lease_dir / f"{gpu_uuid}.json"

    def _open_fd(self, path: Path, write: bool) -> int:
        flags = (os.O_RDWR if write else os.O_RDONLY) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(3):
            try:
                return os.open(path, flags)
            except FileNotFoundError:
                if not write:
                    raise
            try:  # create it ourselves, world-writable, so other users can add their leases
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o666)
                with contextlib.suppress(OSError):
                    os.fchmod(fd, 0o666)
                return fd
            except FileExistsError:
                continue  # another process created it between our two opens
        raise LeaseError(f"cannot open the lease file {path}", path=path)

    @contextlib.contextmanager
    def _locked(self, gpu_uuid: str, write: bool) -> Iterator[tuple[list[Lease], Callable[[list[Lease]], None]]]:
        """The leases in one GPU's file, under ``flock``; ``save(leases)`` rewrites the file in place."""
        path = self.path_for(gpu_uuid)
        if write:
            ensure_lease_dir(self.lease_dir)
        try:
            fd = self._open_fd(path, write)
        except FileNotFoundError:
            yield [], _read_only
            return
        except OSError as exc:
            if isinstance(exc, LeaseError):
                raise
            hint = ("ask its owner or an administrator to run `chmod 666` on it" if exc.errno in (errno.EACCES, errno.EPERM)
                    else "check the lease folder (setting lease_dir)")
            raise LeaseError(f"cannot {'update' if write else 'read'} the lease file {path}: {exc.strerror or exc}",
                             hint=hint, path=path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            leases = _parse(path, _read_all(fd))

            def save(new: list[Lease]) -> None:
                data = json.dumps({"version": VERSION, "gpu_uuid": gpu_uuid,
                                   "leases": [asdict(x) for x in new]}, indent=1).encode()
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)

            yield leases, save
        finally:
            os.close(fd)  # closing drops the flock

    def _gpu_uuids(self) -> list[str]:
        try:
            names = sorted(p.name for p in self.lease_dir.iterdir())
        except OSError:
            return []
        return [n[:-5] for n in names if n.endswith(".json") and _is_uuid(n)]

    # -- staleness ----------------------------------------------------------------------------

    def stale_reason(self, lease: Lease, now: float | None = None) -> str | None:
        """Why ``lease`` is stale (its process is gone, or no heartbeat for a minute), else ``None``."""
        now = self.clock() if now is None else now
        if lease.lease_id in self._held:
            return None  # ours: alive by definition, whatever a test's clock says
        if lease.host == self.host and not process_alive(lease.pid, lease.pid_start_s):
            return f"process {lease.pid} on {lease.host} is gone"
        if lease.watch == "heartbeat" and now - lease.heartbeat_s > self.stale_after_s:
            return f"no heartbeat for {duration_str(now - lease.heartbeat_s)}"
        return None

    def _live(self, leases: list[Lease], now: float) -> tuple[list[Lease], list[Lease]]:
        live, stale = [], []
        for lease in leases:
            reason = self.stale_reason(lease, now)
            (stale if reason else live).append(lease)
            if reason:
                logger.info("reclaiming stale lease %s (%s): %s", lease.lease_id, lease.describe(now=now), reason)
        return live, stale

    # -- reading --------------------------------------------------------------------------

    def leases(self, gpu: str | None = None, *, reclaim: bool = True) -> list[Lease]:
        """Live leases on one GPU (``"cuda:0"`` or a UUID), or on every GPU with a lease file.

        Stale leases are left out, and with ``reclaim`` removed from their files too.

        Raises:
            LeaseError: a lease file cannot be read.
        """
        uuids = [resolve_gpu(gpu)[0]] if gpu is not None else self._gpu_uuids()
        now = self.clock()
        found: list[Lease] = []
        for u in uuids:
            writable = reclaim and os.access(self.lease_dir, os.W_OK)
            try:
                with self._locked(u, write=writable and self.path_for(u).exists()) as (leases, save):
                    live, stale = self._live(leases, now)
                    if stale and save is not _read_only:
                        save(live)
            except LeaseError:
                if not writable:
                    raise
                with self._locked(u, write=False) as (leases, _save):  # someone else's file we may only read
                    live, _stale = self._live(leases, now)
            found.extend(live)
        return found

    def reclaim_stale(self) -> list[Lease]:
        """Remove every stale lease from every file; returns them.

        Raises:
            LeaseError: the lease folder or a lease file cannot be used.
        """
        now = self.clock()
        gone: list[Lease] = []
        for u in self._gpu_uuids():
            with self._locked(u, write=True) as (leases, save):
                live, stale = self._live(leases, now)
                if stale:
                    save(live)
                    gone.extend(stale)
        return gone

    def share(self, device: str, *, exclude: Iterable[str] = ()) -> LeaseShare:
        """Other leases on ``device`` and what they take from its NVML free memory (see the module doc).

        Args:
            device: ``"cuda:0"`` (this process's numbering) or a UUID.
            exclude: lease ids not to count (a load's own leases).
        """
        uuid, name = resolve_gpu(device)
        leases = [x for x in self.leases(uuid) if x.lease_id not in set(exclude)]
        return self._share(name, leases, self._safe_processes(name) if leases else {})

    def _safe_processes(self, name: str) -> dict[int, int | None]:
        try:
            return self._processes(name)
        except (DeviceError, OSError, RuntimeError) as exc:
            logger.debug("no per-process memory for %s: %s", name, exc)
            return {}

    def _share(self, name: str, leases: list[Lease], used: dict[int, int | None]) -> LeaseShare:
        by_pid: dict[tuple[str, int], int] = {}
        for lease in leases:
            key = (lease.host, lease.pid)
            by_pid[key] = by_pid.get(key, 0) + lease.reserved_bytes
        outstanding = 0
        for (host, pid), leased in by_pid.items():
            # A holder on another host is in another PID namespace: nothing to match it with.
            already = (used.get(pid) or 0) if host == self.host else 0
            outstanding += max(0, leased - already)
        return LeaseShare(name, tuple(leases), outstanding, dict(used))

    # -- writing --------------------------------------------------------------------------

    def acquire(self, device: str, reserved_bytes: int, model: str, *, pid: int | None = None,
                watch: Watch = "heartbeat", check: bool = True, hold: bool | None = None) -> Lease:
        """Reserve ``reserved_bytes`` on ``device`` for ``model``, refusing if it would not fit.

        The check and the write happen under the GPU file's exclusive lock, so two
        users racing for the last free gigabytes cannot both win.

        Args:
            device: ``"cuda:0"`` or a GPU UUID.
            reserved_bytes: bytes to reserve (the load's estimate on this GPU).
            model: the model's name, shown to other users.
            pid: the holding process (default this one).
            watch: ``"heartbeat"`` (this process heartbeats it) or ``"pid"`` (reclaimed when ``pid`` ends).
            check: refuse when NVML free memory minus other leases is below ``reserved_bytes``.
            hold: heartbeat it and release it at exit (default: when ``pid`` is this process).

        Raises:
            InsufficientMemoryError: it does not fit; the message names who holds what.
            LeaseError: the lease folder or file cannot be used.
            DeviceNotFoundError: no such GPU.
            ConfigError: ``reserved_bytes`` is negative.
        """
        if reserved_bytes < 0:
            raise ConfigError(f"reserved_bytes must be >= 0, not {reserved_bytes}", reserved_bytes=reserved_bytes)
        uuid, name = resolve_gpu(device)
        pid = os.getpid() if pid is None else int(pid)
        hold = (pid == os.getpid()) if hold is None else hold
        free = None
        if check:
            try:
                free = self._free(name) if not _is_uuid(name) else None
            except DeviceError:
                free = None
        used = self._safe_processes(name) if check and not _is_uuid(name) else {}
        now = self.clock()
        lease = Lease(uuid_module.uuid4().hex[:12], uuid, name, self.owner, self.host, pid, model,
                      int(reserved_bytes), now, now, pid_start_s=process_start_s(pid), watch=watch)
        with self._locked(uuid, write=True) as (leases, save):
            live, _stale = self._live(leases, now)
            if free is not None:
                share = self._share(name, live, used)
                # The one fit rule (devices/budget.py), on this GPU's numbers as they stand under the lock.
                verdict = decide_fit(int(reserved_bytes), [DeviceOffer(name, free, leased_bytes=share.outstanding_bytes)])
                available = verdict.available_bytes or 0
                if not verdict.fits:
                    save(live)
                    held = f"; {share.describe(now)}" if share.leases else ""
                    raise InsufficientMemoryError(
                        f"{name}: {model} needs {format_bytes(reserved_bytes)}, only {format_bytes(available)} "
                        f"is free ({format_bytes(free)} free in NVML less {format_bytes(share.outstanding_bytes)} "
                        f"promised to leases){held}",
                        hint="ask the holders to unload, choose another GPU, or a smaller precision "
                             "(`workbench leases` lists every lease)",
                        device=name, needed_bytes=int(reserved_bytes), available_bytes=available, free_bytes=free,
                        holders=[x.to_dict(now) for x in share.leases],
                    )
            save([*live, lease])
        if hold:
            self._hold(lease)
        return lease

    def update(self, lease: Lease, *, reserved_bytes: int | None = None, last_used_s: float | None = None) -> Lease:
        """Change a held lease's bytes (once the real placement is known) or its last use.

        Raises:
            LeaseError: the lease is gone (reclaimed as stale); take a new one.
        """
        changes: dict[str, Any] = {"heartbeat_s": self.clock()}
        if reserved_bytes is not None:
            changes["reserved_bytes"] = int(reserved_bytes)
        if last_used_s is not None:
            changes["last_used_s"] = float(last_used_s)
        with self._locked(lease.gpu_uuid, write=True) as (leases, save):
            for i, x in enumerate(leases):
                if x.lease_id == lease.lease_id:
                    new = replace(x, **changes)
                    leases[i] = new
                    save(leases)
                    break
            else:
                raise LeaseError(f"lease {lease.lease_id} ({lease.describe()}) is gone: it was reclaimed",
                                 hint="load the model again to take a new lease", lease_id=lease.lease_id)
        with self._lock:
            if new.lease_id in self._held:
                self._held[new.lease_id] = new
        return new

    def find(self, lease_id: str) -> Lease | None:
        """The live lease of that id (a unique prefix is enough), on any GPU."""
        matches = [x for x in self.leases() if x.lease_id.startswith(lease_id)]
        return matches[0] if len(matches) == 1 else None

    def release(self, lease: Lease | str, *, force: bool = False) -> Lease | None:
        """Give a lease back; returns it, or ``None`` if it was already gone.

        Args:
            lease: the :class:`Lease` or its id (a unique prefix is enough).
            force: release another user's lease (an administrator's explicit decision).

        Raises:
            LeaseNotOwnedError: the lease is another user's and ``force`` is not set.
            LeaseError: no lease with that id, or it is ambiguous.
        """
        if isinstance(lease, str):
            found = self.find(lease)
            if found is None:
                raise LeaseError(f"no lease {lease!r} (or more than one starts with it)",
                                 hint="`workbench leases` lists them with their ids", lease_id=lease)
            lease = found
        if lease.owner != self.owner and not force:
            raise LeaseNotOwnedError(
                f"lease {lease.lease_id} ({lease.describe()}) belongs to {lease.owner}, not {self.owner}",
                hint=f"ask {lease.owner} to unload it; a hub administrator can force it "
                     f"with `workbench leases release {lease.lease_id} --force`",
                lease_id=lease.lease_id, owner=lease.owner)
        gone = None
        with self._locked(lease.gpu_uuid, write=True) as (leases, save):
            keep = [x for x in leases if x.lease_id != lease.lease_id]
            if len(keep) != len(leases):
                gone = next(x for x in leases if x.lease_id == lease.lease_id)
                save(keep)
        with self._lock:
            self._held.pop(lease.lease_id, None)
            self._activity.pop(lease.lease_id, None)
        if gone is not None and force and lease.owner != self.owner:
            logger.warning("%s force-released %s", self.owner, gone.describe())
        return gone

    def release_all(self) -> None:
        """Release every lease this process holds (at exit; errors are logged, never raised)."""
        with self._lock:
            # A forked child inherits this book and its atexit hook, not the parent's leases.
            held = [x for x in self._held.values() if x.pid == os.getpid()]
        for lease in held:
            try:
                self.release(lease)
            except (LeaseError, OSError) as exc:
                logger.debug("lease %s not released at exit: %s", lease.lease_id, exc)

    # -- heartbeats -----------------------------------------------------------------------

    @property
    def held(self) -> list[Lease]:
        """The leases this process holds and heartbeats."""
        with self._lock:
            return list(self._held.values())

    def set_activity(self, lease: Lease, last_used: Callable[[], float | None]) -> None:
        """Report ``last_used()`` (a model's last generation) with each heartbeat, for "idle 2 h".

        ``last_used()`` returns seconds since the epoch (``time.time()``), or ``None`` when unknown;
        it becomes the lease's ``last_used_s``.
        """
        with self._lock:
            self._activity[lease.lease_id] = last_used

    def _hold(self, lease: Lease) -> None:
        with self._lock:
            self._held[lease.lease_id] = lease
            if not self._atexit:
                ref = weakref.ref(self)
                atexit.register(lambda: (book := ref()) is not None and book.release_all())
                self._atexit = True
            if self.heartbeat_interval_s and (self._thread is None or not self._thread.is_alive()):
                self._stop.clear()
                self._thread = threading.Thread(target=self._beat, name="workbench-lease-heartbeat", daemon=True)
                self._thread.start()

    def _beat(self) -> None:
        interval = self.heartbeat_interval_s or HEARTBEAT_S
        while not self._stop.wait(interval):
            with self._lock:
                if not self._held:
                    self._thread = None
                    return
            self.heartbeat()

    def heartbeat(self) -> list[Lease]:
        """Refresh the heartbeat (and last use) of every held lease; drops those reclaimed meanwhile."""
        now = self.clock()
        with self._lock:
            held = dict(self._held)
            activity = dict(self._activity)
        by_gpu: dict[str, list[Lease]] = {}
        for lease in held.values():
            by_gpu.setdefault(lease.gpu_uuid, []).append(lease)
        refreshed = []
        for uuid, mine in by_gpu.items():
            ids = {x.lease_id for x in mine}
            try:
                with self._locked(uuid, write=True) as (leases, save):
                    present = set()
                    for i, x in enumerate(leases):
                        if x.lease_id in ids:
                            last = _call(activity.get(x.lease_id))
                            leases[i] = replace(x, heartbeat_s=now,
                                                last_used_s=last if last is not None else x.last_used_s)
                            present.add(x.lease_id)
                            refreshed.append(leases[i])
                    save(leases)
            except (LeaseError, OSError) as exc:
                logger.debug("heartbeat of %s failed: %s", uuid, exc)
                continue
            with self._lock:
                for lease_id in ids - present:
                    logger.warning("lease %s was reclaimed by another process", lease_id)
                    self._held.pop(lease_id, None)
                for x in refreshed:
                    if x.lease_id in self._held:
                        self._held[x.lease_id] = x
        return refreshed

    def stop(self) -> None:
        """Stop the heartbeat thread (the leases stay; :meth:`release_all` gives them back)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None


def _read_only(_leases: list[Lease]) -> None:
    raise LeaseError("the lease file was opened read-only")


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _parse(path: Path, raw: bytes) -> list[Lease]:
    if not raw.strip():
        return []
    try:
        data = json.loads(raw)
        return [Lease.from_dict(d) for d in data.get("leases", [])]
    except (ValueError, TypeError, AttributeError) as exc:
        # A torn write (a holder killed mid-write): the leases in it are lost, and re-taken on next heartbeat.
        logger.warning("lease file %s is damaged (%s); treating it as empty", path, exc)
        return []


def _call(fn: Callable[[], float | None] | None) -> float | None:
    if fn is None:
        return None
    try:
        return fn()
    except (AttributeError, RuntimeError, ValueError):
        return None


# --- the process's book and the small API -----------------------------------------------------

_book_lock = threading.Lock()
_book: LeaseBook | None = None


def get_lease_book() -> LeaseBook:
    """The process's :class:`LeaseBook` over the setting ``lease_dir`` (rebuilt if the setting changes)."""
    global _book
    from ..config import get_settings

    wanted = Path(get_settings().lease_dir).expanduser()
    with _book_lock:
        if _book is None or _book.lease_dir != wanted:
            old, _book = _book, LeaseBook(wanted)
            if old is not None and old.held:
                logger.warning("lease_dir changed to %s; leases held in %s stay until exit", wanted, old.lease_dir)
        return _book


def reset_lease_book() -> None:
    """Release what the process's book holds and forget it (tests use this)."""
    global _book
    with _book_lock:
        old, _book = _book, None
    if old is not None:
        old.stop()
        old.release_all()


def acquire(device: str, reserved_bytes: int, model: str, *, check: bool = True) -> Lease:
    """Reserve ``reserved_bytes`` on ``device`` (``"cuda:0"`` or a UUID) for ``model``, held by this process.

    Heartbeated while held, released by :func:`release` or at exit. See :meth:`LeaseBook.acquire`.

    Raises:
        InsufficientMemoryError: it would not fit; names the holders.
        LeaseError: the lease folder cannot be used.
    """
    return get_lease_book().acquire(device, reserved_bytes, model, check=check)


def acquire_for_pid(device: str, reserved_bytes: int, model: str, pid: int, *, check: bool = True) -> Lease:
    """Reserve memory for another process (a serving engine): reclaimed when ``pid`` ends.

    Not heartbeated and not released at this process's exit (a detached engine
    outlives the command that started it); release it when you stop the engine.

    Raises:
        InsufficientMemoryError: it would not fit; names the holders.
    """
    return get_lease_book().acquire(device, reserved_bytes, model, pid=pid, watch="pid", check=check, hold=False)


def release(lease: Lease | str, *, force: bool = False) -> Lease | None:
    """Give back a lease (or one by id). Another user's only with ``force`` (see :meth:`LeaseBook.release`)."""
    return get_lease_book().release(lease, force=force)


def list_leases(device: str | None = None) -> list[Lease]:
    """Live leases on ``device``, or on every GPU; stale ones are reclaimed on the way."""
    return get_lease_book().leases(device)


def leases_report(book: LeaseBook | None = None) -> dict[str, Any]:
    """``workbench leases --json`` (and the server's ``/workbench/api/leases``).

    Returns:
        ``{"lease_dir": str, "owner": str, "host": str, "time_s": float, "leases": [Lease.to_dict(), …]}``,
        each lease with ``lease_id``, ``gpu_uuid``, ``device``, ``owner``, ``host``, ``pid``, ``model``,
        ``reserved_bytes``, ``heartbeat_s``, ``heartbeat_age_s``, ``last_used_s``, ``idle_s``, ``watch``…;
        ``device`` is this process's name for the GPU when it sees it, else the holder's.
    """
    book = book or get_lease_book()
    now = book.clock()
    leases = book.leases()
    names: dict[str, str] = {}
    if leases:
        try:
            from . import visibility

            names = {vg.uuid: vg.name for vg in visibility.visible_gpus(import_torch=False).gpus if vg.uuid}
        except (OSError, RuntimeError):
            names = {}
    items = []
    for lease in sorted(leases, key=lambda x: (x.gpu_uuid, x.created_s)):
        d = lease.to_dict(now)
        d["device"] = names.get(lease.gpu_uuid, lease.device)
        items.append(d)
    return {"lease_dir": str(book.lease_dir), "owner": book.owner, "host": book.host, "time_s": now, "leases": items}
