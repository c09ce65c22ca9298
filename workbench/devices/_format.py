"""Display helpers for raw values: the only place numbers become strings.

Kept apart from ``workbench.store`` on purpose (devices and store are sibling
layers), but with the same conventions: binary units, as nvidia-smi and nvitop
show memory, and ``"N/A"`` for a metric that is missing.
"""

from __future__ import annotations

NA = "N/A"


def format_bytes(n: int | float | None) -> str:
    """Format a byte count with binary units.

    Example:
        >>> format_bytes(1536), format_bytes(None)
        ('1.5 KiB', 'N/A')
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
