"""The one shape of a telemetry history: ``(times, columns)``.

``times`` is float64 seconds since the epoch (``time.time()``), oldest first; ``columns``
maps a series key to float32 values of the same length, NaN where the reading was
missing. A key is the metric for the host (``"cpu_percent"``) and ``"DEVICE/metric"``
for a device (``"cuda:0/power_w"``, ``"node-a/gpu 0/power_w"`` from a DCGM exporter).
The sampler's ring buffer, the engine watcher and the DCGM watcher all hand out this
shape, so a plot aligns one shape, whoever measured it.

Example:
    >>> times, cols = from_rows([10.0, 12.0], [{"cuda:0/power_w": 250}, {"cuda:0/power_w": None}])
    >>> times.tolist(), cols["cuda:0/power_w"].tolist()
    ([10.0, 12.0], [250.0, nan])
    >>> devices_of(cols), split_key("node-a/gpu 0/power_w")
    (['cuda:0'], ('node-a/gpu 0', 'power_w'))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

#: ``(times float64 [n], {key: float32 [n]})``.
Series = tuple[np.ndarray, dict[str, np.ndarray]]


def series_key(metric: str, device: str | None = None) -> str:
    """``"power_w"`` for the host, ``"cuda:0/power_w"`` for a device."""
    return metric if device is None else f"{device}/{metric}"


def split_key(key: str) -> tuple[str | None, str]:
    """``(device, metric)`` of a key; ``device`` is ``None`` for a host metric."""
    device, sep, metric = key.rpartition("/")
    return (device if sep else None), metric


def devices_of(columns: Iterable[str]) -> list[str]:
    """The devices the keys name, in first-seen order."""
    return list(dict.fromkeys(d for d, _ in map(split_key, columns) if d is not None))


def column(values: Sequence[float | int | None]) -> np.ndarray:
    """float32 values with ``None`` and infinities as NaN (a gap in a line, not a zero)."""
    out = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
    out[~np.isfinite(out)] = np.nan
    return out.astype(np.float32)


def from_rows(times: Sequence[float], rows: Sequence[Mapping[str, float | int | None]],
              keys: Iterable[str] | None = None) -> Series:
    """A :data:`Series` from one mapping per time; a key missing from a row is NaN there.

    Args:
        times: seconds since the epoch, one per row.
        rows: readings per row.
        keys: the columns, in order (default: every key of the rows, first-seen order).
    """
    if keys is None:
        keys = dict.fromkeys(k for row in rows for k in row)
    return (np.asarray(times, dtype=np.float64),
            {k: column([row.get(k) for row in rows]) for k in keys})
