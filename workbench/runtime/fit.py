"""Will it fit? The pre-load check, the Store tab's fits, and the ``max_memory`` map for placement.

The rule itself is :func:`workbench.devices.budget.decide_fit`, a pure function the
lease book also calls under its lock; this module gathers its inputs for a
:class:`LoadSpec`:

* what the load needs, each part named: the store's estimate at the load's peak
  (not only the final footprint), the KV cache for ``context_tokens`` tokens and the
  fixed cache state once per concurrent sequence, torch's CUDA context on each GPU
  not yet initialised, the RSS of importing torch and bitsandbytes on the CPU when
  they are not imported yet; a cache the store cannot measure is an **unknown** part with its
  reason (never zero bytes), and :func:`require_fit` refuses such a load unless the spec opts
  out (``allow_unknown_cache``);
* what each device offers: NVML's free memory on GPUs (which already subtracts other
  users' processes) less other users' GPU leases not yet allocated, available RAM
  (within the cgroup limit) on the CPU, and the spec's ``max_memory``.

The same :class:`FitCheck` is what the Load panel shows, what ``workbench run`` and
``workbench serve`` refuse with, what the registry leases, and, per device and
precision (:func:`fit_table`), what the Store panel and ``workbench store inspect``
say: so the Store tab can never say a model fits that the load then refuses.

Nothing here imports torch: the check runs in a fraction of a millisecond, and
tests drive it through the NVML fakes at the devices layer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._lazy import torch_if_imported
from .._records import jsonable
from ..devices.budget import DeviceBudget, DeviceOffer, FitVerdict, decide_fit, part_title, unknown_text
from ..errors import DeviceNotFoundError, InsufficientMemoryError, LoadSpecError, UnknownNeedError
from ..precision import is_gpu
from ..store import MemoryEstimate, ModelEntry, estimate, format_bytes
from ..store.estimate import cache_problem, kv_cache_bytes, precisions
from .spec import LoadSpec

logger = logging.getLogger(__name__)

__all__ = ["CONTEXT_TOKENS", "DeviceBudget", "DeviceOffer", "FitCheck", "check_fit", "device_offers", "fit_table",
           "placement_plan", "require_fit", "suggest"]

MiB = 2**20
GiB = 2**30
#: KV cache the check leaves room for, in tokens of context (the Store and Load tabs, ``store inspect``).
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
class FitCheck:
    """The outcome of checking one spec against what its devices offer.

    Attributes:
        spec: the spec checked.
        estimate: the store's estimate at the spec's precision and device type.
        verdict: the rule's answer (:class:`workbench.devices.budget.FitVerdict`): per device
            its free memory, others' leases, the named parts needed there and the weights' share.
        context_tokens: the KV cache the check leaves room for, in tokens.
        message: one sentence with the numbers.
    """

    spec: LoadSpec
    estimate: MemoryEstimate
    verdict: FitVerdict
    context_tokens: int
    message: str
    #: Per GPU, the lease book's reading the offer came from (NVML's memory and others' leases, read
    #: together once: :meth:`workbench.devices.leases.LeaseBook.share`); the load's lease is checked
    #: against its NVML numbers (:func:`.leasing.take`), so that a load reads NVML once.
    readings: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def budgets(self) -> tuple[DeviceBudget, ...]:
        """Per device: what it offers and what the load needs there."""
        return self.verdict.devices

    @property
    def fits(self) -> bool | None:
        """``True``, ``False``, or ``None`` when free memory is unknown (not refused)."""
        return self.verdict.fits

    @property
    def needed_bytes(self) -> int:
        """The most the load holds at once (the weights' peak) plus every device's fixed parts."""
        return self.verdict.needed_bytes

    @property
    def available_bytes(self) -> int | None:
        """What the devices offer together (free less others' leases, within caps); ``None`` if unknown."""
        return self.verdict.available_bytes

    @property
    def unknown_parts(self) -> dict[str, str]:
        """Parts of the need whose size is unknown, by name, with the reason (``{"kv_cache": "estimate unavailable: ..."}``)."""
        return dict(self.verdict.unknown_parts)

    @property
    def parts(self) -> dict[str, int]:
        """The need by part: ``weights``, ``load_peak``, ``kv_cache``, ``cache_state``, ``cuda_context``..."""
        return self.verdict.parts

    @property
    def needed_str(self) -> str:
        return format_bytes(self.needed_bytes)

    def to_dict(self) -> dict[str, Any]:
        """The numbers, with the spec by its precision label and devices (not the whole spec)."""
        return {
            "precision": self.spec.precision, "devices": list(self.spec.devices),
            "needed_bytes": self.needed_bytes, "available_bytes": self.available_bytes, "fits": self.fits,
            "parts": self.parts, "leased_bytes": self.verdict.leased_bytes, "context_tokens": self.context_tokens,
            "message": self.message, "budgets": jsonable(self.budgets), "estimate": jsonable(self.estimate),
        }


def _default_free(device: str) -> int | None:
    # Looked up at call time so tests can monkeypatch workbench.devices.memory_free_bytes.
    from .. import devices

    return devices.memory_free_bytes(device)


def _default_leased(device: str) -> Any:
    """The lease book's one reading of a GPU (NVML's free memory and other users' leases, together),
    or ``None`` with leases off or a book that cannot read (then free memory alone is asked)."""
    from ..devices.leases import get_lease_book, policy
    from ..errors import WorkbenchError

    if not policy.leases_enabled():
        return None
    try:
        return get_lease_book().share(device)
    except (WorkbenchError, OSError) as exc:
        # Not counted here; taking the load's own lease (runtime/leasing.py) then refuses with the reason.
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


def device_offers(devices: Iterable[str], *, free: FreeFn | None = None, leased: LeasedFn | None = None,
                  caps: dict[str, int] | None = None) -> list[DeviceOffer]:
    """What each device offers now: free memory, other users' leases on GPUs, and the caps given.

    Raises:
        LoadSpecError: a device that this session does not have.
    """
    return read_devices(devices, free=free, leased=leased, caps=caps)[0]


def read_devices(devices: Iterable[str], *, free: FreeFn | None = None, leased: LeasedFn | None = None,
                 caps: dict[str, int] | None = None) -> tuple[list[DeviceOffer], dict[str, Any]]:
    """:func:`device_offers`, and per GPU the lease book's reading each offer came from.

    By default a GPU is read once, by the lease book (:meth:`~workbench.devices.leases.LeaseBook.share`:
    NVML's free memory and the leases together); ``free`` asks free memory separately, and the
    CPU (or a GPU with leases off) is asked ``free`` alone.

    Raises:
        LoadSpecError: a device that this session does not have.
    """
    leased = leased or _default_leased
    out, readings = [], {}
    for d in devices:
        share = leased(d) if d != "cpu" else None
        if share is not None and free is None and getattr(share, "gpu_uuid", None) is not None:
            free_now = share.free_bytes  # read with the leases, by the book
            readings[d] = share
        else:
            free_now = _free_of(d, free or _default_free)
        if share is not None and share.leases:
            out.append(DeviceOffer(d, free_now, (caps or {}).get(d), int(share.outstanding_bytes),
                                   tuple(share.holders())))
        else:
            out.append(DeviceOffer(d, free_now, (caps or {}).get(d)))
    return out, readings


def _cuda_initialized() -> bool:
    torch = torch_if_imported()
    try:
        return bool(torch is not None and torch.cuda.is_initialized())
    except (RuntimeError, AttributeError):
        return False


def spec_estimate(entry: ModelEntry, spec: LoadSpec, *, llamacpp: bool | None = None) -> MemoryEstimate:
    """The store's estimate for ``spec`` (the CPU's load peak when no GPU is chosen; llama.cpp's for GGUF).

    ``llamacpp``: whether the load runs on llama.cpp, when the caller decided it already
    (default: :meth:`LoadSpec.uses_llamacpp`).
    """
    if spec.uses_llamacpp(entry) if llamacpp is None else llamacpp:
        from ..store.estimate import llamacpp_memory_estimate

        return llamacpp_memory_estimate(entry)
    return estimate(entry, spec.dtype, spec.quant, double_quant=spec.double_quant, device_type=spec.device_type)


def load_parts(entry: ModelEntry, spec: LoadSpec, est: MemoryEstimate, *, context_tokens: int = CONTEXT_TOKENS,
               sequences: int = 1, llamacpp: bool | None = None) -> dict[str, dict[str, int]]:
    """The fixed parts a load needs on each device of ``spec``, by name (see :data:`~workbench.devices.budget.PART_TITLES`).

    The KV cache for ``context_tokens`` tokens per sequence and the fixed cache state (once per
    sequence) go to the GPUs, shared evenly, or to the CPU when no GPU is chosen; each GPU whose CUDA
    context this process has not started yet needs one; the CPU needs the RSS of importing torch and
    bitsandbytes when they are not imported yet. ``llamacpp`` as in :func:`spec_estimate`.
    """
    kv = (kv_cache_bytes(entry, context_tokens, est.dtype) or 0) * max(1, sequences)  # unknown: unknown_load_parts
    state = (getattr(est, "cache_state_bytes", None) or 0) * max(1, sequences)
    llamacpp = spec.uses_llamacpp(entry) if llamacpp is None else llamacpp
    if llamacpp:  # llama.cpp's own KV rule and compute buffers (workbench/store/gguf_estimate.py)
        from ..store.gguf_estimate import llamacpp_parts

        lc = llamacpp_parts(entry, context_tokens * max(1, sequences), n_seq=sequences)
        kv, state = lc["kv_cache"], lc["compute_buffer"]
    state_part = "compute_buffer" if llamacpp else "cache_state"
    gpus = [d for d in spec.devices if is_gpu(d)]
    out: dict[str, dict[str, int]] = {}
    for d in spec.devices:
        here: dict[str, int] = {}
        if d == "cpu":
            if torch_if_imported() is None and not llamacpp:
                here["torch_import"] = TORCH_IMPORT_BYTES
            bnb = spec.quant != "none" or entry.quant_method == "bitsandbytes"  # pre-quantized loads import it too
            if bnb and "bitsandbytes" not in sys.modules:
                here["bitsandbytes_import"] = BNB_IMPORT_BYTES
            if not gpus:
                here["kv_cache"], here[state_part] = kv, state
        else:
            if not _cuda_initialized():
                here["cuda_context"] = CUDA_CONTEXT_BYTES
            here["kv_cache"], here[state_part] = kv // len(gpus), state // len(gpus)
        out[d] = {k: v for k, v in here.items() if v}
    return out


def unknown_load_parts(entry: ModelEntry, spec: LoadSpec, est: MemoryEstimate, *,
                       llamacpp: bool | None = None) -> dict[str, str]:
    """The parts of the need that nobody can size before loading, by name, with the reason.

    The KV cache and the fixed cache state come from the cache transformers builds
    (:func:`workbench.store.estimate.cache_profile`); where it cannot build the model (remote code,
    an unknown ``model_type``, a folder without ``config.json``) they are unknown, never zero.
    llama.cpp's cache is sized from the GGUF header by its own rule (:func:`load_parts`).
    ``llamacpp`` as in :func:`spec_estimate`.
    """
    if spec.uses_llamacpp(entry) if llamacpp is None else llamacpp:
        return {}
    if est.kv_cache_bytes_per_1k_tokens is not None:  # the estimate measured the cache: nothing unknown
        return {}
    why = getattr(est, "cache_problem", None) or cache_problem(entry) or (
        f"estimate unavailable: the store cannot measure the cache of {entry.name}")
    return {"kv_cache": why}


def _message(spec: LoadSpec, est: MemoryEstimate, verdict: FitVerdict, context_tokens: int) -> str:
    named = []
    for k, v in verdict.parts.items():
        if v:
            if k == "load_peak":  # said as the peak itself, as people measure it
                named.append(f"load peak {format_bytes(verdict.load_peak_bytes)}")
                continue
            title = f"KV cache for {context_tokens:,} tokens" if k == "kv_cache" else part_title(k)
            named.append(f"{title} {format_bytes(v)}")
    head = f"{spec.model_name} in {est.label} needs about {format_bytes(verdict.needed_bytes)} ({', '.join(named)})"
    where = "; ".join(b.describe() for b in verdict.devices)
    short = [b for b in verdict.devices if b.fits is False]
    if short:
        lacking = "; ".join(f"{b.device} lacks room for its {', '.join(part_title(k) for k in b.parts)} "
                            f"({format_bytes(b.reserve_bytes)})" for b in short)
        return f"{head}; {where}; {lacking}: does not fit"
    unknown = unknown_text(verdict.unknown_parts)
    if verdict.fits is None and unknown:
        return f"{head}, {unknown}; {where}: the rest fits, cannot check the fit"
    if verdict.fits is None:
        return f"{head}; {where}: cannot check the fit"
    return f"{head}; {where}: {'fits' if verdict.fits else 'does not fit'}"


def check_fit(entry: ModelEntry, spec: LoadSpec, *, free: FreeFn | None = None,
              context_tokens: int = CONTEXT_TOKENS, leased: LeasedFn | None = None, sequences: int = 1,
              offers: Sequence[DeviceOffer] | None = None, llamacpp: bool | None = None) -> FitCheck:
    """Check ``spec``'s estimate against what its devices offer (nothing is refused here).

    Args:
        entry: the model's store entry.
        spec: a validated spec.
        free: ``device -> free bytes``; default :func:`workbench.devices.memory_free_bytes`.
        context_tokens: KV cache to leave room for, per sequence.
        leased: ``device -> LeaseShare``; default the machine's GPU leases
            (:meth:`workbench.devices.leases.LeaseBook.share`), counted on top of NVML's used memory.
        sequences: sequences generated at once (the fixed cache state counts once per sequence).
        offers: what the devices offer, read once by the caller (:func:`device_offers`) when it checks
            many specs; ``free`` and ``leased`` are then not used. Caps come from ``spec.max_memory``.
        llamacpp: whether the load runs on llama.cpp, when the caller decided it (a load's plan);
            default :meth:`LoadSpec.uses_llamacpp`, asked once here.

    Raises:
        LoadSpecError: a device that this session does not have.

    Example:
        >>> check_fit(entry, LoadSpec(entry, devices=("cpu",))).fits  # doctest: +SKIP
        True
    """
    llamacpp = spec.uses_llamacpp(entry) if llamacpp is None else llamacpp
    est = spec_estimate(entry, spec, llamacpp=llamacpp)
    caps = spec.max_memory or {}
    readings: dict[str, Any] = {}
    if offers is None:
        offers, readings = read_devices(spec.devices, free=free, leased=leased, caps=caps)
    else:
        by_name = {o.device: o for o in offers}
        offers = [DeviceOffer(d, by_name[d].free_bytes, caps.get(d), by_name[d].leased_bytes, by_name[d].lease_holders)
                  if d in by_name else device_offers([d], free=free, leased=leased, caps=caps)[0]
                  for d in spec.devices]
    parts = load_parts(entry, spec, est, context_tokens=context_tokens, sequences=sequences, llamacpp=llamacpp)
    # On the CPU, bitsandbytes quantizes after the full-precision weights are read, so
    # the peak is far above the footprint; on GPUs it quantizes tensor by tensor.
    verdict = decide_fit(est.total_bytes, offers, parts=parts, load_peak_bytes=est.load_peak_bytes,
                         unknown_parts=unknown_load_parts(entry, spec, est, llamacpp=llamacpp))
    return FitCheck(spec, est, verdict, context_tokens, _message(spec, est, verdict, context_tokens), readings)


def fit_table(entry: ModelEntry, devices: Iterable[str], *, free: FreeFn | None = None,
              leased: LeasedFn | None = None, context_tokens: int = CONTEXT_TOKENS) -> list[FitCheck]:
    """The Store tab's and ``store inspect``'s fits: every precision of ``entry`` on each device alone.

    Each row is the very :func:`check_fit` a load of that precision on that device would get
    (reserves and other users' leases included); free memory and leases are read once per device.

    Raises:
        ConfigError, BrokenModelError: the entry cannot be estimated.
        LoadSpecError: a device that this session does not have.

    Example:
        >>> [(c.spec.devices[0], c.spec.precision, c.fits) for c in fit_table(entry, ["cpu"])]  # doctest: +SKIP
        [('cpu', 'float32', True), ('cpu', 'bfloat16', True), ('cpu', 'int8', True), ('cpu', 'nf4', True)]
    """
    names = list(devices)
    offers = device_offers(names, free=free, leased=leased)
    out = []
    for d, offer in zip(names, offers):
        for _label, dtype, quant in precisions(entry):
            spec = LoadSpec(entry, devices=(d,), dtype=dtype, quant=quant)  # type: ignore[arg-type]
            out.append(check_fit(entry, spec, context_tokens=context_tokens, offers=[offer]))
    return out


# Precisions tried, best quality first, when suggesting something that fits.
_ALTERNATIVES: tuple[tuple[str, str], ...] = (("bfloat16", "none"), ("bfloat16", "int8"), ("bfloat16", "nf4"))


def suggest(entry: ModelEntry, spec: LoadSpec, *, free: FreeFn | None = None,
            other_devices: Sequence[str] = (), context_tokens: int = CONTEXT_TOKENS, sequences: int = 1,
            check: FitCheck | None = None) -> str:
    """What to change so the load fits: a smaller precision, or more/other devices (each tried with
    :func:`check_fit` at the same context and sequences).

    Every device is read once: the spec's own from ``check`` (the fit check of ``spec`` that did not
    fit, whose offers every alternative is tried against), the others (and all of them without
    ``check``) once here, through ``free`` and the leases as :func:`check_fit` reads them.

    Raises:
        LoadSpecError: a device that this session does not have.
    """
    offers = _offers_once(spec, other_devices, free, check)

    def probe(other: LoadSpec) -> FitCheck:
        return check_fit(entry, other, context_tokens=context_tokens, sequences=sequences,
                         offers=[offers[d] for d in other.devices])

    def fits(chk: FitCheck) -> bool:
        # With an unknown cache, "everything known fits" is the most anyone can say (require_fit says the rest).
        return bool(chk.fits) or (chk.fits is None and bool(chk.unknown_parts) and chk.available_bytes is not None)

    ideas = []
    current = (check.estimate if check is not None else spec_estimate(entry, spec)).total_bytes
    smaller = _smaller_precision(entry, spec, current, probe, fits)
    if smaller:
        ideas.append(smaller)
    extra = [d for d in other_devices if d not in spec.devices]
    gpus_extra = [d for d in extra if is_gpu(d)]
    if gpus_extra:
        more = spec.with_(devices=tuple(d for d in spec.devices if d != "cpu") + tuple(gpus_extra))
        if fits(probe(more)):
            ideas.append(f"add {', '.join(gpus_extra)}")
    for d in extra:
        if fits(probe(spec.with_(devices=(d,), max_memory=None))):
            ideas.append(f"load on {d} instead")
            break
    if spec.max_memory:
        ideas.append("raise max_memory")
    if not ideas:
        ideas.append("free memory on the device (other models or processes), or choose a smaller model")
    return "; or ".join(ideas)


def _offers_once(spec: LoadSpec, other_devices: Sequence[str], free: FreeFn | None,
                 check: FitCheck | None) -> dict[str, DeviceOffer]:
    """What each device :func:`suggest` may try offers: the spec's own from ``check``, the rest read once."""
    offers: dict[str, DeviceOffer] = {}
    if check is not None:
        offers = {b.device: DeviceOffer(b.device, b.free_bytes, None, b.leased_bytes, b.lease_holders)
                  for b in check.budgets}
    unread = list(dict.fromkeys(d for d in (*spec.devices, *other_devices) if d not in offers))
    offers.update((o.device, o) for o in device_offers(unread, free=free))
    return offers


def _smaller_precision(entry: ModelEntry, spec: LoadSpec, current_bytes: int,
                       probe: Callable[[LoadSpec], FitCheck], fits: Callable[[FitCheck], bool]) -> str | None:
    """The best-quality precision of :data:`_ALTERNATIVES` smaller than ``spec``'s that fits, as an idea."""
    # A pre-quantized checkpoint loads only as saved: no other precision to suggest.
    for dtype, quant in (_ALTERNATIVES if entry.quant_method is None else ()):
        alt = spec.with_(dtype=dtype, quant=quant, double_quant=False, compute_dtype=None)
        if (alt.dtype, alt.quant) == (spec.dtype, spec.quant):
            continue
        chk = probe(alt)  # its estimate is the one compared: estimated once
        if chk.estimate.total_bytes < current_bytes and fits(chk):
            what = f"quant={quant!r}" if quant != "none" else f"dtype={dtype!r}"
            return f"try {what} (needs about {chk.needed_str})"
    return None


def require_fit(entry: ModelEntry, spec: LoadSpec, *, free: FreeFn | None = None,
                other_devices: Sequence[str] | None = None, context_tokens: int = CONTEXT_TOKENS,
                sequences: int = 1, llamacpp: bool | None = None) -> FitCheck:
    """:func:`check_fit`, raising when the load cannot fit, or when its fit cannot be checked because
    part of the need is unknown (the KV cache of a model transformers cannot build) and the spec does
    not opt out (``spec.allow_unknown_cache``; then a warning is logged and the check returned).

    An unknown free memory (a device NVML cannot read) is not refused: the load itself tells.

    Raises:
        InsufficientMemoryError: with ``needed_bytes``, ``available_bytes``, ``devices``
            and a suggestion (a smaller quantization, another device) as the hint.
        UnknownNeedError: the known parts fit (or cannot be checked) but a part is unknown;
            ``unknown_parts`` names each with its reason.
    """
    chk = check_fit(entry, spec, free=free, context_tokens=context_tokens, sequences=sequences, llamacpp=llamacpp)
    unknown = chk.unknown_parts
    if chk.fits is not False and unknown:
        if not spec.allow_unknown_cache:
            raise UnknownNeedError(
                f"cannot check that {spec.model_name} fits: {unknown_text(unknown)}",
                hint="load it anyway with allow_unknown_cache=True (workbench run/serve --allow-unknown-cache), "
                     f"leaving room for its cache yourself (the rest needs about {chk.needed_str})",
                name=spec.model_name, unknown_parts=unknown, needed_bytes=chk.needed_bytes,
                devices=list(spec.devices))
        logger.warning("%s: loading without a cache estimate (%s): %s", spec.model_name,
                       unknown_text(unknown), chk.message)
    if chk.fits is False:
        if other_devices is None:
            other_devices = _visible_device_names()
        hint = suggest(entry, spec, free=free, other_devices=other_devices, context_tokens=context_tokens,
                       sequences=sequences, check=chk)
        raise InsufficientMemoryError(
            chk.message + ".", hint=hint[:1].upper() + hint[1:] + ".",
            needed_bytes=chk.needed_bytes, available_bytes=chk.available_bytes, devices=list(spec.devices),
            free_bytes={b.device: b.free_bytes for b in chk.budgets}, precision=spec.precision,
            holders=[h for b in chk.budgets for h in b.lease_holders],
        )
    return chk


def _visible_device_names() -> list[str]:
    """The session's devices by name only: the GPUs' memory is not read here (:func:`suggest` reads
    each device once)."""
    from .. import devices

    try:
        return [g.name for g in devices.visible_gpus().gpus] + ["cpu"]
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
