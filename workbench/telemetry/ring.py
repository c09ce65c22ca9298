"""A fixed-size, column-oriented ring buffer of numeric series.

Times are float64 (float32 cannot tell seconds apart at today's epoch: its
resolution near 1.7e9 is 128 s); values are float32 with NaN for a missing
metric, which halves memory and is what plots consume. Float32 keeps about 7
significant digits: a GPU's used memory is stored to within a few KiB, fine for
plots; exact numbers live in :meth:`Sampler.latest`.

Memory is ``capacity * (8 + 4 * columns)`` bytes, allocated when a column first
appears and never grown: a day at 1 s with 8 GPUs (84 columns) is about 29.7 MB.
Not thread-safe on its own; :class:`Sampler` holds a lock around it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from ..errors import ConfigError


class RingBuffer:
    """Chronological rows of ``time_s`` plus named float32 columns, oldest dropped first.

    Args:
        capacity: rows kept; older rows are overwritten.

    Example:
        >>> rb = RingBuffer(3)
        >>> for t in range(5):
        ...     rb.append(float(t), {"x": t * 10.0})
        >>> rb.column("x")[1].tolist()
        [20.0, 30.0, 40.0]

    Raises:
        ConfigError: ``capacity`` is below 1.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"ring buffer capacity must be at least 1, not {capacity}", capacity=capacity)
        self.capacity = int(capacity)
        self._times = np.full(self.capacity, np.nan, dtype=np.float64)
        self._cols: dict[str, np.ndarray] = {}
        self._head = 0  # next row to write
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def keys(self) -> list[str]:
        """Column names, in the order they first appeared."""
        return list(self._cols)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what the buffer costs, whatever its fill)."""
        return int(self._times.nbytes + sum(c.nbytes for c in self._cols.values()))

    def ensure_columns(self, keys: Iterable[str]) -> None:
        """Allocate columns up front (NaN-filled), e.g. when the GPU list is known."""
        for key in keys:
            if key not in self._cols:
                self._cols[key] = np.full(self.capacity, np.nan, dtype=np.float32)

    def append(self, time_s: float, values: Mapping[str, float | int | None]) -> None:
        """Write one row; columns absent from ``values`` (or ``None``) get NaN."""
        self.ensure_columns(values)
        row = self._head
        self._times[row] = time_s
        for key, col in self._cols.items():
            value = values.get(key)
            col[row] = np.nan if value is None else value
        self._head = (row + 1) % self.capacity
        self._count = min(self._count + 1, self.capacity)

    def _chronological(self, array: np.ndarray) -> np.ndarray:
        if self._count < self.capacity:
            return array[: self._count].copy()
        return np.concatenate((array[self._head :], array[: self._head]))

    def _mask(self, times: np.ndarray, since_s: float | None) -> np.ndarray | None:
        if since_s is None or (isinstance(since_s, float) and math.isnan(since_s)):
            return None
        return times > since_s

    def column(self, key: str, since_s: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(times, values)`` copies, oldest first; only rows after ``since_s`` if given.

        An unknown column gives NaN values (a metric never reported is missing, not an error).
        """
        times = self._chronological(self._times)
        col = self._cols.get(key)
        values = self._chronological(col) if col is not None else np.full(len(times), np.nan, np.float32)
        mask = self._mask(times, since_s)
        if mask is not None:
            return times[mask], values[mask]
        return times, values

    def columns(self, since_s: float | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """All columns at once: ``(times, {key: values})``, copies, oldest first."""
        times = self._chronological(self._times)
        mask = self._mask(times, since_s)
        out = {}
        for key, col in self._cols.items():
            values = self._chronological(col)
            out[key] = values[mask] if mask is not None else values
        return (times[mask] if mask is not None else times), out
