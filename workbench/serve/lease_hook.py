"""The one place serving takes and gives back GPU leases (``workbench.devices.leases``).

An engine's leases are taken for the engine's own PID (``acquire_for_pid``), so
other users see who holds the memory, and the lease is reclaimed by anyone once
that PID is gone, even if the workbench never gets to release it. They are taken
right after the engine process starts (before it allocates anything: it is still
importing) and released when it is stopped or fails to start.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..errors import LeaseError
from ..precision import is_gpu

logger = logging.getLogger(__name__)


def acquire(device_bytes: Mapping[str, int], model: str, pid: int) -> tuple[str, ...]:
    """Lease ``device_bytes[d]`` on each GPU ``d`` for the engine ``pid``; returns the lease ids.

    Raises:
        InsufficientMemoryError: a GPU's free memory, less other users' leases, is too small
            (the leases already taken here are given back).
    """
    gpus = {d: b for d, b in device_bytes.items() if is_gpu(d)}
    if not gpus:
        return ()
    from ..devices import leases

    taken: list[str] = []
    try:
        for device, nbytes in gpus.items():
            taken.append(leases.acquire_for_pid(device, int(nbytes), model, pid).lease_id)
    except BaseException:
        release(taken)
        raise
    return tuple(taken)


def release(lease_ids: tuple[str, ...] | list[str]) -> None:
    """Give back an engine's leases; ones already reclaimed (its PID ended) are skipped."""
    if not lease_ids:
        return
    from ..devices import leases

    for lease_id in lease_ids:
        try:
            leases.release(lease_id)
        except LeaseError as exc:
            logger.debug("lease %s already gone: %s", lease_id, exc)
