"""The lease book: list, count, take and give back the leases in one lease folder.

Taking a lease, with no lock anyone could hold. A lock file every user can open
is one every user can freeze (hold ``LOCK_SH`` forever and nobody takes a lease
again), so :meth:`LeaseBook.acquire` is lock-free instead:

1. write the claim, whole, as a new file (not yet granted: mode ``0444``);
2. list and read every claim on that GPU, and count every other live one, granted
   or not, against NVML's free memory;
3. it fits: mark it granted (``0644``). It does not fit even counting granted
   claims alone: delete it and refuse, naming the holders. It fits only without
   the other claims still being checked: delete it, wait a short random time, and
   try again, for at most :data:`CONTENTION_S` seconds.

Every claimant writes before it reads, so of two concurrent claimants at least
the later writer sees the other; among the claims granted, the last one written
was checked with all the others counted, so what is granted never exceeds what
the GPU offers. (A claim is never renamed or rewritten while it may be counted:
a listing is only sure to see the names that stay put during it.)

Counting. A lease promises memory its holder may not have allocated yet. What a
GPU offers is NVML's free memory (which already excludes every process's
allocations) minus, per holding process, ``max(0, leased - used)`` where ``used``
is NVML's memory for that PID, matched only where the holder's PID namespace is
the reader's: a holder is counted ``max(leased, used)`` in all, never
``leased + used``. No lease counts for more than the GPU's memory.

Stale leases: the holder is gone (checked only where its PID namespace and boot
are the reader's) or, for a kernel, no heartbeat for :data:`STALE_AFTER_S` seconds;
elsewhere the heartbeat alone decides. Every reader ignores stale leases; only
their owner deletes them (any of its workbench processes does on its next look),
or an administrator with ``workbench leases release ID --force``. An engine's lease
(``watch="pid"``) has no heartbeat of its own: its owner's workbench processes
touch it while the engine runs, so readers in other namespaces see it alive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid as uuid_module
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from ..._format import format_bytes
from ..._process_identity import ProcessIdentity
from ...errors import ConfigError, DeviceError, InsufficientMemoryError, LeaseError, LeaseNotOwnedError
from ..budget import DeviceOffer, decide_fit
from .folder import LeaseFolder, Listing, is_lease_admin
from .heartbeat import HEARTBEAT_S, Heartbeat
from .record import Lease, Watch, duration_str, is_gpu_uuid, user_name, with_reservation

logger = logging.getLogger("workbench.devices.leases")

#: A kernel's lease whose holder has not heartbeated for this long is stale (a crashed or frozen kernel).
STALE_AFTER_S = 60.0
#: Longest an acquire keeps retrying while other claims on the same GPU are still being checked.
CONTENTION_S = 10.0


def host_name() -> str:
    return socket.gethostname()


def outstanding_bytes(leases: Iterable[Lease], used: dict[int, int | None], total_bytes: int | None) -> int:
    """What ``leases`` still take from NVML's free memory: per holding process ``max(0, leased - used)``.

    ``used`` is NVML's memory per PID on the GPU; it is matched to a holder only when the
    holder's PID namespace and boot are this process's (elsewhere the PID means another
    process). No holder counts for more than ``total_bytes``.
    """
    cap = total_bytes if total_bytes else None
    by_holder: dict[tuple[Any, ...], list[Any]] = {}
    for lease in leases:
        p = lease.process
        key = (lease.uid, p.pid_ns, p.boot_id, p.pid, lease.host)
        entry = by_holder.setdefault(key, [0, lease])
        entry[0] += lease.reserved_bytes
    out = 0
    for leased, lease in by_holder.values():
        leased = min(leased, cap) if cap else leased
        already = (used.get(lease.process.pid) or 0) if lease.process.here() else 0
        out += max(0, leased - already)
    return out


@dataclass(frozen=True)
class LeaseShare:
    """One reading of a GPU, as a fit check needs it: NVML's memory and what other leases take from it.

    Read by :meth:`LeaseBook.share` (the fit) and by :meth:`LeaseBook.acquire` (the claim's check),
    both through one function (``LeaseBook._read_gpu``); a load hands the fit's reading to its
    acquire, which then reads NVML no more and lists the folder once more (see :meth:`LeaseBook.acquire`).

    Attributes:
        device: the GPU as the reader names it.
        leases: the live leases on it (others', when the reader excludes its own claim).
        outstanding_bytes: leased but not yet allocated (:func:`outstanding_bytes`);
            subtract it from NVML's free memory.
        process_used_bytes: NVML's used memory per PID on this GPU (``None``: unknown; read only
            when there are leases to match it to).
        free_bytes, total_bytes: NVML's free and total memory of the GPU at the reading (``None``: unknown).
        gpu_uuid: the GPU's UUID (what lease files are keyed by); ``None`` when not read by a book.
    """

    device: str
    leases: tuple[Lease, ...] = ()
    outstanding_bytes: int = 0
    process_used_bytes: dict[int, int | None] = field(default_factory=dict)
    free_bytes: int | None = None
    total_bytes: int | None = None
    gpu_uuid: str | None = None

    @property
    def leased_bytes(self) -> int:
        return sum(lease.reserved_bytes for lease in self.leases)

    def holders(self, now: float | None = None) -> list[str]:
        """One line per lease, largest first (see :meth:`Lease.describe`)."""
        return [lease.describe(self.device, now) for lease in sorted(self.leases, key=lambda x: -x.reserved_bytes)]

    def describe(self, now: float | None = None) -> str:
        return "; ".join(self.holders(now))


# --- device resolution ----------------------------------------------------------------------


def resolve_gpu(device: str) -> tuple[str, str]:
    """``(uuid, name)`` of a GPU given as ``"cuda:0"`` or as its UUID.

    Raises:
        DeviceNotFoundError: no such GPU in this session.
        LeaseError: the GPU has no UUID to key its leases by (no NVML), or ``device`` is a
            UUID that could not name a lease file.
    """
    from .. import visibility

    if device[:4].upper() in ("GPU-", "MIG-"):
        if not is_gpu_uuid(device) or "_" in device:
            raise LeaseError(f"{device!r} is not a GPU UUID", hint="pass a GPU-… or MIG-… UUID", device=device)
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


def _nvml_memory(device: str) -> tuple[int | None, int | None]:
    """``(free, total)`` bytes of a GPU (this process's name for it) from NVML."""
    from .. import nvml, visibility

    if device[:4].upper() in ("GPU-", "MIG-"):
        return None, None
    vg = visibility.resolve_gpu(device)
    if vg.nvml is None:
        return None, None
    total, free, _used = nvml.memory_info(vg.nvml.handle)
    return free, total


def _nvml_processes(device: str) -> dict[int, int | None]:
    from .. import nvml, visibility

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


def _totals_by_uuid() -> dict[str, int | None]:
    """The memory of every GPU this process sees, by UUID (to cap what a lease may count for)."""
    from .. import nvml, visibility

    totals: dict[str, int | None] = {}
    try:
        for vg in visibility.visible_gpus(import_torch=False).gpus:
            if vg.uuid and vg.nvml is not None:
                totals[vg.uuid] = nvml.memory_info(vg.nvml.handle)[0]
    except (OSError, RuntimeError, DeviceError):
        pass
    return totals


# --- the book --------------------------------------------------------------------------------


class LeaseBook:
    """The leases in one lease folder, and the ones this process holds there.

    Args:
        lease_dir: the shared folder; default the setting ``lease_dir``.
        clock: ``time.time`` unless a test injects its own (file stamps are the real clock's).
        hub_user: the label shown beside the owner (default ``$JUPYTERHUB_USER``); the owner
            itself is this process's uid, as the file system records it.
        host: this host's name (default :func:`host_name`), shown with each lease.
        stale_after_s: no heartbeat for this long makes a kernel's lease stale.
        memory: ``device -> (NVML free bytes, total bytes)`` (default NVML's).
        processes: ``device -> {pid: NVML used bytes}`` (default NVML's compute processes).
        heartbeat_s: seconds between heartbeats of held leases; ``None`` starts no thread
            (call :meth:`heartbeat` yourself).
        admin_group: the setting ``lease_admin_group`` (whose members may force a release).
    """

    def __init__(self, lease_dir: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time,
                 hub_user: str | None = None, host: str | None = None, stale_after_s: float = STALE_AFTER_S,
                 memory: Callable[[str], tuple[int | None, int | None]] | None = None,
                 processes: Callable[[str], dict[int, int | None]] | None = None,
                 heartbeat_s: float | None = HEARTBEAT_S, admin_group: str | None = None) -> None:
        if lease_dir is None or admin_group is None:
            from ...config import get_settings

            settings = get_settings()
            lease_dir = settings.lease_dir if lease_dir is None else lease_dir
            admin_group = settings.lease_admin_group if admin_group is None else admin_group
        self.folder = LeaseFolder(lease_dir, admin_group)
        self.lease_dir = self.folder.path
        self.clock = clock
        self.uid = os.geteuid()
        self.owner = user_name(self.uid)
        self.hub_user = hub_user if hub_user is not None else (os.environ.get("JUPYTERHUB_USER") or None)
        self.host = host or host_name()
        self.stale_after_s = stale_after_s
        self._memory = memory or _nvml_memory
        self._processes = processes or _nvml_processes
        self._heart = Heartbeat(self, heartbeat_s)

    @property
    def holder(self) -> str:
        """This process as other users see it: ``"alice"`` or ``"jovyan (hub user alice)"``."""
        if self.hub_user and self.hub_user != self.owner:
            return f"{self.owner} (hub user {self.hub_user})"
        return self.owner

    # -- reading ----------------------------------------------------------------------------

    def _listing(self, fd: int | None, gpu_uuid: str | None, now: float) -> Listing:
        if fd is None:
            return Listing()
        return self.folder.list(fd, gpu_uuid=gpu_uuid, now=now, totals=_totals_by_uuid())

    def stale_reason(self, lease: Lease, now: float | None = None) -> str | None:
        """Why ``lease`` is stale (its process is gone, or no heartbeat for a minute), else ``None``."""
        now = self.clock() if now is None else now
        if self._heart.get(lease.lease_id) is not None and lease.uid == self.uid:
            return None  # ours: alive by definition, whatever a test's clock says
        if lease.process.here():
            if not lease.process.alive():
                return f"process {lease.pid} on {lease.host} is gone"
            if lease.watch == "pid" and _runs_as(lease.pid, lease.uid):
                return None  # its engine: alive while it runs (another user's process says nothing of it)
        age = now - lease.heartbeat_s
        if age > self.stale_after_s:
            return f"no heartbeat for {duration_str(age)}"
        return None

    def _sort(self, fd: int | None, listing: Listing, now: float,
              keep: frozenset[str] = frozenset()) -> tuple[list[Lease], list[tuple[Lease, str]]]:
        """``(live, [(stale or revoked, why)])``; our own stale files are deleted (but those in
        ``keep``: a claim being checked), our engines' touched."""
        live: list[Lease] = []
        dead: list[tuple[Lease, str]] = []
        for lease in listing.leases:
            if self.folder.is_revoked(listing, lease):
                dead.append((lease, f"revoked by {user_name(listing.revoked[(lease.uid, lease.lease_id)].st_uid)}"))
                continue
            reason = self.stale_reason(lease, now)
            if reason is None:
                live.append(lease)
                if (fd is not None and lease.uid == self.uid and lease.watch == "pid"
                        and now - lease.heartbeat_s > HEARTBEAT_S and lease.process.here()):
                    with contextlib.suppress(OSError):
                        self.folder.touch(fd, lease, lease.last_used_s)
                continue
            dead.append((lease, reason))
            if fd is not None and lease.uid == self.uid and lease.lease_id not in keep:
                logger.info("removing my stale lease %s (%s): %s", lease.lease_id, lease.describe(now=now), reason)
                for old in [lease, *[x for x in listing.superseded if x.lease_id == lease.lease_id]]:
                    with contextlib.suppress(OSError, LeaseError):
                        self.folder.remove_own(fd, old.file)
        return live, dead

    def leases(self, gpu: str | None = None) -> list[Lease]:
        """Live leases on one GPU (``"cuda:0"`` or a UUID), or on every GPU, claims being checked included.

        Stale and revoked leases are left out (and this user's own stale ones deleted).

        Raises:
            LeaseFolderError: the lease folder cannot be trusted (see :mod:`.folder`).
        """
        return self.survey(gpu)[0]

    def survey(self, gpu: str | None = None) -> tuple[list[Lease], list[tuple[Lease, str]], Listing]:
        """``(live leases, [(stale lease, why)], the listing)``: what ``workbench leases`` shows."""
        uuid = resolve_gpu(gpu)[0] if gpu is not None else None
        now = self.clock()
        with self.folder.opened() as fd:
            listing = self._listing(fd, uuid, now)
            live, dead = self._sort(fd, listing, now)
        return live, dead, listing

    def share(self, device: str, *, exclude: Iterable[str] = ()) -> LeaseShare:
        """One reading of ``device``: NVML's free memory, and the other leases on it with what they
        take from that (see the module doc). One NVML memory query and one listing of the folder.

        Args:
            device: ``"cuda:0"`` (this process's numbering) or a UUID.
            exclude: lease ids not to count (a load's own leases).

        Raises:
            LeaseFolderError: the lease folder cannot be trusted (see :mod:`.folder`).
            DeviceNotFoundError: no such GPU.
        """
        uuid, name = resolve_gpu(device)
        skip = set(exclude)
        with self.folder.opened() as fd:
            return self._read_gpu(fd, uuid, name, self.clock(), skip=lambda x: x.lease_id in skip)

    def _read_gpu(self, fd: int | None, uuid: str, name: str, now: float, *,
                  nvml: LeaseShare | None = None, skip: Callable[[Lease], bool] = lambda _x: False,
                  keep: frozenset[str] = frozenset()) -> LeaseShare:
        """The one reading of a GPU, for the fit (:meth:`share`) and for a claim's check (:meth:`_refusal`).

        NVML's free and total memory (one query), unless ``nvml`` carries an earlier reading's; one
        listing of the folder's live claims on the GPU, those ``skip`` says to leave out left out;
        NVML's per-process memory, read (or taken from ``nvml``) only when there are claims to match
        it to. An earlier reading's NVML numbers stay consistent with each other: a holder's
        allocation since then lowers NVML's free memory by what it lowers the holder's outstanding
        bytes, and a claim written since (seen by this listing) is counted whole, as not yet allocated.
        """
        if nvml is not None:
            free, total, used = nvml.free_bytes, nvml.total_bytes, dict(nvml.process_used_bytes)
        else:
            (free, total), used = self._safe_memory(name), None
        listing = self.folder.list(fd, gpu_uuid=uuid, now=now, totals={uuid: total}) if fd is not None else Listing()
        live, _dead = self._sort(fd, listing, now, keep=keep)
        leases = [x for x in live if not skip(x)]
        if used is None:
            used = self._safe_processes(name) if leases else {}
        return LeaseShare(name, tuple(leases), outstanding_bytes(leases, used, total), used, free, total, uuid)

    def _safe_processes(self, name: str) -> dict[int, int | None]:
        if is_gpu_uuid(name):
            return {}
        try:
            return self._processes(name)
        except (DeviceError, OSError, RuntimeError) as exc:
            logger.debug("no per-process memory for %s: %s", name, exc)
            return {}

    def _safe_memory(self, name: str) -> tuple[int | None, int | None]:
        try:
            return self._memory(name)
        except (DeviceError, OSError, RuntimeError) as exc:
            logger.debug("no memory reading for %s: %s", name, exc)
            return None, None

    def find(self, lease_id: str) -> Lease | None:
        """The lease of that id (a unique prefix is enough) on any GPU, stale ones included; where other
        users' leases share it (anyone may pick an id in use), this user's own."""
        live, dead, _listing = self.survey()
        matches = [x for x in [*live, *(x for x, _ in dead)] if x.lease_id.startswith(lease_id)]
        if len(matches) > 1:  # anyone may pick an id already in use: the caller's own lease is the one meant
            matches = [x for x in matches if x.uid == self.uid] or matches
        return matches[0] if len(matches) == 1 else None

    # -- taking -----------------------------------------------------------------------------

    def acquire(self, device: str, reserved_bytes: int, model: str, *, pid: int | None = None,
                watch: Watch = "heartbeat", check: bool = True, hold: bool | None = None,
                reading: LeaseShare | None = None) -> Lease:
        """Reserve ``reserved_bytes`` on ``device`` for ``model``, refusing if it would not fit.

        Lock-free (see the module doc): two users racing for the last free gigabytes
        cannot both win, and nobody can make the others wait.

        The check after the claim is written is the authoritative one, and it always lists the
        folder again: every claimant writes before it reads, so that of two concurrent claimants
        the later writer sees the other; a listing made before this claim was written (the fit's,
        which sized it) cannot see a claim written after it. NVML is not read again when ``reading``
        (the fit's :meth:`share` of this GPU, made just before) is given: its memory numbers are
        consistent with each other (see ``_read_gpu``); a retry after contention reads NVML afresh.

        Args:
            device: ``"cuda:0"`` or a GPU UUID.
            reserved_bytes: bytes to reserve (the load's estimate on this GPU).
            model: the model's name, shown to other users.
            pid: the holding process (default this one).
            watch: ``"heartbeat"`` (this process heartbeats it) or ``"pid"`` (stale when ``pid`` ends).
            check: refuse when NVML free memory minus other leases is below ``reserved_bytes``.
            hold: heartbeat it and release it at exit (default: when ``pid`` is this process).
            reading: the fit's reading of this GPU (:meth:`share`), whose NVML numbers the first
                check uses; ignored when it is of another GPU.

        Raises:
            InsufficientMemoryError: it does not fit; the message names who holds what.
            LeaseFolderError: the lease folder cannot be trusted or written.
            DeviceNotFoundError: no such GPU.
            ConfigError: ``reserved_bytes`` is negative.
        """
        if isinstance(reserved_bytes, bool) or int(reserved_bytes) < 0:
            raise ConfigError(f"reserved_bytes must be >= 0, not {reserved_bytes}", reserved_bytes=reserved_bytes)
        uuid, name = resolve_gpu(device)
        if reading is not None and reading.gpu_uuid != uuid:
            reading = None
        me = ProcessIdentity.current()
        process = me if pid is None or int(pid) == me.pid else ProcessIdentity.of(int(pid))
        hold = (process.pid == me.pid) if hold is None else hold
        deadline = time.monotonic() + CONTENTION_S
        backoff_s = 0.005
        with self.folder.opened(create=True) as fd:
            assert fd is not None
            while True:
                now = self.clock()
                lease = Lease(uuid_module.uuid4().hex[:12], uuid, name, self.uid, self.owner, self.host, process,
                              model, int(reserved_bytes), now, now, hub_user=self.hub_user, watch=watch,
                              granted=not check)
                lease = replace(lease, file=lease.file_name())
                try:
                    file_fd = self.folder.create(fd, lease, granted=not check)
                except FileExistsError:
                    continue  # a name someone else took: another id
                try:
                    refusal = None if not check else self._refusal(fd, lease, reading)
                    if refusal is None:
                        if check:
                            self.folder.grant(file_fd)
                        lease = replace(lease, granted=True, heartbeat_s=os.fstat(file_fd).st_ctime)
                        break
                    self.folder.remove_own(fd, lease.file)
                    error, contended = refusal
                    if not contended or time.monotonic() > deadline:
                        raise error
                except BaseException:
                    with contextlib.suppress(OSError, LeaseError):
                        self.folder.remove_own(fd, lease.file)
                    raise
                finally:
                    os.close(file_fd)
                time.sleep(random.uniform(0, backoff_s))
                backoff_s = min(backoff_s * 2, 0.2)
                reading = None  # time has passed: the next check reads NVML again
        if hold:
            self._heart.hold(lease)
        return lease

    def _refusal(self, fd: int, lease: Lease, reading: LeaseShare | None = None,
                 ) -> tuple[InsufficientMemoryError, bool] | None:
        """``None`` when ``lease`` fits beside every other live claim on its GPU; else the error and
        whether it would fit beside the granted ones alone (then only contention refused it)."""
        now = self.clock()
        share = self._read_gpu(fd, lease.gpu_uuid, lease.device, now, nvml=reading,
                               skip=lambda x: (x.uid, x.lease_id) == (lease.uid, lease.lease_id),
                               keep=frozenset([lease.lease_id]))
        free, total = share.free_bytes, share.total_bytes
        if free is None:
            return None  # NVML cannot say: nothing to check against (the lease still tells the others)
        others, used, promised = list(share.leases), share.process_used_bytes, share.outstanding_bytes
        need = min(lease.reserved_bytes, total) if total else lease.reserved_bytes
        # The one fit rule (devices/budget.py) on this GPU's numbers: beside every other live claim...
        if decide_fit(need, [DeviceOffer(lease.device, free, leased_bytes=promised)]).fits:
            return None
        granted = [x for x in others if x.granted]
        promised_granted = outstanding_bytes(granted, used, total)
        # ... and, refused, beside the granted ones alone: if it fits there, only contention refused it.
        verdict = decide_fit(need, [DeviceOffer(lease.device, free, leased_bytes=promised_granted)])
        contended = bool(verdict.fits)
        counted = others if contended else granted
        counted_bytes = promised if contended else promised_granted
        available = max(0, free - counted_bytes) if contended else (verdict.available_bytes or 0)
        held = f"; {LeaseShare(lease.device, tuple(counted), counted_bytes, used).describe(now)}" if counted else ""
        why = ("other users are taking leases on it at this moment" if contended
               else f"only {format_bytes(available)} is free")
        error = InsufficientMemoryError(
            f"{lease.device}: {lease.model} needs {format_bytes(lease.reserved_bytes)}, {why} "
            f"({format_bytes(free)} free in NVML less {format_bytes(counted_bytes)} promised to leases){held}",
            hint="ask the holders to unload, choose another GPU, or a smaller precision "
                 "(`workbench leases` lists every lease)",
            device=lease.device, needed_bytes=lease.reserved_bytes, available_bytes=available, free_bytes=free,
            holders=[x.to_dict(now) for x in counted],
        )
        return error, contended

    def update(self, lease: Lease, *, reserved_bytes: int | None = None, last_used_s: float | None = None) -> Lease:
        """Change one of this user's leases: its bytes (once the real placement is known) or its last use.

        A new reservation is a new generation of the file (see :mod:`.record`); the older one is
        removed at the next heartbeat (at once for a lease this process does not hold).

        Raises:
            LeaseError: the lease is gone (released by an administrator, or stale); take a new one.
        """
        held = self._heart.get(lease.lease_id)
        with self.folder.opened() as fd:
            current = held.lease if held is not None else lease
            if fd is None or not self._exists(fd, current.file):
                if held is not None:
                    self._heart.drop(lease.lease_id)
                raise LeaseError(f"lease {lease.lease_id} ({lease.describe()}) is gone: it was reclaimed or released",
                                 hint="load the model again to take a new lease", lease_id=lease.lease_id)
            new = current
            if reserved_bytes is not None and int(reserved_bytes) != current.reserved_bytes:
                new = with_reservation(current, int(reserved_bytes))
                new = replace(new, file=new.file_name())
                os.close(self.folder.create(fd, new, granted=True))
                if held is not None:
                    held.superseded.append(current.file)
                else:
                    self.folder.remove_own(fd, current.file)
            last = last_used_s if last_used_s is not None else new.last_used_s
            beat = self.folder.touch(fd, new, last)
            new = replace(new, heartbeat_s=beat if beat is not None else new.heartbeat_s, last_used_s=last)
        if held is not None:
            held.lease = new
        return new

    @staticmethod
    def _exists(fd: int, file_name: str) -> bool:
        try:
            os.stat(file_name, dir_fd=fd, follow_symlinks=False)
            return True
        except FileNotFoundError:
            return False

    # -- giving back ------------------------------------------------------------------------

    def release(self, lease: Lease | str, *, force: bool = False) -> Lease | None:
        """Give a lease back; returns it, or ``None`` if it was already gone.

        Args:
            lease: the :class:`Lease` or its id (a unique prefix is enough).
            force: release another user's lease: only root or a member of ``lease_admin_group``
                (this process's real uid and groups decide, not anything in a file).

        Raises:
            LeaseNotOwnedError: another user's lease and no ``force``, or ``force`` from someone
                who is no administrator.
            LeaseError: no lease with that id, or it is ambiguous.
        """
        if isinstance(lease, str):
            found = self.find(lease)
            if found is None:
                raise LeaseError(f"no lease {lease!r} (or more than one starts with it)",
                                 hint="`workbench leases` lists them with their ids", lease_id=lease)
            lease = found
        mine = lease.uid == self.uid
        courtesy = mine and lease.hub_user and self.hub_user and lease.hub_user != self.hub_user
        if (not mine or courtesy) and not force:
            raise LeaseNotOwnedError(
                f"lease {lease.lease_id} ({lease.describe()}) belongs to {lease.holder}, not {self.holder}",
                hint=f"ask {lease.hub_user or lease.owner} to unload it; an administrator can force it "
                     f"with `workbench leases release {lease.lease_id} --force`",
                lease_id=lease.lease_id, owner=lease.owner)
        if not mine and not is_lease_admin(self.folder.admin_group):
            group = self.folder.admin_group
            raise LeaseNotOwnedError(
                f"lease {lease.lease_id} ({lease.describe()}) belongs to {lease.holder}; only root"
                + (f" or a member of the group {group!r}" if group else "") + f" may release it, and {self.owner} "
                "is neither",
                hint=f"ask {lease.hub_user or lease.owner} to unload it, or an administrator to run "
                     f"`workbench leases release {lease.lease_id} --force`",
                lease_id=lease.lease_id, owner=lease.owner)
        held = self._heart.drop(lease.lease_id) if mine else None
        now = self.clock()
        gone: Lease | None = None
        with self.folder.opened() as fd:
            if fd is None:
                return None
            listing = self.folder.list(fd, gpu_uuid=lease.gpu_uuid, now=now)
            same = [x for x in [*listing.leases, *listing.superseded]
                    if (x.uid, x.lease_id) == (lease.uid, lease.lease_id)]
            if mine:
                files = {x.file for x in same} | ({held.lease.file, *held.superseded} if held else set())
                removed = [f for f in sorted(files) if self.folder.remove_own(fd, f)]
                gone = (held.lease if held else same[0] if same else lease) if removed else None
            elif same:
                how = self.folder.remove_others(fd, same[0], [x.file for x in same])
                gone = max(same, key=lambda x: x.generation)
                logger.warning("%s force-%s %s", self.holder, "released" if how == "deleted" else "revoked",
                               gone.describe(now=now))
        return gone

    def release_all(self) -> None:
        """Release every lease this process holds (at exit; errors are logged, never raised)."""
        for held in self._heart.mine():
            try:
                self.release(held.lease)
            except (LeaseError, OSError) as exc:
                logger.debug("lease %s not released at exit: %s", held.lease.lease_id, exc)

    # -- heartbeats -------------------------------------------------------------------------

    @property
    def held(self) -> list[Lease]:
        """The leases this process holds and heartbeats."""
        return [h.lease for h in self._heart.mine()]

    def set_activity(self, lease: Lease, last_used: Callable[[], float | None]) -> None:
        """Report ``last_used()`` (a model's last generation, ``time.time()`` seconds or ``None``) with
        each heartbeat, for "idle 2 h"."""
        held = self._heart.get(lease.lease_id)
        if held is not None:
            held.activity = last_used

    def heartbeat(self) -> list[Lease]:
        """Touch every held lease (heartbeat and last use); give up those released or revoked meanwhile."""
        held = self._heart.mine()
        if not held:
            return []
        refreshed = []
        with self.folder.opened() as fd:
            for h in held:
                lease = h.lease
                if fd is None or self._revoked(fd, lease):
                    why = "the lease folder is gone" if fd is None else "an administrator revoked it"
                    logger.warning("GPU lease %s (%s) given up: %s", lease.lease_id, lease.describe(), why)
                    self._heart.drop(lease.lease_id)
                    if fd is not None:
                        for f in (lease.file, *h.superseded):
                            with contextlib.suppress(OSError, LeaseError):
                                self.folder.remove_own(fd, f)
                    continue
                for old in list(h.superseded):
                    with contextlib.suppress(OSError, LeaseError):
                        self.folder.remove_own(fd, old)
                    h.superseded.remove(old)
                last = _call(h.activity)
                last = last if last is not None else lease.last_used_s
                beat = self.folder.touch(fd, lease, last)
                if beat is None:
                    logger.warning("GPU lease %s (%s) was released by an administrator", lease.lease_id,
                                   lease.describe())
                    self._heart.drop(lease.lease_id)
                    continue
                h.lease = replace(lease, heartbeat_s=beat, last_used_s=last)
                refreshed.append(h.lease)
        return refreshed

    def _revoked(self, fd: int, lease: Lease) -> bool:
        return self.folder.revocation_of(fd, lease) is not None

    def stop(self) -> None:
        """Stop the heartbeat thread (the leases stay; :meth:`release_all` gives them back)."""
        self._heart.stop()


def _runs_as(pid: int, uid: int) -> bool:
    """Whether process ``pid`` (in the reader's namespace) runs as ``uid`` (real or effective).

    An engine's lease is judged by its PID with no heartbeat; without this, anyone could tie a
    lease to a process that is not theirs (PID 1) and keep it alive for good. ``False`` where it
    cannot be told (``hidepid``): the heartbeat its owner's workbench processes give it decides.
    """
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f.read(8192).splitlines():
                if line.startswith(b"Uid:"):
                    real, effective = (int(x) for x in line.split()[1:3])
                    return uid in (real, effective)
    except (OSError, ValueError):
        pass
    return False


def _call(fn: Callable[[], float | None] | None) -> float | None:
    if fn is None:
        return None
    try:
        value = fn()
    except (AttributeError, RuntimeError, ValueError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


__all__ = ["CONTENTION_S", "STALE_AFTER_S", "LeaseBook", "LeaseShare", "host_name", "outstanding_bytes", "resolve_gpu"]
