"""Will it fit? The pre-load check, and the ``max_memory`` map for placement.

Before any weight is read, the store's estimate (at the load's peak, not only the
final footprint) is checked against the free memory of each chosen device: NVML's
free memory on GPUs, which already subtracts other users' processes, and available
RAM (within the cgroup limit) on the CPU. A load that cannot fit is refused with
the numbers and a suggestion, instead of dying half-way with the kernel.

Nothing here imports torch: the check runs in a fraction of a millisecond, and
tests drive it through the NVML fakes at the devices layer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._lazy import torch_if_imported
from .._records import Record, jsonable
from ..errors import DeviceNotFoundError, InsufficientMemoryError, LoadSpecError
from ..precision import is_gpu
from ..store import MemoryEstimate, ModelEntry, estimate, format_bytes
from ..store.estimate import kv_cache_bytes
from .spec import LoadSpec

logger = logging.getLogger(__name__)

MiB = 2**20
GiB = 2**30
#: KV cache the check leaves room for, in tokens of context (as ``workbench store inspect``'s fits).
CONTEXT_TOKENS = 1000
#: torch's CUDA context and cuBLAS workspace on each GPU: invisible to NVML until torch
#: starts CUDA in this process, then about 300-600 MB per device.
CUDA_CONTEXT_BYTES = 512 * MiB
#: RSS of importing torch and transformers (seen: 235 MB on a CPU build).
TORCH_IMPORT_BYTES = 256 * MiB
#: RSS of importing bitsandbytes (seen: 117 MB on the CPU; its CUDA libraries are not in RSS).
BNB_IMPORT_BYTES = 128 * MiB

#: ``device -> free bytes | None``: a device's free memory (``None``: unknown); tests pass their own.
FreeFn = Callable[[str], "int | None"]
#: ``device -> LeaseShare | None``: other users' GPU leases (workbench.devices.leases).
LeasedFn = Callable[[str], Any]


@dataclass(frozen=True)
class DeviceBudget(Record):
    """What one device offers a load.

    Attributes:
        device: ``"cuda:0"`` or ``"cpu"``.
        free_bytes: free now (NVML / available RAM); ``None`` when it cannot be read.
        cap_bytes: the spec's ``max_memory`` for this device, if any.
        reserve_bytes: held back for what the weights do not count (CUDA context,
            library imports, the KV cache share).
        leased_bytes: promised to GPU leases and not yet allocated by their holders
            (``max(0, leased - used)`` per holding process), so not in NVML's used memory yet.
        lease_holders: one line per lease on the device ("cuda:0: 30.1 GiB leased by alice (...)").
    """

    _json_properties = ("usable_bytes",)

    device: str
    free_bytes: int | None
    cap_bytes: int | None
    reserve_bytes: int
    leased_bytes: int = 0
    lease_holders: tuple[str, ...] = ()

    @property
    def usable_bytes(self) -> int | None:
        """Bytes the weights may take here: ``min(free - leased - reserve, cap)``; ``None`` if unknown."""
        values = []
        if self.free_bytes is not None:
            values.append(max(0, self.free_bytes - self.leased_bytes - self.reserve_bytes))
        if self.cap_bytes is not None:
            values.append(self.cap_bytes)
        return min(values) if values else None

    def describe(self) -> str:
        free = f"{format_bytes(self.free_bytes)} free" if self.free_bytes is not None else "free memory unknown"
        cap = f", capped at {format_bytes(self.cap_bytes)}" if self.cap_bytes is not None else ""
        leased = ""
        if self.lease_holders:
            leased = (f", {format_bytes(self.leased_bytes)} of it promised to leases "
                      f"({'; '.join(self.lease_holders)})")
        return f"{self.device} has {free}{cap}{leased}"


@dataclass(frozen=True)
class FitCheck:
    """The outcome of checking one spec against the devices' free memory.

    Attributes:
        estimate: the store's estimate at the spec's precision and device type.
        needed_bytes: the most the load holds at once (peak, or weights plus KV cache
            for :data:`CONTEXT_TOKENS` tokens), plus reserves.
        available_bytes: what the devices offer together; ``None`` if any is unknown.
        budgets: per device.
        fits: ``True``, ``False``, or ``None`` when free memory is unknown (not refused).
        message: one sentence with the numbers.
    """

    spec: LoadSpec
    estimate: MemoryEstimate
    needed_bytes: int
    available_bytes: int | None
    budgets: tuple[DeviceBudget, ...]
    fits: bool | None
    message: str

    @property
    def needed_str(self) -> str:
        return format_bytes(self.needed_bytes)

    def to_dict(self) -> dict[str, Any]:
        """The numbers, with the spec by its precision label (not the whole spec)."""
        return {
            "precision": self.spec.precision, "needed_bytes": self.needed_bytes,
            "available_bytes": self.available_bytes, "fits": self.fits, "message": self.message,
            "budgets": jsonable(self.budgets), "estimate": jsonable(self.estimate),
        }


def _default_free(device: str) -> int | None:
    # Looked up at call time so tests can monkeypatch workbench.devices.memory_free_bytes.
    from .. import devices

    return devices.memory_free_bytes(device)


def _default_leased(device: str) -> Any:
    from ..devices.leases import get_lease_book
    from ..errors import WorkbenchError

    try:
        return get_lease_book().share(device)
    except (WorkbenchError, OSError) as exc:  # leases are advisory: an unusable lease folder refuses nothing
        logger.debug("GPU leases of %s not counted: %s", device, exc)
        return None


def _free_of(device: str, free: FreeFn) -> int | None:
    try:
        return free(device)
    except DeviceNotFoundError as exc:
        raise LoadSpecError(f"device {device!r} is not available in this session",
                            hint=exc.hint or "choose one listed by `workbench devices`", device=device) from None


def check_devices(spec: LoadSpec, *, free: FreeFn | None = None) -> None:
    """Only check that every device exists (for entries whose size the store cannot tell).

    Raises:
        LoadSpecError: a device this session does not have.
    """
    for d in spec.devices:
        _free_of(d, free or _default_free)


def _cuda_initialized() -> bool:
    torch = torch_if_imported()
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except (RuntimeError, AttributeError):
        return False


def spec_estimate(entry: ModelEntry, spec: LoadSpec) -> MemoryEstimate:
    """The store's estimate for ``spec`` (the CPU's load peak when no GPU is chosen)."""
    return estimate(entry, spec.dtype, spec.quant, double_quant=spec.double_quant, device_type=spec.device_type)


def check_fit(entry: ModelEntry, spec: LoadSpec, *, free: FreeFn | None = None,
              context_tokens: int = CONTEXT_TOKENS, leased: LeasedFn | None = None) -> FitCheck:
    """Check ``spec``'s estimate against the free memory of its devices (nothing is refused here).

    Args:
        entry: the model's store entry.
        spec: a validated spec.
        free: ``device -> free bytes``; default :func:`workbench.devices.memory_free_bytes`.
        context_tokens: KV cache to leave room for.
        leased: ``device -> LeaseShare``; default the machine's GPU leases
            (:meth:`workbench.devices.leases.LeaseBook.share`), counted on top of NVML's used memory.

    Raises:
        LoadSpecError: a device that this session does not have.

    Example:
        >>> check_fit(entry, LoadSpec(entry, devices=("cpu",))).fits  # doctest: +SKIP
        True
    """
    free = free or _default_free
    est = spec_estimate(entry, spec)
    kv = kv_cache_bytes(entry, context_tokens, est.dtype) or 0
    gpus = [d for d in spec.devices if is_gpu(d)]
    caps = spec.max_memory or {}
    budgets = []
    for d in spec.devices:
        if d == "cpu":
            reserve = 0 if torch_if_imported() is not None else TORCH_IMPORT_BYTES
            bnb = spec.quant != "none" or entry.quant_method == "bitsandbytes"  # pre-quantized loads import it too
            if bnb and "bitsandbytes" not in sys.modules:
                reserve += BNB_IMPORT_BYTES
            if not gpus:
                reserve += kv
        else:
            reserve = (0 if _cuda_initialized() else CUDA_CONTEXT_BYTES) + kv // max(1, len(gpus))
        free_now = _free_of(d, free)
        share = (leased or _default_leased)(d) if d != "cpu" else None
        if share is not None and share.leases:
            budgets.append(DeviceBudget(d, free_now, caps.get(d), reserve, share.outstanding_bytes,
                                        tuple(share.holders())))
            continue
        budgets.append(DeviceBudget(d, free_now, caps.get(d), reserve))

    # On the CPU, bitsandbytes quantizes after the full-precision weights are read, so
    # the peak is far above the footprint; on GPUs it quantizes tensor by tensor.
    weights_need = max(est.total_bytes, est.load_peak_bytes)
    needed = weights_need + sum(b.reserve_bytes for b in budgets)
    usable = [b.usable_bytes for b in budgets]
    precision = est.label
    head = (f"{spec.model_name} in {precision} needs about {format_bytes(needed)} "
            f"(weights {est.total_str}"
            + (f", load peak {format_bytes(est.load_peak_bytes)}" if est.load_peak_bytes > est.total_bytes else "")
            + (f", KV cache for {context_tokens:,} tokens {format_bytes(kv)}" if kv else "")
            + ")")
    where = "; ".join(b.describe() for b in budgets)
    if any(u is None for u in usable):
        return FitCheck(spec, est, needed, None, tuple(budgets), None,
                        f"{head}; {where}: cannot check the fit")
    available = sum(u for u in usable if u is not None) + sum(b.reserve_bytes for b in budgets)
    fits = weights_need <= sum(u for u in usable if u is not None)
    verdict = "fits" if fits else "does not fit"
    return FitCheck(spec, est, needed, available, tuple(budgets), fits, f"{head}; {where}: {verdict}")


# Precisions tried, best quality first, when suggesting something that fits.
_ALTERNATIVES: tuple[tuple[str, str], ...] = (("bfloat16", "none"), ("bfloat16", "int8"), ("bfloat16", "nf4"))


def suggest(entry: ModelEntry, spec: LoadSpec, *, free: FreeFn | None = None,
            other_devices: Sequence[str] = ()) -> str:
    """What to change so the load fits: a smaller precision, or more/other devices."""
    free = free or _default_free
    ideas = []
    current = spec_estimate(entry, spec).total_bytes
    # A pre-quantized checkpoint loads only as saved: no other precision to suggest.
    for dtype, quant in (_ALTERNATIVES if entry.quant_method is None else ()):
        alt = spec.with_(dtype=dtype, quant=quant, double_quant=False, compute_dtype=None)
        if (alt.dtype, alt.quant) == (spec.dtype, spec.quant) or spec_estimate(entry, alt).total_bytes >= current:
            continue
        chk = check_fit(entry, alt, free=free)
        if chk.fits:
            what = f"quant={quant!r}" if quant != "none" else f"dtype={dtype!r}"
            ideas.append(f"try {what} (needs about {chk.needed_str})")
            break
    extra = [d for d in other_devices if d not in spec.devices]
    gpus_extra = [d for d in extra if is_gpu(d)]
    if gpus_extra:
        more = spec.with_(devices=tuple(d for d in spec.devices if d != "cpu") + tuple(gpus_extra))
        if check_fit(entry, more, free=free).fits:
            ideas.append(f"add {', '.join(gpus_extra)}")
    for d in extra:
        if check_fit(entry, spec.with_(devices=(d,), max_memory=None), free=free).fits:
            ideas.append(f"load on {d} instead")
            break
    if spec.max_memory:
        ideas.append("raise max_memory")
    if not ideas:
        ideas.append("free memory on the device (other models or processes), or choose a smaller model")
    return "; or ".join(ideas)


def require_fit(entry: ModelEntry, spec: LoadSpec, *, free: FreeFn | None = None,
                other_devices: Sequence[str] | None = None) -> FitCheck:
    """:func:`check_fit`, raising when the load cannot fit.

    Raises:
        InsufficientMemoryError: with ``needed_bytes``, ``available_bytes``, ``devices``
            and a suggestion (a smaller quantization, another device) as the hint.
    """
    chk = check_fit(entry, spec, free=free)
    if chk.fits is False:
        if other_devices is None:
            other_devices = _visible_device_names()
        hint = suggest(entry, spec, free=free, other_devices=other_devices)
        raise InsufficientMemoryError(
            chk.message + ".", hint=hint[:1].upper() + hint[1:] + ".",
            needed_bytes=chk.needed_bytes, available_bytes=chk.available_bytes, devices=list(spec.devices),
            free_bytes={b.device: b.free_bytes for b in chk.budgets}, precision=spec.precision,
            holders=[h for b in chk.budgets for h in b.lease_holders],
        )
    return chk


def _visible_device_names() -> list[str]:
    from .. import devices

    try:
        return [d.name for d in devices.list_devices()]
    except (RuntimeError, OSError) as exc:  # the inventory degrades itself; be safe anyway
        return ["cpu"] if str(exc) else []


def accelerate_key(device: str) -> int | str:
    """accelerate's ``max_memory`` key: ``"cuda:1"`` -> ``1``, ``"cpu"`` -> ``"cpu"``."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else device


