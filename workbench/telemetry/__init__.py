"""Live telemetry: GPU, CPU and RAM sampled in the background, engines' and DCGM exporters'
``/metrics`` watched, event marks, export.

One :class:`Sampler` per process (:func:`get_sampler`) samples every second on a
daemon thread into bounded float32 ring buffers; panels subscribe to it or read
:meth:`Sampler.series`. Without an NVIDIA driver it samples CPU and RAM only and
says why once (:attr:`Sampler.notices`). Nothing starts at import time.

Example:
    >>> from workbench.telemetry import get_sampler, post_event, reset_sampler
    >>> sampler = get_sampler()                 # started on first use
    >>> unsubscribe = sampler.subscribe(lambda s: None)
    >>> _ = post_event("load_started", "loading tiny", model="tiny", devices=["cpu"])
    >>> times, cpu = sampler.series("cpu_percent")
    >>> unsubscribe(); reset_sampler()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# Lazy re-exports (name -> submodule): the runtime imports ``post_event`` on its hot
# import path, which should not pay for numpy and the sampler.
_EXPORTS = {
    "EVENT_KINDS": "events",
    "Event": "events",
    "EventKind": "events",
    "EventLog": "events",
    "get_event_log": "events",
    "post_event": "events",
    "reset_event_log": "events",
    "events_to_records": "export",
    "to_csv": "export",
    "to_prometheus": "export",
    "WorkbenchCollector": "prometheus",
    "to_records": "export",
    "GPU_METRICS": "sample",
    "HOST_METRICS": "sample",
    "GpuSample": "sample",
    "HostSample": "sample",
    "Sample": "sample",
    "Sampler": "sampler",
    "get_sampler": "sampler",
    "reset_sampler": "sampler",
    "NVMLSource": "sources",
    "PsutilSource": "sources",
    "Source": "sources",
    "Series": "series",
    "DcgmGpu": "metrics",
    "VllmMetrics": "metrics",
    "parse_dcgm": "metrics",
    "parse_vllm": "metrics",
    "scrape": "metrics",
    "DcgmWatcher": "watch",
    "EngineWatcher": "watch",
    "MetricsWatcher": "watch",
}

if TYPE_CHECKING:  # pragma: no cover
    from .events import EVENT_KINDS, Event, EventKind, EventLog, get_event_log, post_event, reset_event_log  # noqa: F401
    from .export import events_to_records, to_csv, to_prometheus, to_records  # noqa: F401
    from .metrics import DcgmGpu, VllmMetrics, parse_dcgm, parse_vllm, scrape  # noqa: F401
    from .prometheus import WorkbenchCollector  # noqa: F401
    from .sample import GPU_METRICS, HOST_METRICS, GpuSample, HostSample, Sample  # noqa: F401
    from .sampler import Sampler, get_sampler, reset_sampler  # noqa: F401
    from .series import Series  # noqa: F401
    from .sources import NVMLSource, PsutilSource, Source  # noqa: F401
    from .watch import DcgmWatcher, EngineWatcher, MetricsWatcher  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)


__all__ = sorted(_EXPORTS)
