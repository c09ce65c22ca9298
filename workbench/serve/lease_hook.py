"""The one place serving takes and gives back GPU leases.

GPU leases (``workbench.devices.leases``, the shared-hub issue) are written in
parallel with serving. Until that module exists these calls do nothing; when it
does, they call its ``acquire(devices=, needed_bytes=, model=, owner_pid=)`` and
``release(lease_id)`` and nothing else here changes. A lease is taken for an
engine's estimated bytes before it starts, and released when it is stopped (or
fails to start).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any


def _leases() -> Any | None:
    try:
        return importlib.import_module("workbench.devices.leases")
    except ImportError:
        return None


def acquire(devices: Sequence[str], needed_bytes: int, model: str, owner_pid: int) -> str | None:
    """Lease ``needed_bytes`` on the GPUs among ``devices``; returns the lease's id, or ``None`` (no GPU,
    or leases not available). Raises what the lease module raises when the GPUs are taken."""
    gpus = [d for d in devices if d.startswith("cuda")]
    mod = _leases()
    if not gpus or mod is None or not hasattr(mod, "acquire"):
        return None
    lease = mod.acquire(devices=gpus, needed_bytes=needed_bytes, model=model, owner_pid=owner_pid)
    return str(getattr(lease, "id", lease)) if lease is not None else None


def release(lease_id: str | None) -> None:
    """Give back a lease taken by :func:`acquire` (nothing when ``lease_id`` is ``None``)."""
    mod = _leases()
    if lease_id and mod is not None and hasattr(mod, "release"):
        mod.release(lease_id)
