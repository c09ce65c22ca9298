"""Loads and GPU leases: take a lease per GPU before the weights move, fit it to the real
placement once loaded, give it back on unload (and, through the lease book, at exit).

The registry calls these three functions; the leases themselves are
:mod:`workbench.devices.leases`. Leases are advisory: when the lease folder cannot be
used at all the load goes on without one (logged), but a lease refused because the GPU
is promised to others stops the load with the holders named.
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
    """Take one lease per GPU of ``spec`` (all or none).

    Raises:
        InsufficientMemoryError: a GPU is promised to other leases; the message names them.
    """
    amounts = lease_amounts(spec, fit)
    if not amounts:
        return ()
    from ..devices.leases import get_lease_book

    taken: list[Any] = []
    try:
        book = get_lease_book()
        for device, nbytes in amounts.items():
            taken.append(book.acquire(device, nbytes, model))
    except LeaseError as exc:
        logger.warning("loading %s without a GPU lease: %s", model, exc)
        give_back(taken)
        return ()
    except BaseException:
        give_back(taken)
        raise
    return tuple(taken)


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
    leases = list(leases)
    if not leases:
        return
    from ..devices.leases import get_lease_book

    book = get_lease_book()
    for lease in leases:
        try:
            book.release(lease)
        except (LeaseError, OSError) as exc:
            logger.warning("lease %s not released: %s", lease.lease_id, exc)
