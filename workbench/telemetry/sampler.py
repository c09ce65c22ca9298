"""The background sampler: one thread, one ring buffer, any number of subscribers.

One :class:`Sampler` per process (:func:`get_sampler`) however many panels
watch it: NVML queries cost the same whether one plot or ten subscribe, and
every panel sees the same history.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .._periodic import Periodic
from ..config import MAX_TELEMETRY_INTERVAL_S, MIN_TELEMETRY_INTERVAL_S
from ..errors import ConfigError, DeviceNotFoundError
from ..precision import normalize_device
from ._dispatch import Delivery, subscribe
from .ring import RingBuffer
from .sample import GPU_METRICS, HOST_METRICS, GpuSample, HostSample, Sample
from .series import Series, series_key
from .sources import Source, check_source

logger = logging.getLogger(__name__)

#: An interval passed explicitly may go down to this (tests and benchmarks).
EXPLICIT_MIN_INTERVAL_S = 0.01
#: Rows never exceed a day at the shortest settings interval, whatever history asks.
MAX_ROWS = int(86_400 / MIN_TELEMETRY_INTERVAL_S)

def _resolve_interval(interval_s: float | None) -> float:
    if interval_s is None:
        from ..config import get_settings

        return float(get_settings().telemetry_interval_s)  # its trait keeps it in [0.25, 60]
    value = float(interval_s)
    if not (math.isfinite(value) and EXPLICIT_MIN_INTERVAL_S <= value <= MAX_TELEMETRY_INTERVAL_S):
        raise ConfigError(
            f"telemetry interval {interval_s!r} s is out of range",
            hint=f"pass seconds between {EXPLICIT_MIN_INTERVAL_S} and {MAX_TELEMETRY_INTERVAL_S} (1 is the default)",
            interval_s=interval_s,
        )
    return value


def _resolve_history(history_s: float | None) -> float:
    if history_s is None:
        from ..config import get_settings

        history_s = get_settings().telemetry_history_s
    value = float(history_s)
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"telemetry history {history_s!r} s is not a positive number of seconds",
            hint="pass e.g. 3600 for an hour",
            history_s=history_s,
        )
    return value


def _default_sources() -> list[Source]:
    from .sources import NVMLSource, PsutilSource

    return [NVMLSource(), PsutilSource()]


class Sampler:
    """Samples GPUs, CPU and RAM on a background thread into bounded ring buffers.

    Args:
        interval_s: seconds between samples. ``None`` takes the setting
            ``telemetry_interval_s`` (default 1 s, always in [0.25, 60]). An explicit
            value is not clamped but must lie in [0.01, 60]: short intervals are for
            tests and benchmarks.
        history_s: seconds of history kept (default: the setting, a day). Rows are
            capped at a day at 0.25 s (345,600).
        sources: :class:`~workbench.telemetry.sources.Source` objects; default NVML then psutil.

    Subscribers run on their own threads: a slow one gets the newest sample and
    skips those it was too slow for; one that raises is logged once and kept.
    Neither stops nor delays sampling.

    Example:
        >>> s = Sampler(interval_s=0.05, history_s=60)
        >>> unsubscribe = s.subscribe(lambda sample: None)
        >>> _ = s.start()
        >>> s.sample_now().ram_total_bytes > 0
        True
        >>> times, values = s.series("cpu_percent")
        >>> s.close()

    Raises:
        ConfigError: an interval or history that is not a positive number of seconds.
        ArgumentTypeError: a source that is not a :class:`~workbench.telemetry.sources.Source`.
    """

    def __init__(
        self,
        interval_s: float | None = None,
        history_s: float | None = None,
        sources: Iterable[Source] | None = None,
    ) -> None:
        self.interval_s = _resolve_interval(interval_s)
        self.history_s = _resolve_history(history_s)
        self.capacity = min(MAX_ROWS, max(2, math.ceil(self.history_s / self.interval_s)))
        self.sources = [check_source(s) for s in sources] if sources is not None else _default_sources()
        self._ring = RingBuffer(self.capacity)
        self._ring.ensure_columns(HOST_METRICS)
        self._lock = threading.Lock()  # ring buffer, latest sample, device list
        self._collect_lock = threading.Lock()  # one collection at a time (sources keep deltas)
        self._latest: Sample | None = None
        self._devices: dict[str, str | None] = {}  # GPU name -> uuid, in first-seen order
        self._subs: list[Delivery] = []
        self._subs_lock = threading.Lock()
        self._notices: list[str] = []
        self._source_errors: dict[str, int] = {}
        self._samples = 0
        self._loop = Periodic(self._collect, interval_s=lambda: self.interval_s, name="workbench-telemetry")

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the sampling thread is alive."""
        return self._loop.running

    def start(self) -> Sampler:
        """Start sampling in a daemon thread (no-op if already running). Returns ``self``."""
        self._loop.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop sampling and join the thread (at most ``timeout_s``); history and subscribers are
        kept (``start()`` resumes)."""
        self._loop.stop(timeout_s)

    def close(self) -> None:
        """Stop sampling and drop every subscriber, joining their threads."""
        self.stop()
        with self._subs_lock:
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Sampler {state} every {self.interval_s:g} s, {len(self._ring)}/{self.capacity} rows, gpus={list(self._devices)}>"

    # --- sampling -------------------------------------------------------------------------

    def _note(self, notice: str) -> None:
        # A notice is data (``notices``, the panel's status line, the REST ``notices``), not a
        # warning: logged at WARNING it landed as red stderr under the cell showing the panel.
        if notice not in self._notices:
            self._notices.append(notice)
            logger.info("telemetry: %s", notice)

    def _collect(self) -> Sample:
        with self._collect_lock:
            time_s = time.time()
            gpus: list[GpuSample] = []
            host = HostSample()
            for source in self.sources:
                name = source.name
                try:
                    out = source.sample()
                    notice = source.notice
                except Exception as exc:
                    # Sources wrap drivers and third-party code; whatever one raises, the
                    # others still count and the next tick tries again.
                    count = self._source_errors.get(name, 0) + 1
                    self._source_errors[name] = count
                    if count == 1:
                        logger.warning(
                            "telemetry source %s failed (%s); sampling goes on", name, exc, exc_info=True
                        )
                    continue
                if notice:
                    self._note(notice)
                if isinstance(out, HostSample):
                    host = out
                elif out:
                    gpus.extend(g for g in out if isinstance(g, GpuSample))
            sample = Sample(
                time_s=time_s,
                gpus=tuple(gpus),
                cpu_percent=host.cpu_percent,
                ram_used_bytes=host.ram_used_bytes,
                ram_total_bytes=host.ram_total_bytes,
                process_rss_bytes=host.process_rss_bytes,
            )
            self._record(sample)
            with self._subs_lock:
                subs = list(self._subs)
            # Still under the collect lock, so subscribers see samples in time order even
            # when sample_now() races the thread; offer() only appends and notifies.
            for sub in subs:
                sub.offer(sample)
        return sample

    def _record(self, sample: Sample) -> None:
        values: dict[str, float | int | None] = {m: getattr(sample, m) for m in HOST_METRICS}
        for g in sample.gpus:
            for m in GPU_METRICS:
                values[series_key(m, g.device)] = getattr(g, m)
        with self._lock:
            for g in sample.gpus:
                if g.device not in self._devices:
                    self._ring.ensure_columns(series_key(m, g.device) for m in GPU_METRICS)
                self._devices[g.device] = g.uuid  # may change once, when torch's numbering arrives
            self._ring.append(sample.time_s, values)
            self._latest = sample
            self._samples += 1

    def sample_now(self) -> Sample:
        """Take a sample in the calling thread, record it, notify subscribers, and return it.

        Example:
            >>> Sampler(interval_s=1, history_s=10).sample_now().time_s > 0
            True
        """
        return self._collect()

    def subscribe(self, callback: Callable[[Sample], Any]) -> Callable[[], None]:
        """Call ``callback(sample)`` after each sample, on a thread of its own.

        The sampler never waits for a callback. A slow one receives the newest
        sample and skips those it was too slow for; one that raises is logged once
        and stays subscribed. Subscribing does not start the sampler.

        Returns:
            A function that unsubscribes (idempotent), joining the callback's thread.

        Example:
            >>> s = Sampler(interval_s=1, history_s=10)
            >>> unsubscribe = s.subscribe(print)
            >>> unsubscribe()
        """
        return subscribe(self._subs, self._subs_lock, callback, name="workbench-telemetry-subscriber",
                         latest_only=True)

    # --- reading --------------------------------------------------------------------------

    def latest(self) -> Sample | None:
        """The most recent sample, or ``None`` before the first."""
        return self._latest

    @property
    def gpu_devices(self) -> list[str]:
        """GPU names seen so far (``["cuda:0", "cuda:1"]``), in first-seen order."""
        with self._lock:
            return list(self._devices)

    @property
    def gpu_uuids(self) -> dict[str, str | None]:
        """``{"cuda:0": "GPU-...", ...}`` for the GPUs seen so far."""
        with self._lock:
            return dict(self._devices)

    @property
    def notices(self) -> tuple[str, ...]:
        """Sentences to show the user once, e.g. why no GPU is sampled."""
        return tuple(self._notices)

    @property
    def buffer_nbytes(self) -> int:
        """Bytes held by the ring buffers."""
        with self._lock:
            return self._ring.nbytes

    @property
    def rows(self) -> int:
        """Rows held in the ring buffer (at most :attr:`capacity`)."""
        return len(self._ring)

    @property
    def stats(self) -> dict[str, Any]:
        """What the sampler costs: samples taken, its thread's CPU seconds, tick durations.

        ``cpu_percent_of_core`` is the sampler thread's CPU time over wall time
        since :meth:`start` (subscriber callbacks run elsewhere and are not counted).
        """
        loop = self._loop
        wall = time.monotonic() - loop.started_at if loop.started_at is not None else 0.0
        with self._subs_lock:
            subs = list(self._subs)
        return {
            "samples": self._samples,
            "rows": len(self._ring),
            "capacity": self.capacity,
            "buffer_nbytes": self.buffer_nbytes,
            "thread_cpu_s": loop.thread_cpu_s,
            "wall_s": wall,
            "cpu_percent_of_core": 100.0 * loop.thread_cpu_s / wall if wall > 0 else None,
            "mean_tick_s": loop.busy_s / loop.ticks if loop.ticks else None,
            "max_tick_s": loop.max_tick_s,
            "source_errors": dict(self._source_errors),
            "subscribers": [
                {
                    "callback": repr(s.callback),
                    "delivered": s.delivered,
                    "dropped": s.dropped,
                    "errors": s.errors,
                }
                for s in subs
            ],
        }

    def _check_metric(self, metric: str, device: str | None) -> str | None:
        if metric in HOST_METRICS:
            if device not in (None, "cpu"):
                raise ConfigError(f"{metric!r} is a host metric", hint="leave device=None", metric=metric)
            return None
        if metric not in GPU_METRICS:
            raise ConfigError(
                f"unknown telemetry metric {metric!r}",
                hint=f"use one of {', '.join(HOST_METRICS + GPU_METRICS)}",
                metric=metric,
            )
        known = self.gpu_devices
        if device is None:
            if len(known) == 1:
                return known[0]
            raise ConfigError(
                f"{metric!r} is a per-GPU metric",
                hint=f"pass device= one of {', '.join(known) or '(no GPU sampled)'}",
                metric=metric,
            )
        device = normalize_device(device)
        if device not in known:
            raise DeviceNotFoundError(
                f"no telemetry for device {device!r}",
                hint=f"sampled GPUs: {', '.join(known) or 'none'}"
                + (f" ({self._notices[0]})" if self._notices else ""),
                device=device,
                available=known,
            )
        return device

    def series(
        self, metric: str, device: str | None = None, since_s: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One metric's history: ``(times, values)``, oldest first, copies.

        Args:
            metric: a host metric (``"cpu_percent"``, ``"ram_used_bytes"``,
                ``"ram_total_bytes"``, ``"process_rss_bytes"``) or a GPU metric
                (``"utilization_percent"``, ``"memory_used_bytes"``, ``"power_w"``...).
            device: the GPU for a GPU metric (may be omitted when there is one GPU).
            since_s: only samples taken after this ``time.time()`` value, e.g. the
                last time a plot fetched, or ``time.time() - 300`` for five minutes.

        Returns:
            ``times`` (float64 seconds since the epoch) and ``values`` (float32, NaN
            where the metric was missing).

        Raises:
            ConfigError: unknown metric, or a GPU metric without ``device`` among several GPUs.
            DeviceNotFoundError: a GPU that was never sampled.

        Example:
            >>> s = Sampler(interval_s=1, history_s=10)
            >>> _ = s.sample_now()
            >>> times, values = s.series("ram_used_bytes")
            >>> len(times) == len(values) == 1
            True
        """
        resolved = self._check_metric(metric, device)
        with self._lock:
            return self._ring.column(series_key(metric, resolved), since_s)

    def columns(self, since_s: float | None = None) -> Series:
        """Every series at once, the one :data:`~workbench.telemetry.series.Series` shape:
        ``(times, {"cpu_percent": ..., "cuda:0/power_w": ...})``."""
        with self._lock:
            return self._ring.columns(since_s)


