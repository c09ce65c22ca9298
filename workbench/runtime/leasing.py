"""Loads and GPU leases: take a lease per GPU before the weights move, fit it to the real
placement once loaded, give it back on unload (and, through the lease book, at exit).

The registry calls these three functions; the leases themselves are
:mod:`workbench.devices.leases`, and the rule for taking them is its
:mod:`~workbench.devices.leases.policy`, the same for engines: a GPU load that cannot
take its lease is refused with the reason (the GPU promised to others, a lease folder
that cannot be trusted or written), unless an administrator turned leases off.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from ..errors import LeaseError
from ..precision import is_gpu
from .fit import FitCheck
from .spec import LoadSpec

logger = logging.getLogger(__name__)


def lease_amounts(spec: LoadSpec, fit: FitCheck | None) -> dict[str, int]:
    """Bytes to reserve on each GPU of ``spec``: what the fit rule places there.

    The rule (:func:`workbench.devices.budget.decide_fit`) spreads the weights over the
    devices in order, as accelerate fills them up to their ``max_memory``, and adds each
    device's fixed parts (CUDA context, its share of the KV cache and cache state): its
    :attr:`~workbench.devices.budget.DeviceBudget.needed_bytes`. ``{}`` without GPUs;
    zeros when there is no estimate (pickle checkpoints), so the holder is still visible.
    """
    gpus = [d for d in spec.devices if is_gpu(d)]
    if not gpus:
        return {}
    if fit is None:
        return dict.fromkeys(gpus, 0)
    budgets = {b.device: b for b in fit.budgets}
    return {d: int(budgets[d].needed_bytes) if d in budgets else 0 for d in gpus}


def take(spec: LoadSpec, fit: FitCheck | None, model: str) -> tuple[Any, ...]:
    """Take one lease per GPU of ``spec`` (all or none; none at all for a CPU load).

    Each lease's check is made against the NVML numbers of the fit's reading of its GPU
    (:attr:`FitCheck.readings`): a load reads NVML once; the lease book lists its folder
    again after writing the claim, which is what makes the claim safe (see
    :meth:`workbench.devices.leases.LeaseBook.acquire`).

    Raises:
        InsufficientMemoryError: a GPU is promised to other leases; the message names them.
        LeaseError: no lease can be taken (see :func:`workbench.devices.leases.policy.take`).
    """
    from ..devices.leases import policy

    return policy.take(lease_amounts(spec, fit), model, readings=fit.readings if fit is not None else None)


def settle(leases: Iterable[Any], loaded: Any) -> tuple[Any, ...]:
    """Fit each lease to what the load really placed on its GPU (plus its reserve) and report idle time."""
    from ..devices.leases import get_lease_book

    book = get_lease_book()
    fit = getattr(loaded, "fit", None)
    reserves = {b.device: b.reserve_bytes for b in fit.budgets} if fit is not None else {}
    placement = getattr(loaded, "placement", None) or {}
    settled = []
    for lease in leases:
        try:
            if lease.device in placement:
                lease = book.update(lease, reserved_bytes=int(placement[lease.device]) + reserves.get(lease.device, 0))
            book.set_activity(lease, lambda m=loaded: m.last_used)
        except (LeaseError, OSError) as exc:
            logger.warning("lease %s not updated: %s", lease.lease_id, exc)
        settled.append(lease)
    return tuple(settled)


def give_back(leases: Iterable[Any]) -> None:
    """Release leases; trouble is logged, never raised (an unload must always finish)."""
    from ..devices.leases import policy

    policy.give_back(leases)
