"""The one lease policy, for kernels' loads and engines alike: a lease per GPU, all or none, or no start.

A GPU load (``runtime/leasing.py``) and an engine start (``serve/lease_hook.py``)
both call :func:`take`. When a lease cannot be taken (the GPU is promised to
others, the lease folder belongs to someone else or cannot be written) the load or
start is refused with that typed error: going on without a lease would hide the
memory from everyone else, which is what leases exist to prevent. The one way
around it is the administrator's: ``c.WorkbenchSettings.leases_enabled = False``
(a single-user machine). CPU-only loads take no lease.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from ...errors import LeaseError
from ...precision import is_gpu
from .book import LeaseShare
from .record import Lease

logger = logging.getLogger("workbench.devices.leases")

#: Added to every refusal: the one setting that turns leases off, and who may use it.
OFF_HINT = ("on a machine with a single user an administrator may turn GPU leases off "
            "(c.WorkbenchSettings.leases_enabled = False)")


def leases_enabled() -> bool:
    """The setting ``leases_enabled`` (default on)."""
    from ...config import get_settings

    return bool(get_settings().leases_enabled)


def take(device_bytes: Mapping[str, int], model: str, *, pid: int | None = None,
         readings: Mapping[str, LeaseShare] | None = None) -> tuple[Lease, ...]:
    """Lease ``device_bytes[d]`` on each GPU ``d`` for ``model``: all of them, or none and an error.

    Args:
        device_bytes: bytes per device (``"cuda:0"``); CPUs are skipped.
        model: the model's name, shown to other users.
        pid: the engine holding the memory (its lease is judged by that PID and not
            heartbeated by this process); ``None``: this process (a kernel's load).
        readings: per GPU, the fit's reading of it (:meth:`LeaseBook.share`), handed to
            :meth:`LeaseBook.acquire` so that NVML is read once per load.

    Returns:
        The leases taken (``()`` without GPUs, or with leases turned off).

    Raises:
        InsufficientMemoryError: a GPU is promised to others; names the holders.
        LeaseFolderError, LeaseError: no lease can be taken; names the folder, its owner and why.
    """
    gpus = {d: int(b) for d, b in device_bytes.items() if is_gpu(d)}
    if not gpus or not leases_enabled():
        return ()
    from . import get_lease_book

    taken: list[Lease] = []
    device = next(iter(gpus))
    try:
        book = get_lease_book()
        for device, nbytes in gpus.items():
            reading = (readings or {}).get(device)
            if pid is None:
                taken.append(book.acquire(device, nbytes, model, reading=reading))
            else:
                taken.append(book.acquire(device, nbytes, model, pid=pid, watch="pid", hold=False, reading=reading))
    except LeaseError as exc:
        give_back(taken)
        hint = f"{exc.hint}; {OFF_HINT}" if exc.hint else OFF_HINT
        raise type(exc)(f"{model} cannot take its GPU lease on {device}: {exc.message}", hint=hint,
                        **exc.context) from None
    except BaseException:
        give_back(taken)
        raise
    return tuple(taken)


def give_back(leases: Iterable[Lease | str]) -> None:
    """Release leases (or lease ids); trouble is logged, never raised (an unload must always finish)."""
    leases = list(leases)
    if not leases:
        return
    from . import get_lease_book

    book = get_lease_book()
    for lease in leases:
        try:
            if isinstance(lease, str):
                found = book.find(lease)
                if found is None:  # an engine's lease, already stale and removed
                    logger.debug("lease %s already gone", lease)
                    continue
                lease = found
            book.release(lease)
        except (LeaseError, OSError) as exc:
            logger.warning("lease %s not released: %s", getattr(lease, "lease_id", lease), exc)
