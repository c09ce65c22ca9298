"""The metrics of a run: the one result record, the one decode-rate formula, and the roofline.

* :class:`RunResult`: what every answer reports, local or from an endpoint (the Prompt
  tab, ``workbench run`` and its ``--json`` read these fields and nothing else).
* :func:`decode_rate`: tokens/s, for a local stream (token steps) and an endpoint's
  (pieces that may carry several tokens), reasoning included.
* Roofline: decoding a token reads every weight once, so ``weight bytes x tokens/s`` is
  the memory bandwidth the run achieved, and its ratio to the devices' measured bandwidth
  (:func:`workbench.runtime.measure_bandwidth`) is the decode efficiency.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._records import Record

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


def decode_rate(n: int, times: Sequence[float], t0: float, t_end: float) -> float:
    """Decode tokens/s: the tokens after the first over the span from the first to the last.

    Args:
        n: tokens generated (reasoning included).
        times: arrival times (``perf_counter`` seconds) of what was streamed, in order:
            one per token step for a local run; one per piece from an endpoint, where a
            piece may carry several tokens (then ``n > len(times)`` and the span is the
            first to the last piece). With more times than tokens (a local run cut
            before a stop string) the span ends at the ``n``-th.
        t0, t_end: the request's start and end, used when fewer than two times span anything.

    Example:
        >>> decode_rate(11, [1.0, 1.5, 2.0], 0.5, 2.0)   # 10 tokens after the first, over 1 s
        10.0
    """
    if times:
        last = times[min(n, len(times)) - 1] if n else times[0]
        if n >= 2 and last > times[0]:
            return (n - 1) / (last - times[0])
    span = t_end - (times[0] if times else t0)
    return n / span if span > 0 and n else 0.0


@dataclass(frozen=True)
class RunResult(Record):
    """One answer and its metrics, local or from an endpoint (raw values; ``*_str`` for display).

    Attributes:
        text: the answer (without reasoning, cut before a stop string).
        prompt_tokens: tokens in the prompt, chat template included (``None``: an endpoint
            that reported no usage).
        new_tokens: tokens generated, reasoning included.
        ttft_s: from the request to the first streamed token of either kind (seconds).
        tokens_per_s: :func:`decode_rate` over the whole decode span.
        total_s: the whole request (seconds).
        stopped_by: ``"eos"``, ``"max_new_tokens"``, ``"stop_string"``, ``"cancelled"``, or an
            engine's own finish reason (``"tool_calls"``).
        model: the model's name.
        reasoning: a reasoning model's thinking, kept apart from the answer (``""``: none).
        notices: one sentence per setting that was not sent or not applied.
        not_sent: the sampling controls set but not sent (the engine does not take them).
        decode_efficiency: achieved over measured bandwidth, 0..1 (``None``: not measured, an endpoint).
        bandwidth_bytes_per_s: the devices' measured memory bandwidth (``None``: unmeasured, an endpoint).
    """

    text: str
    prompt_tokens: int | None
    new_tokens: int
    ttft_s: float
    tokens_per_s: float
    total_s: float
    stopped_by: str
    model: str = ""
    reasoning: str = ""
    notices: tuple[str, ...] = ()
    not_sent: tuple[str, ...] = ()
    decode_efficiency: float | None = None
    bandwidth_bytes_per_s: float | None = None

    @property
    def tokens_per_s_str(self) -> str:
        return f"{self.tokens_per_s:.1f} tokens/s"

    @property
    def ttft_str(self) -> str:
        return f"{self.ttft_s * 1000:.0f} ms"

    @property
    def efficiency_str(self) -> str:
        return "N/A" if self.decode_efficiency is None else f"{100 * self.decode_efficiency:.0f}%"
