"""How the Store and Load panels show "does it fit?": one table for both, each part named.

Both panels show :class:`workbench.runtime.fit.FitCheck` records (the one rule,
:func:`workbench.devices.budget.decide_fit`), so the totals are the same in both
tabs: the Store tab's rows are the very checks a load of that precision on that
device would get, and the Load tab's row is its selection's check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..devices.budget import RESERVE_PARTS, part_title, unknown_text
from ..store import format_bytes
from .display import html_table

FIT_HEADERS = ["Device", "Precision", "Weights", "KV cache", "Fixed state", "Reserves", "Leased by others", "Free",
               "Needed", "Fits"]


def _verdict(fits: bool | None) -> str:
    return {True: "fits", False: "does not fit", None: "unknown"}[fits]


def fit_rows(checks: Sequence[Any]) -> list[list[Any]]:
    """One row per device of each check: the parts it needs there, what it offers, and the verdict.

    A single-device check shows the weights (with the load peak when it is higher) and the whole
    need; a multi-device check shows on each device the share of the weights the rule placed there.
    """
    rows = []
    for chk in checks:
        v = chk.verdict
        for b in v.devices:
            one = len(v.devices) == 1
            weights = format_bytes(v.weights_bytes if one else b.weights_bytes)
            if one and v.load_peak_bytes > v.weights_bytes:
                weights += f" (load peak {format_bytes(v.load_peak_bytes)})"
            reserves = {k: n for k, n in b.parts.items() if k in RESERVE_PARTS}
            reserve_text = (f"{format_bytes(sum(reserves.values()))} ("
                            + ", ".join(part_title(k) for k in reserves) + ")") if reserves else format_bytes(0)
            leased = format_bytes(b.leased_bytes)
            if b.lease_holders:
                leased += " (" + "; ".join(b.lease_holders) + ")"
            rows.append([
                b.device, chk.estimate.label, weights,
                f"{format_bytes(b.parts.get('kv_cache', 0))} ({chk.context_tokens:,} tokens)",
                format_bytes(b.parts.get("cache_state", 0)), reserve_text, leased, format_bytes(b.free_bytes),
                format_bytes(v.needed_bytes if one else b.needed_bytes),
                _verdict(v.fits if one else (False if b.fits is False else v.fits)),
            ])
    return rows


def fit_table_html(checks: Sequence[Any], caption: str | None = None) -> str:
    """The checks as one table (:data:`FIT_HEADERS`); every value escaped."""
    if not checks:
        return ""
    return html_table(FIT_HEADERS, fit_rows(checks), caption=caption)


def fit_summary(checks: Sequence[Any]) -> list[str]:
    """One sentence per device from single-device checks: ``"fits on cpu in bfloat16, int8, nf4; not in float32"``."""
    by_device: dict[str, list[tuple[str, bool | None]]] = {}
    why: dict[str, str] = {}
    for chk in checks:
        by_device.setdefault(chk.spec.devices[0], []).append((chk.estimate.label, chk.fits))
        unknown_parts = getattr(chk, "unknown_parts", None)
        if chk.fits is None and unknown_parts:  # a part nobody can size, not the device
            why.setdefault(chk.spec.devices[0], unknown_text(unknown_parts))
    out = []
    for device, fits in by_device.items():
        yes = [p for p, ok in fits if ok]
        no = [p for p, ok in fits if ok is False]
        unknown = [p for p, ok in fits if ok is None]
        if unknown and not yes and not no:
            out.append(f"cannot tell whether it fits on {device}: {why.get(device, 'its free memory is unknown')}")
        elif unknown and no and not yes:
            out.append(f"does not fit on {device} in {', '.join(no)}; cannot tell in {', '.join(unknown)}: "
                       f"{why.get(device, 'its free memory is unknown')}")
        elif yes and no:
            out.append(f"fits on {device} in {', '.join(yes)}; not in {', '.join(no)}")
        elif yes:
            out.append(f"fits on {device} in {', '.join(yes)}")
        else:
            out.append(f"does not fit on {device} at any precision")
    return out