def placement_plan(spec: LoadSpec, check: FitCheck | None = None, *,
                   fallback: Callable[[str], int | None] | None = None) -> tuple[Any, dict[int | str, int] | None]:
    """``(device_map, max_memory)`` for ``from_pretrained``.

    One device: the whole model there (``"cpu"`` or ``{"": "cuda:0"}``), no
    ``max_memory``. Several: ``device_map="auto"`` (accelerate balances the layers
    across the GPUs) with ``max_memory`` capping each device at its usable bytes:
    free memory minus the CUDA context and its share of the KV cache, and no more
    than the spec's own ``max_memory``. accelerate uses only the devices the map
    names, so devices not chosen get nothing, and a chosen device whose free memory
    is unknown gets ``fallback(device)`` (torch's own free-memory query at load time).

    Example:
        >>> placement_plan(LoadSpec("m", devices=("cuda:0", "cuda:1"), max_memory={"cuda:0": 8 * 2**30}), chk)
        ... # doctest: +SKIP
        ('auto', {0: 8589934592, 1: 24696061952})

    Raises:
        LoadSpecError: the free memory of a device in a multi-device spec cannot be read, and neither
            ``max_memory`` nor ``fallback`` gives it.
    """
    if len(spec.devices) == 1:
        d = spec.devices[0]
        return ("cpu" if d == "cpu" else {"": d}), None
    budgets = {b.device: b for b in check.budgets} if check is not None else {}
    caps = spec.max_memory or {}
    mm: dict[int | str, int] = {}
    for d in spec.devices:
        b = budgets.get(d)
        usable = b.usable_bytes if b is not None else caps.get(d)
        if usable is None and fallback is not None:
            usable = fallback(d)
        if usable is None:
            raise LoadSpecError(f"the free memory of {d} cannot be read, so the model cannot be split across "
                                f"{', '.join(spec.devices)}",
                                hint=f"give max_memory={{{d!r}: BYTES}} for it", device=d)
        mm[accelerate_key(d)] = int(usable)
    return "auto", mm
