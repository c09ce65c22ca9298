"""The one place serving takes and gives back GPU leases (``workbench.devices.leases``).

An engine's leases are taken for the engine's own PID, so other users see who holds
the memory, and the lease goes stale once that PID is gone, even if the workbench
never gets to release it. They are taken right after the engine process starts
(before it allocates anything: it is still importing) and released when it is
stopped or fails to start. The rule is the one loads follow
(:mod:`workbench.devices.leases.policy`): no lease, no engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def acquire(device_bytes: Mapping[str, int], model: str, pid: int, *,
            readings: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Lease ``device_bytes[d]`` on each GPU ``d`` for the engine ``pid``; returns the lease ids.

    ``readings``: the serve plan's fit readings of its GPUs (:attr:`ServePlan.readings`), whose NVML
    numbers each lease is checked against, so that NVML is not read again (the lease folder is:
    :meth:`workbench.devices.leases.LeaseBook.acquire`).

    Raises:
        InsufficientMemoryError: a GPU's free memory, less other users' leases, is too small
            (the leases already taken here are given back).
        LeaseError: no lease can be taken (the lease folder); the caller stops the engine.
    """
    from ..devices.leases import policy

    return tuple(lease.lease_id for lease in policy.take(device_bytes, model, pid=pid, readings=readings))


def release(lease_ids: tuple[str, ...] | list[str]) -> None:
    """Give back an engine's leases; ones already gone (its PID ended) are skipped."""
    from ..devices.leases import policy

    policy.give_back(list(lease_ids))
