"""Helpers that are not about widgets and belong in a core layer; kept here until one takes them.

* :func:`fit_summary` (store/devices): the sentence "fits on cpu in bfloat16, int8, nf4; not in
  float32" from :func:`workbench.store.fits_on`; the CLI's ``store inspect`` would want it too.
* :func:`check_selection` (runtime): whether a load selection fits the chosen devices and
  budgets before loading; the runtime's own pre-load check should own this rule.
* :func:`sort_entries` / :func:`filter_entries` (store): listing order and search, which
  ``workbench store list --sort/--filter`` could share.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..store import ModelEntry, estimate, fits_on, format_bytes
from ..store.estimate import kv_cache_bytes

SORT_KEYS = ("name", "model_type", "params", "size_bytes", "dtype", "context_length", "quantization", "status")


def sort_entries(entries: Iterable[ModelEntry], key: str = "name", descending: bool = False) -> list[ModelEntry]:
    """Entries ordered by one field; missing values (``None``) always last.

    Example:
        >>> [e.name for e in sort_entries(store.list(), "params", descending=True)]  # doctest: +SKIP
    """
    if key not in SORT_KEYS:
        raise ValueError(f"cannot sort by {key!r}; use one of {', '.join(SORT_KEYS)}")
    items = list(entries)
    present = [e for e in items if getattr(e, key) is not None]
    missing = [e for e in items if getattr(e, key) is None]

    def k(e: ModelEntry) -> Any:
        value = getattr(e, key)
        return value.lower() if isinstance(value, str) else value

    present.sort(key=k, reverse=descending)
    return present + sorted(missing, key=lambda e: e.name.lower())


def filter_entries(entries: Iterable[ModelEntry], text: str = "") -> list[ModelEntry]:
    """Entries whose name, type, dtype, format, quantization or status contain every word of ``text``.

    Example:
        >>> [e.name for e in filter_entries(store.list(), "llama ok")]  # doctest: +SKIP
    """
    words = text.lower().split()
    if not words:
        return list(entries)
    out = []
    for e in entries:
        hay = " ".join(str(v) for v in (e.name, e.model_type, e.dtype, e.format, e.quantization, e.status) if v).lower()
        if all(w in hay for w in words):
            out.append(e)
    return out


def fit_summary(entry: ModelEntry, devices: Sequence[Any], context_tokens: int = 1000) -> list[str]:
    """One sentence per device: which of float32, bfloat16, int8 and nf4 fit now.

    Example:
        >>> fit_summary(entry, list_devices())  # doctest: +SKIP
        ['fits on cpu in float32, bfloat16, int8, nf4']
    """
    by_device: dict[str, list[tuple[str, bool]]] = {}
    for fit in fits_on(entry, devices, context_tokens=context_tokens):
        by_device.setdefault(fit.device, []).append((fit.precision, fit.fits))
    out = []
    for device, fits in by_device.items():
        yes = [p for p, ok in fits if ok]
        no = [p for p, ok in fits if not ok]
        if yes and no:
            out.append(f"fits on {device} in {', '.join(yes)}; not in {', '.join(no)}")
        elif yes:
            out.append(f"fits on {device} in {', '.join(yes)}")
        else:
            out.append(f"does not fit on {device} at any precision")
    return out


@dataclass(frozen=True)
class SelectionCheck:
    """Whether a load selection fits: what it needs against what the chosen devices offer."""

    needed_bytes: int
    available_bytes: int | None
    label: str
    fits: bool
    message: str


def check_selection(entry: ModelEntry, devices: Sequence[Any], dtype: str = "auto", quant: str = "none", *,
                    double_quant: bool = False, budgets_bytes: dict[str, int] | None = None,
                    context_tokens: int = 1000) -> SelectionCheck:
    """Check an estimate against the free memory (capped by budgets) of the selected devices.

    Args:
        entry: the model.
        devices: the selected ``Device`` records (their ``memory_free_bytes`` is used).
        dtype, quant, double_quant: as for :func:`workbench.store.estimate`.
        budgets_bytes: per-device caps (``max_memory``); a device missing here is uncapped.
        context_tokens: KV cache to leave room for.

    Example:
        >>> check_selection(entry, [cpu_device()], "bfloat16").fits  # doctest: +SKIP
        True
    """
    if not devices:
        return SelectionCheck(0, 0, "", False, "select at least one device")
    device_type = "cpu" if all(getattr(d, "name", "cpu") == "cpu" for d in devices) else "cuda"
    est = estimate(entry, dtype, quant, double_quant=double_quant, device_type=device_type)
    kv = kv_cache_bytes(entry, context_tokens, est.dtype) or 0
    needed = max(est.total_bytes + kv, est.load_peak_bytes)
    available = 0
    unknown = []
    for d in devices:
        free = d.memory_free_bytes
        cap = (budgets_bytes or {}).get(d.name)
        if free is None and cap is None:
            unknown.append(d.name)
            continue
        available += min(v for v in (free, cap) if v is not None)
    need_str = f"{est.label} needs about {format_bytes(needed)} (weights {est.total_str}"
    need_str += f" + KV cache for {context_tokens:,} tokens)" if kv else ")"
    if unknown:
        return SelectionCheck(needed, None, est.label, True,
                              f"{need_str}; free memory of {', '.join(unknown)} is unknown")
    fits = needed <= available
    where = ", ".join(d.name for d in devices)
    verdict = "fits" if fits else "does NOT fit"
    return SelectionCheck(needed, available, est.label, fits,
                          f"{need_str}; {where} offer {format_bytes(available)}: {verdict}")