# --- one sampler per process ----------------------------------------------------------------

_singleton_lock = threading.Lock()
_singleton: Sampler | None = None
_hooks_installed = False


def _forget_in_child() -> None:
    # A forked child has none of the parent's threads: let it build its own sampler.
    global _singleton
    _singleton = None


def _close_at_exit() -> None:
    sampler = _singleton
    if sampler is not None:
        sampler.close()


def get_sampler(start: bool = True) -> Sampler:
    """The process's one :class:`Sampler`, created on first use from the settings.

    Every panel should use this rather than building its own, so NVML is queried
    once per tick however many plots are open.

    Args:
        start: start it if it is not running (the usual case for a live panel).

    Example:
        >>> s = get_sampler()
        >>> s is get_sampler()
        True
        >>> reset_sampler()
    """
    global _singleton, _hooks_installed
    with _singleton_lock:
        if _singleton is None:
            _singleton = Sampler()
            if not _hooks_installed:
                _hooks_installed = True
                atexit.register(_close_at_exit)
                if hasattr(os, "register_at_fork"):
                    os.register_at_fork(after_in_child=_forget_in_child)
        sampler = _singleton
    if start:
        sampler.start()
    return sampler


def reset_sampler() -> None:
    """Close and forget the process's sampler (tests use this; the next get builds a new one)."""
    global _singleton
    with _singleton_lock:
        sampler, _singleton = _singleton, None
    if sampler is not None:
        sampler.close()
