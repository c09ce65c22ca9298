"""GPU leases: advisory reservations of GPU memory that every user of the machine can see.

Our own code because it is the product: NVML says how much memory a process
*uses*, not how much a load is *about to* take, whose notebook is behind it, or
whether that notebook still wants it. No library keeps such reservations across
users who do not trust each other, so the workbench does, in plain files, with
the standard library only.

Layout: one file per lease in the shared lease folder (the setting ``lease_dir``,
by default ``workbench-leases`` in the system temp folder, sticky like ``/tmp``),
owned by its holder; GPUs are named by their NVML UUID because each user's
``CUDA_VISIBLE_DEVICES`` numbers them differently.

* :mod:`.record`: one lease, its file, and the reader that trusts nothing in it
  (owner from ``st_uid``, heartbeat from ``st_ctime``, bounded reads, validated fields);
* :mod:`.folder`: whom the folder may belong to, and every file operation in it;
* :mod:`.book`: listing, counting, the lock-free acquire, release; staleness;
* :mod:`.heartbeat`: the leases this process holds and the thread that keeps them alive;
* :mod:`.policy`: the one rule loads and engines follow (a lease, or no start).

Guarantees and limits: nobody can change, delete or forge another user's lease
(only root may delete it, or revoke it as a member of ``lease_admin_group``), a
hostile file in the folder costs its readers one warning, and what leases promise
never exceeds what a GPU has. Leases are advisory: a user can still allocate GPU
memory without one. README, "Deploying on JupyterHub", says how to isolate users.

Example:
    >>> from workbench.devices.leases import acquire, list_leases, release
    >>> lease = acquire("cuda:0", 14 * 2**30, "Mistral-7B")   # doctest: +SKIP
    >>> [l.describe() for l in list_leases()]                   # doctest: +SKIP
    ['cuda:0: 14.0 GiB leased by alice (Mistral-7B, kernel 4242, idle 0 s)']
    >>> release(lease)                                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from .book import (
    CONTENTION_S,
    STALE_AFTER_S,
    LeaseBook,
    LeaseShare,
    host_name,
    outstanding_bytes,
    resolve_gpu,
)
from .folder import LeaseFolder, is_lease_admin
from .heartbeat import HEARTBEAT_S
from .record import MAX_FILE_BYTES, VERSION, BadLeaseFile, Lease, duration_str, user_name

logger = logging.getLogger(__name__)

_book_lock = threading.Lock()
_book: LeaseBook | None = None


def get_lease_book() -> LeaseBook:
    """The process's :class:`LeaseBook` over the setting ``lease_dir`` (rebuilt if the setting changes)."""
    global _book
    from ...config import get_settings

    settings = get_settings()
    wanted = Path(settings.lease_dir).expanduser()
    with _book_lock:
        if _book is None or _book.lease_dir != wanted or _book.folder.admin_group != settings.lease_admin_group:
            old, _book = _book, LeaseBook(wanted, admin_group=settings.lease_admin_group)
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
        LeaseFolderError: the lease folder cannot be trusted or written.
    """
    return get_lease_book().acquire(device, reserved_bytes, model, check=check)


def acquire_for_pid(device: str, reserved_bytes: int, model: str, pid: int, *, check: bool = True) -> Lease:
    """Reserve memory for another process (a serving engine): stale once ``pid`` ends.

    Not heartbeated and not released at this process's exit (a detached engine
    outlives the command that started it); release it when you stop the engine.

    Raises:
        InsufficientMemoryError: it would not fit; names the holders.
    """
    return get_lease_book().acquire(device, reserved_bytes, model, pid=pid, watch="pid", check=check, hold=False)


def release(lease: Lease | str, *, force: bool = False) -> Lease | None:
    """Give back a lease (or one by id). Another user's only with ``force``, by an administrator
    (see :meth:`LeaseBook.release`)."""
    return get_lease_book().release(lease, force=force)


def list_leases(device: str | None = None) -> list[Lease]:
    """Live leases on ``device``, or on every GPU (stale and revoked ones left out)."""
    return get_lease_book().leases(device)


def leases_report(book: LeaseBook | None = None) -> dict[str, Any]:
    """``workbench leases --json`` (and the server's ``/workbench/api/leases``).

    Returns:
        ``{"lease_dir", "owner", "uid", "hub_user", "host", "time_s", "leases": [...], "stale": [...],
        "skipped": [...]}``: ``leases`` are :meth:`Lease.to_dict` of every live lease (``lease_id``,
        ``gpu_uuid``, ``device``, ``uid``, ``owner``, ``hub_user``, ``holder``, ``host``, ``pid``,
        ``process``, ``model``, ``reserved_bytes``, ``heartbeat_s``, ``heartbeat_age_s``,
        ``last_used_s``, ``idle_s``, ``watch``, ``granted``), ``device`` in this process's
        numbering when it sees the GPU; ``stale`` the same plus ``reason``, for an administrator's
        ``release --force``; ``skipped`` the files that are no lease (``file``, ``owner``, ``reason``).

    Raises:
        LeaseFolderError: the lease folder cannot be trusted.
    """
    book = book or get_lease_book()
    live, dead, listing = book.survey()
    now = book.clock()
    names: dict[str, str] = {}
    if live or dead:
        try:
            from .. import visibility

            names = {vg.uuid: vg.name for vg in visibility.visible_gpus(import_torch=False).gpus if vg.uuid}
        except (OSError, RuntimeError):
            names = {}

    def item(lease: Lease) -> dict[str, Any]:
        d = lease.to_dict(now)
        d["device"] = names.get(lease.gpu_uuid, lease.device)
        return d

    order = lambda x: (x.gpu_uuid, x.created_s, x.lease_id)  # noqa: E731
    return {
        "lease_dir": str(book.lease_dir), "owner": book.owner, "uid": book.uid, "hub_user": book.hub_user,
        "host": book.host, "time_s": now,
        "leases": [item(x) for x in sorted(live, key=order)],
        "stale": [{**item(x), "reason": why} for x, why in sorted(dead, key=lambda p: order(p[0]))],
        "skipped": [{"file": b.name, "owner": b.owner, "reason": b.reason} for b in listing.bad],
    }


__all__ = [
    "CONTENTION_S",
    "HEARTBEAT_S",
    "MAX_FILE_BYTES",
    "STALE_AFTER_S",
    "VERSION",
    "BadLeaseFile",
    "Lease",
    "LeaseBook",
    "LeaseFolder",
    "LeaseShare",
    "acquire",
    "acquire_for_pid",
    "duration_str",
    "get_lease_book",
    "host_name",
    "is_lease_admin",
    "leases_report",
    "list_leases",
    "outstanding_bytes",
    "release",
    "reset_lease_book",
    "resolve_gpu",
    "user_name",
]
