"""Does it fit? The one rule, as a pure function of numbers.

Every answer the workbench gives to "does this model fit on these devices?" comes
from :func:`decide_fit`: the pre-load check (:func:`workbench.runtime.fit.check_fit`,
behind the Load panel, ``workbench run``, ``workbench serve`` and the registry), the
Store panel and ``workbench store inspect`` (the same check per device and
precision), and the GPU lease book under its file lock (a lease is a need of its
bytes on one GPU). Before this module there were three rules, and the Store tab
said "fits" for loads the Load tab refused, because it ignored reserves and leases.

Our own code because it is the product: no library answers it. The inputs are
what each device offers and what the load needs; nothing here reads a device, a
file or a clock, so the lease book can call it under its lock and tests can call
it with any numbers.

The rule:

* A device offers its **free** memory (NVML's free memory on a GPU, which already
  excludes every process's allocations; available RAM within the cgroup on the
  CPU) less what **other users' leases** promise and have not allocated yet.
* On each device the load first needs its **fixed parts** there, each named (the
  CUDA context, library imports, its share of the KV cache and of the fixed cache
  state). What is left, capped by the spec's ``max_memory`` for that device, is
  **usable** for weights.
* The **weights** (or the load's peak, when it is higher) are spread over the
  devices in order, as accelerate's ``device_map="auto"`` fills them up to their
  ``max_memory``; so they fit when their need is at most the devices' usable bytes
  together, and every device has room for its fixed parts.
* A device whose free memory is unknown (and that has no cap) makes the answer
  unknown (``None``), never a refusal.
* A part whose size is **unknown** (the KV cache of a model transformers cannot
  build: ``"estimate unavailable: REASON"``) is never counted as zero bytes: it is
  named with its reason in :attr:`FitVerdict.unknown_parts`, and the answer is
  ``None`` where the known parts fit (they can only grow), ``False`` where they
  already do not. The callers that load refuse an unknown answer of this kind unless
  the user opts out (:func:`workbench.runtime.fit.require_fit`).

Example:
    >>> v = decide_fit(10 * GiB, [DeviceOffer("cuda:0", free_bytes=24 * GiB, leased_bytes=16 * GiB)],
    ...                parts={"cuda:0": {"cuda_context": GiB // 2}})
    >>> v.fits, v.devices[0].usable_bytes // MiB
    (False, 7680)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .._format import format_bytes
from .._records import Record

MiB = 2**20
GiB = 2**30

#: Display names of the parts a load needs, in the order the panels and the CLI show them.
PART_TITLES: dict[str, str] = {
    "weights": "weights",
    "load_peak": "load peak (above the weights)",
    "kv_cache": "KV cache",
    "cache_state": "fixed cache state",
    "compute_buffer": "llama.cpp compute buffers",
    "cuda_context": "CUDA context",
    "torch_import": "torch import",
    "bitsandbytes_import": "bitsandbytes import",
}
#: Parts that are neither weights nor cache: what the process itself needs before the weights arrive.
RESERVE_PARTS = ("cuda_context", "torch_import", "bitsandbytes_import")


def part_title(name: str) -> str:
    """``"kv_cache"`` -> ``"KV cache"``; unknown names are shown with spaces."""
    return PART_TITLES.get(name, name.replace("_", " "))


@dataclass(frozen=True)
class DeviceOffer(Record):
    """What one device offers a load.

    Attributes:
        device: ``"cuda:0"`` or ``"cpu"``.
        free_bytes: free now; ``None`` when it cannot be read.
        cap_bytes: the most the load may put there (transformers' ``max_memory``), if any.
        leased_bytes: promised to other users' GPU leases and not yet allocated by their
            holders (:class:`workbench.devices.leases.LeaseShare.outstanding_bytes`), so not
            in NVML's used memory yet.
        lease_holders: one line per such lease (``"cuda:0: 30.1 GiB leased by alice (...)"``).
    """

    device: str
    free_bytes: int | None
    cap_bytes: int | None = None
    leased_bytes: int = 0
    lease_holders: tuple[str, ...] = ()

    @property
    def offered_bytes(self) -> int | None:
        """``free - leased`` (not below 0); ``None`` when free memory is unknown."""
        return None if self.free_bytes is None else max(0, self.free_bytes - self.leased_bytes)


@dataclass(frozen=True)
class DeviceBudget(Record):
    """One device's side of a fit: what it offers, what the load needs there, and whether that fits.

    Attributes:
        device, free_bytes, cap_bytes, leased_bytes, lease_holders: as in :class:`DeviceOffer`.
        parts: the fixed needs on this device by name (:data:`PART_TITLES`), in bytes.
        weights_bytes: the share of the weights (or of the load peak) placed here, filling
            the devices in order.
        usable_bytes: bytes left for weights: ``min(free - leased - fixed parts, cap)``;
            ``None`` when unknown.
        fits: room for the fixed parts here (``None``: unknown).
    """

    _json_properties = ("reserve_bytes", "needed_bytes")

    device: str
    free_bytes: int | None
    cap_bytes: int | None
    leased_bytes: int
    lease_holders: tuple[str, ...]
    parts: Mapping[str, int]
    weights_bytes: int
    usable_bytes: int | None
    fits: bool | None

    @property
    def reserve_bytes(self) -> int:
        """The fixed parts together: what this device holds back beside the weights."""
        return sum(self.parts.values())

    @property
    def needed_bytes(self) -> int:
        """What the load takes here: its share of the weights plus the fixed parts."""
        return self.weights_bytes + self.reserve_bytes

    def describe(self) -> str:
        """``"cuda:0 has 21.0 GiB free, 10.0 GiB of it promised to leases (...)"``."""
        free = f"{format_bytes(self.free_bytes)} free" if self.free_bytes is not None else "free memory unknown"
        cap = f", capped at {format_bytes(self.cap_bytes)}" if self.cap_bytes is not None else ""
        leased = ""
        if self.leased_bytes or self.lease_holders:
            held = f" ({'; '.join(self.lease_holders)})" if self.lease_holders else ""
            leased = f", {format_bytes(self.leased_bytes)} of it promised to leases{held}"
        return f"{self.device} has {free}{cap}{leased}"


@dataclass(frozen=True)
class FitVerdict(Record):
    """The answer of :func:`decide_fit`: per device, the totals by part, and the verdict.

    Attributes:
        devices: one :class:`DeviceBudget` per device, in the order given.
        weights_bytes: the loaded weights (what stays once loaded).
        load_peak_bytes: the most the load holds at once for its weights (at least ``weights_bytes``).
        fits: ``True``, ``False``, or ``None`` when a device's free memory or a part's size is unknown.
        unknown_parts: parts whose size is unknown, by name, each with the reason
            (``{"kv_cache": "estimate unavailable: ..."}``); they are in none of the byte totals.
    """

    _json_properties = ("parts", "needed_bytes", "available_bytes", "reserve_bytes", "leased_bytes")

    devices: tuple[DeviceBudget, ...]
    weights_bytes: int
    load_peak_bytes: int
    fits: bool | None
    unknown_parts: Mapping[str, str] = field(default_factory=dict)

    @property
    def weights_need_bytes(self) -> int:
        """What the weights take while loading: the peak when it is higher than the weights."""
        return max(self.weights_bytes, self.load_peak_bytes)

    @property
    def parts(self) -> dict[str, int]:
        """Every part of the need by name, summed over devices: ``weights``, ``load_peak`` (above the
        weights, when any), then the fixed parts (``kv_cache``, ``cache_state``, ``cuda_context``...)."""
        out = {"weights": self.weights_bytes}
        if self.load_peak_bytes > self.weights_bytes:
            out["load_peak"] = self.load_peak_bytes - self.weights_bytes
        for b in self.devices:
            for name, n in b.parts.items():
                out[name] = out.get(name, 0) + n
        return out

    @property
    def reserve_bytes(self) -> int:
        return sum(b.reserve_bytes for b in self.devices)

    @property
    def needed_bytes(self) -> int:
        """The whole need: the weights' need (peak) plus every device's fixed parts."""
        return self.weights_need_bytes + self.reserve_bytes

    @property
    def leased_bytes(self) -> int:
        """Promised to other users' leases on these devices."""
        return sum(b.leased_bytes for b in self.devices)

    @property
    def available_bytes(self) -> int | None:
        """What the devices offer together (free less others' leases, within caps); ``None`` if unknown."""
        total = 0
        for b in self.devices:
            if b.usable_bytes is None:
                return None
            total += b.usable_bytes + b.reserve_bytes
        return total


def _usable(offer: DeviceOffer, reserve: int) -> int | None:
    values = []
    offered = offer.offered_bytes
    if offered is not None:
        values.append(max(0, offered - reserve))
    if offer.cap_bytes is not None:
        values.append(offer.cap_bytes)
    return min(values) if values else None


def decide_fit(weights_bytes: int, offers: Sequence[DeviceOffer], *,
               parts: Mapping[str, Mapping[str, int]] | None = None, load_peak_bytes: int = 0,
               unknown_parts: Mapping[str, str] | None = None) -> FitVerdict:
    """Whether ``weights_bytes`` (and each device's fixed ``parts``) fit what ``offers`` offer.

    Args:
        weights_bytes: the loaded weights, placed over the devices in order.
        offers: one per device, in placement order.
        parts: per device name, the fixed needs there by name (``{"cuda:0": {"cuda_context": ...,
            "kv_cache": ...}}``); see :data:`PART_TITLES`.
        load_peak_bytes: the most the load holds at once for its weights, when above ``weights_bytes``
            (a CPU quantization reads the full-precision copy first).
        unknown_parts: parts the load needs whose size nobody can tell, by name, with the reason;
            they make a ``True`` answer ``None`` (the known parts fit; the unknown ones may not).

    Returns:
        A :class:`FitVerdict`; nothing here reads a device or raises for a lack of memory.

    Example:
        >>> decide_fit(8 * GiB, [DeviceOffer("cuda:0", 6 * GiB), DeviceOffer("cuda:1", 6 * GiB)]).fits
        True
    """
    parts = parts or {}
    need = max(int(weights_bytes), int(load_peak_bytes))
    remaining = need
    budgets = []
    unknown = False
    fixed_ok = True
    for offer in offers:
        here = {k: int(v) for k, v in (parts.get(offer.device) or {}).items() if v}
        reserve = sum(here.values())
        usable = _usable(offer, reserve)
        offered = offer.offered_bytes
        room = None if offered is None else offered >= reserve
        if usable is None:
            unknown = True
        fixed_ok = fixed_ok and room is not False
        share = remaining if usable is None else min(remaining, usable)
        remaining -= share
        budgets.append(DeviceBudget(offer.device, offer.free_bytes, offer.cap_bytes, int(offer.leased_bytes),
                                    tuple(offer.lease_holders), here, int(share), usable, room))
    if not fixed_ok:
        fits: bool | None = False
    elif unknown:
        fits = None
    else:
        fits = remaining <= 0
    unknown_parts = dict(unknown_parts or {})
    if fits and unknown_parts:
        fits = None  # what is known fits; what is not known is never taken as zero bytes
    return FitVerdict(tuple(budgets), int(weights_bytes), need, fits, unknown_parts)


def unknown_text(unknown_parts: Mapping[str, str]) -> str:
    """``"KV cache unknown (estimate unavailable: ...)"``, one per unknown part, or ``""``."""
    return "; ".join(f"{part_title(k)} unknown ({why})" for k, why in unknown_parts.items())


def parts_text(parts: Mapping[str, int]) -> str:
    """``"weights 1.2 GiB, KV cache 20.0 MiB, CUDA context 512.0 MiB"``: the named parts that are not zero."""
    return ", ".join(f"{part_title(k)} {format_bytes(v)}" for k, v in parts.items() if v)
