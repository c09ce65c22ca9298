"""Roofline metrics of a generation: how close decoding came to the memory bandwidth.

Decoding a token reads every weight once, so ``weight bytes x tokens/s`` is the
memory bandwidth the run achieved, and its ratio to the devices' measured bandwidth
(:func:`workbench.runtime.measure_bandwidth`) is the decode efficiency.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import LoadedModel

logger = logging.getLogger(__name__)

#: Below this many weight bytes the weights sit in CPU/GPU caches and the memory
#: roofline does not apply, so no decode efficiency is reported.
ROOFLINE_MIN_BYTES = 64 * 2**20


def device_bandwidth(loaded: LoadedModel) -> float | None:
    """The devices' combined bandwidth, weighted by where the weights are: a decode step
    reads each device's share at that device's speed, one after the other."""
    from .bandwidth import measure_bandwidth

    total_time = 0.0
    total_bytes = 0
    for device, nbytes in loaded.placement.items():
        if not nbytes:
            continue
        try:
            bw = measure_bandwidth(device)
        except (RuntimeError, ValueError, OSError) as exc:
            logger.debug("bandwidth of %s unavailable: %s", device, exc)
            return None
        if not bw:
            return None
        total_time += nbytes / bw
        total_bytes += nbytes
    return total_bytes / total_time if total_time else None


def roofline(loaded: LoadedModel, tokens_per_s: float) -> tuple[int, float, float | None, float | None]:
    """``(weight_bytes, achieved_bytes_per_s, bandwidth_bytes_per_s, decode_efficiency)`` of a decode rate.

    Efficiency is ``None`` without a measured bandwidth, or below :data:`ROOFLINE_MIN_BYTES`.
    """
    weight_bytes = loaded.weight_bytes
    achieved = weight_bytes * tokens_per_s
    bandwidth = device_bandwidth(loaded)
    efficiency = None
    if bandwidth and weight_bytes >= ROOFLINE_MIN_BYTES:
        efficiency = achieved / bandwidth
    return weight_bytes, achieved, bandwidth, efficiency


def decode_rate(n: int, times: list[float], t0: float, t_end: float) -> float:
    """Decode tokens/s: steps after the first over the time they took."""
    if n >= 2 and len(times) >= n and times[n - 1] > times[0]:
        return (n - 1) / (times[n - 1] - times[0])
    span = t_end - (times[0] if times else t0)
    return n / span if span > 0 and n else 0.0
