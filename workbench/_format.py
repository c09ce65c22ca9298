"""Display helpers for raw values: where numbers become strings, for every layer.

At the bottom of the package (beside ``precision``) so the store, devices,
telemetry and the UI share one rule: binary units, as nvidia-smi and nvitop show
memory, and ``"N/A"`` for a value that is missing, ``None`` or NaN alike (a
missing sample in a float32 telemetry series is NaN).
"""

from __future__ import annotations

NA = "N/A"


def format_bytes(n: int | float | None) -> str:
    """Format a byte count with binary units.

    Example:
        >>> format_bytes(1536), format_bytes(None), format_bytes(float("nan"))
        ('1.5 KiB', 'N/A', 'N/A')
    """
    if n is None:
        return NA
    value = float(n)
    if value != value:  # NaN: a missing sample in a float series
        return NA
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_number(value: float | int | None, unit: str = "", digits: int = 0) -> str:
    """Format a number with a unit suffix, ``"N/A"`` when missing.

    Example:
        >>> format_number(41.96, "%"), format_number(None, " W")
        ('42%', 'N/A')
    """
    if value is None or value != value:
        return NA
    return f"{value:.{digits}f}{unit}"


def format_count(n: int | None) -> str:
    """``134515008 -> '134.5M'``, as model cards write parameter counts; ``"N/A"`` when missing."""
    if n is None:
        return NA
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
