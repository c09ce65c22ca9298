"""Prometheus metrics through ``prometheus_client``: one custom collector, no hand-written text.

:class:`WorkbenchCollector` turns the sampler's latest reading, the event counts,
the GPU leases and the loaded models into metric families when Prometheus
scrapes; nothing is sampled or stored on its behalf. The Jupyter server
extension registers it with ``prometheus_client.REGISTRY``, so jupyter_server's
own ``/metrics`` serves it (as jupyter-resource-usage does); :func:`to_prometheus`
in :mod:`workbench.telemetry.export` renders it alone, e.g. for node_exporter's
textfile collector.

Names start with ``workbench_`` and carry their unit (``_bytes``, ``_watts``,
``_hertz``, ``_percent``); a metric NVML does not support is absent rather than
NaN, which is how Prometheus says "unknown".

``prometheus_client`` is imported inside the functions that need it so that
``import workbench.telemetry`` stays cheap.

Example:
    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> from workbench.telemetry import Sampler
    >>> s = Sampler(interval_s=1, history_s=60)
    >>> _ = s.sample_now()
    >>> registry = CollectorRegistry()
    >>> registry.register(WorkbenchCollector(lambda: s))
    >>> b"workbench_ram_used_bytes" in generate_latest(registry)
    True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from .events import EventLog, get_event_log
from .sampler import Sampler

logger = logging.getLogger(__name__)

# Sample field -> (metric name, help, scale to Prometheus base units).
HOST_FAMILIES: dict[str, tuple[str, str, float]] = {
    "cpu_percent": ("workbench_cpu_percent", "Machine-wide CPU use over the last sample period, percent.", 1),
    "ram_used_bytes": ("workbench_ram_used_bytes", "Machine RAM in use (total minus available), bytes.", 1),
    "ram_total_bytes": ("workbench_ram_total_bytes", "Machine RAM, bytes.", 1),
    "process_rss_bytes": ("workbench_process_rss_bytes", "Resident memory of the sampling process, bytes.", 1),
}
GPU_FAMILIES: dict[str, tuple[str, str, float]] = {
    "utilization_percent": (
        "workbench_gpu_utilization_percent", "Share of the last period a kernel ran, percent.", 1),
    "memory_used_bytes": ("workbench_gpu_memory_used_bytes", "GPU memory in use by all processes, bytes.", 1),
    "memory_total_bytes": ("workbench_gpu_memory_total_bytes", "GPU memory, bytes.", 1),
    "power_w": ("workbench_gpu_power_watts", "Board power draw, watts.", 1),
    "power_limit_w": ("workbench_gpu_power_limit_watts", "Enforced board power limit, watts.", 1),
    "temperature_c": ("workbench_gpu_temperature_celsius", "GPU die temperature, degrees Celsius.", 1),
    "sm_clock_mhz": ("workbench_gpu_sm_clock_hertz", "Streaming multiprocessor clock, hertz.", 1e6),
    "mem_clock_mhz": ("workbench_gpu_mem_clock_hertz", "Memory clock, hertz.", 1e6),
    "pcie_rx_bytes_s": ("workbench_gpu_pcie_rx_bytes_per_second", "PCIe receive throughput, bytes per second.", 1),
    "pcie_tx_bytes_s": ("workbench_gpu_pcie_tx_bytes_per_second", "PCIe transmit throughput, bytes per second.", 1),
}
GPU_LABELS = ("device", "uuid")
#: Lease metric label -> key of a ``Lease.to_dict()``.
LEASE_LABELS = {"device": "device", "uuid": "gpu_uuid", "owner": "owner", "hub_user": "hub_user", "host": "host",
                "pid": "pid", "model": "model", "lease_id": "lease_id"}
MODEL_LABELS = ("name", "model", "device", "precision")


def _finite(value: Any) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(float(value))


def _label(value: Any) -> str:
    return "" if value is None else str(value)


class WorkbenchCollector:
    """A ``prometheus_client`` collector over the workbench's telemetry, leases and models.

    Args:
        sampler: returns the sampler to read (called at each scrape, so a server can
            start its sampler lazily); its latest sample is exported.
        log: the event log whose counts become ``workbench_events_total`` (default:
            the process-wide one).
        leases: returns the GPU leases as dicts (``Lease.to_dict()``: ``gpu_uuid``, ``device``,
            ``owner`` (the lease file's owner), ``hub_user``, ``host``, ``pid``, ``model``,
            ``reserved_bytes``, ``heartbeat_s``, ``idle_s``), or ``None`` when there is no reading
            yet (the lease series are then absent). It is called on the scraping thread, which
            in a Jupyter server is the event loop: it must return a reading made elsewhere (the
            server's :class:`workbench.server.offloop.Snapshot`), never read the folder itself.
        leases_age_s: returns how old that reading is, in seconds (``None``: no reading); exported as
            ``workbench_gpu_leases_age_seconds`` so a stale reading shows as one.
        models: returns the loaded models as dicts (``LoadedModel.to_dict()``), or ``None``.

    A source that raises is logged and left out of that scrape; the others still appear.

    Example:
        >>> from prometheus_client import REGISTRY
        >>> REGISTRY.register(WorkbenchCollector(get_sampler))  # doctest: +SKIP
    """

    def __init__(
        self,
        sampler: Callable[[], Sampler | None],
        log: EventLog | None = None,
        leases: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        models: Callable[[], Iterable[Mapping[str, Any]]] | None = None,
        leases_age_s: Callable[[], float | None] | None = None,
    ) -> None:
        self._sampler = sampler
        self._log = log
        self._leases = leases
        self._models = models
        self._leases_age_s = leases_age_s

    def describe(self) -> list[Any]:
        # Empty on purpose: registering must not call collect(), which would start
        # the sampler when the server starts rather than at the first scrape.
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily

        sampler = self._call("sampler", self._sampler)
        sample = sampler.latest() if sampler is not None else None
        if sample is not None:
            yield from _sample_families(sample)
        if sampler is not None:
            yield CounterMetricFamily(
                "workbench_telemetry_samples", "Samples taken by this process's telemetry sampler.",
                value=sampler.stats["samples"],
            )
        events = CounterMetricFamily("workbench_events", "Events posted by the runtime, by kind.", labels=["kind"])
        log = self._log if self._log is not None else get_event_log()
        for kind, n in sorted(log.counts().items()):
            events.add_metric([kind], n)
        yield events
        yield from self._lease_families()
        yield from self._model_families()

    def _call(self, what: str, fn: Callable[[], Any] | None) -> Any:
        if fn is None:
            return None
        try:
            return fn()
        except Exception as exc:  # a scrape reports what it can; one failing source is logged
            logger.warning("workbench metrics: %s unavailable (%s)", what, exc)
            return None

    def _lease_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self._leases is None:
            return
        def read() -> list[Mapping[str, Any]] | None:
            found = self._leases()  # type: ignore[misc]
            return None if found is None else list(found)

        leases = self._call("leases", read)
        age_s = self._call("leases age", self._leases_age_s)
        if _finite(age_s):
            yield GaugeMetricFamily(
                "workbench_gpu_leases_age_seconds",
                "Seconds since the lease reading these series show was taken (the folder is read in the "
                "background; a read that is slow or stuck makes this grow).", value=age_s)
        if leases is None:
            return
        reserved = GaugeMetricFamily(
            "workbench_gpu_lease_reserved_bytes", "GPU memory reserved by a workbench lease, bytes.",
            labels=list(LEASE_LABELS),
        )
        idle = GaugeMetricFamily(
            "workbench_gpu_lease_idle_seconds", "Seconds since a lease's model last generated.",
            labels=list(LEASE_LABELS),
        )
        heartbeat = GaugeMetricFamily(
            "workbench_gpu_lease_heartbeat_timestamp_seconds",
            "Last heartbeat of a lease's holder, seconds since the epoch.", labels=list(LEASE_LABELS),
        )
        count = GaugeMetricFamily("workbench_gpu_leases", "Workbench leases on the machine's GPUs.")
        for lease in leases:
            labels = [_label(lease.get(k)) for k in LEASE_LABELS.values()]
            if _finite(lease.get("reserved_bytes")):
                reserved.add_metric(labels, lease["reserved_bytes"])
            if _finite(lease.get("idle_s")):
                idle.add_metric(labels, lease["idle_s"])
            if _finite(lease.get("heartbeat_s")):
                heartbeat.add_metric(labels, lease["heartbeat_s"])
        count.add_metric([], len(leases))
        yield count
        if reserved.samples:
            yield reserved
        if idle.samples:
            yield idle
        if heartbeat.samples:
            yield heartbeat

    def _model_families(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        if self._models is None:
            return
        models = self._call("models", lambda: list(self._models()))  # type: ignore[misc]
        if models is None:
            return
        count = GaugeMetricFamily("workbench_models_loaded", "Models loaded in this process.")
        count.add_metric([], sum(1 for m in models if m.get("loaded", True)))
        yield count
        placed = GaugeMetricFamily(
            "workbench_model_placement_bytes", "Weight bytes of a loaded model on each device.",
            labels=MODEL_LABELS,
        )
        for m in models:
            for device, nbytes in (m.get("placement") or {}).items():
                if _finite(nbytes):
                    placed.add_metric(
                        [_label(m.get("name")), _label(m.get("model")), device, _label(m.get("precision"))], nbytes
                    )
        if placed.samples:
            yield placed


def to_prometheus_text(collector: WorkbenchCollector) -> str:
    """One collector rendered alone in Prometheus text format 0.0.4 (by ``prometheus_client``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry).decode("utf-8")


def _sample_families(sample: Any) -> Iterator[Any]:
    """The gauges of one telemetry sample: host, per-GPU, GPU processes, and its time."""
    from prometheus_client.core import GaugeMetricFamily

    for field, (name, help_text, scale) in HOST_FAMILIES.items():
        value = getattr(sample, field)
        if _finite(value):
            yield GaugeMetricFamily(name, help_text, value=value * scale)
    for field, (name, help_text, scale) in GPU_FAMILIES.items():
        family = GaugeMetricFamily(name, help_text, labels=GPU_LABELS)
        for g in sample.gpus:
            value = getattr(g, field)
            if _finite(value):
                family.add_metric([g.device, _label(g.uuid)], value * scale)
        if family.samples:
            yield family
    procs = GaugeMetricFamily(
        "workbench_gpu_processes", "Compute processes on the GPU, all users.", labels=GPU_LABELS
    )
    for g in sample.gpus:
        if g.processes is not None:
            procs.add_metric([g.device, _label(g.uuid)], len(g.processes))
    if procs.samples:
        yield procs
    yield GaugeMetricFamily(
        "workbench_telemetry_last_sample_timestamp_seconds",
        "When the latest sample was taken, seconds since the epoch.",
        value=sample.time_s,
    )
