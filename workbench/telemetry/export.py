"""Export telemetry: records (for pandas), CSV, and Prometheus text format (via ``prometheus_client``).

Records and CSV rows are wide: one row per sample with a column per series
(``cpu_percent``, ``cuda:0/power_w``...), plus one row per event (``type`` is
``"sample"`` or ``"event"``), in time order. Values come from the float32 ring
buffers, rounded to 7 significant digits; byte counts are written as integers.

Example:
    >>> from workbench.telemetry import Sampler
    >>> s = Sampler(interval_s=1, history_s=60)
    >>> _ = s.sample_now()
    >>> to_csv(s).splitlines()[0].split(",")[:3]
    ['time_s', 'type', 'cpu_percent']
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

import numpy as np

from .events import EventLog, get_event_log
from .sample import GPU_METRICS, HOST_METRICS
from .sampler import Sampler

EVENT_COLUMNS = ("event_kind", "event_message", "event_model", "event_data")


def _round_sig(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """Round float32 noise away (``12.300000190734863 -> 12.3``), NaN kept."""
    v = values.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.where(np.isfinite(v) & (v != 0), np.floor(np.log10(np.abs(v))), 0.0)
        scale = 10.0 ** (digits - 1 - magnitude)
        return np.where(np.isfinite(v), np.round(v * scale) / scale, np.nan)


def _column_values(key: str, values: np.ndarray) -> list[Any]:
    if key.endswith("_bytes"):
        return [None if math.isnan(x) else int(round(x)) for x in values.astype(np.float64).tolist()]
    return [None if math.isnan(x) else x for x in _round_sig(values).tolist()]


def events_to_records(since_s: float | None = None, log: EventLog | None = None) -> list[dict[str, Any]]:
    """Events as records: ``{"time_s", "type": "event", "event_kind", "event_message", ...}``.

    Example:
        >>> from workbench.telemetry import post_event
        >>> _ = post_event("unload", "unloaded tiny", model="tiny")
        >>> events_to_records()[-1]["event_kind"]
        'unload'
    """
    log = log if log is not None else get_event_log()
    return [
        {
            "time_s": e.time_s,
            "type": "event",
            "event_kind": e.kind,
            "event_message": e.message,
            "event_model": e.model,
            "event_data": dict(e.data),
        }
        for e in log.events(since_s)
    ]


def sample_columns(sampler: Sampler) -> list[str]:
    """The series columns of a sampler's records: host metrics, then each GPU's metrics."""
    return [*HOST_METRICS, *(f"{d}/{m}" for d in sampler.gpu_devices for m in GPU_METRICS)]


def to_records(
    sampler: Sampler,
    since_s: float | None = None,
    *,
    include_events: bool = True,
    log: EventLog | None = None,
) -> list[dict[str, Any]]:
    """Every sample (and event) after ``since_s`` as a list of dicts, oldest first.

    Args:
        sampler: the sampler whose history to export.
        since_s: only rows after this ``time.time()`` value.
        include_events: interleave event rows (``type == "event"``) by time.
        log: the event log (default: the process-wide one).

    Example:
        >>> import pandas as pd  # doctest: +SKIP
        >>> pd.DataFrame(to_records(get_sampler()))  # doctest: +SKIP
    """
    times, columns = sampler.columns(since_s)
    keys = [k for k in sample_columns(sampler) if k in columns]
    converted = {k: _column_values(k, columns[k]) for k in keys}
    records: list[dict[str, Any]] = []
    for i, t in enumerate(times.tolist()):
        row: dict[str, Any] = {"time_s": t, "type": "sample"}
        for k in keys:
            row[k] = converted[k][i]
        records.append(row)
    if include_events:
        records.extend(events_to_records(since_s, log))
        records.sort(key=lambda r: (r["time_s"], r["type"] == "event"))
    return records


def _csv_cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if key == "event_data":
        return json.dumps(value, default=str, sort_keys=True)
    return value


def to_csv(
    sampler: Sampler,
    path_or_buffer: str | os.PathLike[str] | IO[str] | None = None,
    *,
    since_s: float | None = None,
    include_events: bool = True,
    log: EventLog | None = None,
) -> str:
    """The history as CSV text (header first); also written to ``path_or_buffer`` if given.

    Missing values are empty cells; ``event_data`` is a JSON object.

    Example:
        >>> to_csv(get_sampler(), "telemetry.csv")  # doctest: +SKIP
    """
    header = ["time_s", "type", *sample_columns(sampler)]
    if include_events:
        header.extend(EVENT_COLUMNS)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in to_records(sampler, since_s, include_events=include_events, log=log):
        writer.writerow({k: _csv_cell(k, v) for k, v in record.items()})
    text = out.getvalue()
    if path_or_buffer is not None:
        if hasattr(path_or_buffer, "write"):
            path_or_buffer.write(text)  # type: ignore[union-attr]
        else:
            with open(path_or_buffer, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
    return text


# --- Prometheus --------------------------------------------------------------------------


def to_prometheus(sampler: Sampler, log: EventLog | None = None, *,
                  leases: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
                  models: Callable[[], Iterable[Mapping[str, Any]]] | None = None) -> str:
    """The latest sample and the event counts in Prometheus text format 0.0.4.

    ``leases`` and ``models`` add the lease and loaded-model series (see
    :class:`~workbench.telemetry.prometheus.WorkbenchCollector`), e.g.
    ``models=lambda: [m.to_dict() for m in get_registry().list()]`` in a kernel.

    Rendered by ``prometheus_client`` from :class:`~workbench.telemetry.prometheus.WorkbenchCollector`,
    the collector the server extension registers for jupyter_server's ``/metrics``.
    Write it for node_exporter's textfile collector. Missing metrics are left out.

    Example:
        >>> from workbench.telemetry import Sampler
        >>> s = Sampler(interval_s=1, history_s=60)
        >>> _ = s.sample_now()
        >>> "# TYPE workbench_ram_used_bytes gauge" in to_prometheus(s)
        True
    """
    from .prometheus import WorkbenchCollector, to_prometheus_text

    return to_prometheus_text(WorkbenchCollector(lambda: sampler, log, leases=leases, models=models))
