"""Export telemetry: records (for pandas), CSV, and Prometheus text format.

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
from collections.abc import Iterable
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


# --- Prometheus text exposition format 0.0.4 -----------------------------------------------

# Sample field -> (metric name, help, scale to Prometheus base units).
_HOST_FAMILIES = {
    "cpu_percent": ("workbench_cpu_percent", "Machine-wide CPU use over the last sample period, percent.", 1),
    "ram_used_bytes": ("workbench_ram_used_bytes", "Machine RAM in use (total minus available), bytes.", 1),
    "ram_total_bytes": ("workbench_ram_total_bytes", "Machine RAM, bytes.", 1),
    "process_rss_bytes": (
        "workbench_process_rss_bytes",
        "Resident memory of this workbench process, bytes.",
        1,
    ),
}
_GPU_FAMILIES = {
    "utilization_percent": (
        "workbench_gpu_utilization_percent",
        "Share of the last period a kernel ran, percent.",
        1,
    ),
    "memory_used_bytes": ("workbench_gpu_memory_used_bytes", "GPU memory in use by all processes, bytes.", 1),
    "memory_total_bytes": ("workbench_gpu_memory_total_bytes", "GPU memory, bytes.", 1),
    "power_w": ("workbench_gpu_power_watts", "Board power draw, watts.", 1),
    "power_limit_w": ("workbench_gpu_power_limit_watts", "Enforced board power limit, watts.", 1),
    "temperature_c": ("workbench_gpu_temperature_celsius", "GPU die temperature, degrees Celsius.", 1),
    "sm_clock_mhz": ("workbench_gpu_sm_clock_hertz", "Streaming multiprocessor clock, hertz.", 1e6),
    "mem_clock_mhz": ("workbench_gpu_mem_clock_hertz", "Memory clock, hertz.", 1e6),
    "pcie_rx_bytes_s": (
        "workbench_gpu_pcie_rx_bytes_per_second",
        "PCIe receive throughput, bytes per second.",
        1,
    ),
    "pcie_tx_bytes_s": (
        "workbench_gpu_pcie_tx_bytes_per_second",
        "PCIe transmit throughput, bytes per second.",
        1,
    ),
}


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str | None]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in pairs if v is not None)
    return "{" + inner + "}" if inner else ""


def _number(value: float | int) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def _family(lines: list[str], name: str, help_text: str, kind: str, samples: list[tuple[str, Any]]) -> None:
    samples = [(labels, v) for labels, v in samples if v is not None and math.isfinite(float(v))]
    if not samples:
        return  # an absent series, not a NaN, is how Prometheus says "unknown"
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(f"{name}{labels} {_number(v)}" for labels, v in samples)


def to_prometheus(sampler: Sampler, log: EventLog | None = None) -> str:
    """The latest sample and the event counts in Prometheus text format 0.0.4.

    Serve it at ``/metrics`` (the server extension can) or write it for
    node_exporter's textfile collector. Missing metrics are left out.

    Example:
        >>> from workbench.telemetry import Sampler
        >>> s = Sampler(interval_s=1, history_s=60)
        >>> _ = s.sample_now()
        >>> "# TYPE workbench_ram_used_bytes gauge" in to_prometheus(s)
        True
    """
    log = log if log is not None else get_event_log()
    lines: list[str] = []
    sample = sampler.latest()
    if sample is not None:
        for field, (name, help_text, scale) in _HOST_FAMILIES.items():
            value = getattr(sample, field)
            _family(lines, name, help_text, "gauge", [("", None if value is None else value * scale)])
        for field, (name, help_text, scale) in _GPU_FAMILIES.items():
            samples = []
            for g in sample.gpus:
                value = getattr(g, field)
                labels = _labels([("device", g.device), ("uuid", g.uuid)])
                samples.append((labels, None if value is None else value * scale))
            _family(lines, name, help_text, "gauge", samples)
        _family(
            lines,
            "workbench_gpu_processes",
            "Compute processes on the GPU, all users.",
            "gauge",
            [
                (
                    _labels([("device", g.device), ("uuid", g.uuid)]),
                    None if g.processes is None else len(g.processes),
                )
                for g in sample.gpus
            ],
        )
        _family(
            lines,
            "workbench_telemetry_last_sample_timestamp_seconds",
            "When the latest sample was taken, seconds since the epoch.",
            "gauge",
            [("", sample.time_s)],
        )
    _family(
        lines,
        "workbench_telemetry_samples_total",
        "Samples taken by this process's telemetry sampler.",
        "counter",
        [("", sampler.stats["samples"])],
    )
    counts = log.counts()
    lines.append("# HELP workbench_events_total Events posted by the runtime, by kind.")
    lines.append("# TYPE workbench_events_total counter")
    lines.extend(f"workbench_events_total{_labels([('kind', k)])} {n}" for k, n in sorted(counts.items()))
    return "\n".join(lines) + "\n"
