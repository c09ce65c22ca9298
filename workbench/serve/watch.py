"""Watch Prometheus ``/metrics`` pages over time: one background thread, a bounded history.

:class:`MetricsWatcher` holds the scrape loop; :class:`EngineWatcher` parses an engine's
page (vLLM), :class:`DcgmWatcher` a DCGM exporter's (the GPUs of other hosts).

Example:
    >>> w = EngineWatcher(ep, interval_s=2.0).start()        # doctest: +SKIP
    >>> w.samples()[-1].kv_cache_usage                        # doctest: +SKIP
    0.12
    >>> w.stop()                                              # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import ServeError
from .endpoint import Endpoint
from .metrics import DcgmGpu, Histogram, VllmMetrics, parse_dcgm, parse_vllm, scrape

T = TypeVar("T")
#: ``fetch(url, timeout_s)`` -> page text; the seam tests replace (default :func:`scrape`).
Fetch = Callable[[str, float], str]


def metrics_url(endpoint: Endpoint) -> str:
    """``http://host:port/metrics`` for an endpoint whose base URL ends in ``/v1``."""
    return endpoint.base_url.rsplit("/v1", 1)[0] + "/metrics"


class MetricsWatcher(Generic[T]):
    """Scrape ``url`` every ``interval_s`` into a ring of parsed samples.

    A failed scrape is remembered in :attr:`last_error` (the server may be restarting,
    or not export metrics at all: ``transformers serve`` does not) and the watcher
    goes on; it never raises from its thread.

    Args:
        url: the ``/metrics`` page.
        parse: ``parse(text, time_s)`` -> sample; raises ``ValueError`` on a page that is not Prometheus text.
        name: shown in thread names and errors.
        interval_s: seconds between scrapes (at least 0.25).
        history: samples kept.
        fetch: ``fetch(url, timeout_s)`` -> text (default :func:`workbench.serve.metrics.scrape`).
        clock: wall-clock seconds stamped on each sample (default ``time.time``).
    """

    def __init__(self, url: str, parse: Callable[[str, float], T], *, name: str, interval_s: float = 2.0,
                 history: int = 1800, fetch: Fetch | None = None, clock: Callable[[], float] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.url = url
        self._headers = dict(headers or {})
        self.name = name
        self.interval_s = max(0.25, float(interval_s))
        self._parse = parse
        self._fetch = fetch
        self._clock = clock or time.time
        self._samples: deque[T] = deque(maxlen=max(2, int(history)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._new = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.last_error: ServeError | None = None

    def _get(self) -> str:
        timeout_s = min(5.0, self.interval_s * 4)
        if self._fetch is not None:
            return self._fetch(self.url, timeout_s)
        return scrape(self.url, timeout_s=timeout_s, endpoint=self.name, headers=self._headers)

    def scrape_once(self) -> T | None:
        """One scrape now; the sample is also appended to the history (``None`` when it failed)."""
        try:
            sample = self._parse(self._get(), self._clock())
        except (ServeError, ValueError) as exc:
            self.last_error = exc if isinstance(exc, ServeError) else None
            return None
        self.last_error = None
        with self._new:
            self._samples.append(sample)
            self._new.notify_all()
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.interval_s)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> MetricsWatcher[T]:
        """Start the background thread (once); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"workbench-watch-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scraping (the history stays)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def samples(self) -> list[T]:
        with self._lock:
            return list(self._samples)

    def wait_for(self, count: int, timeout_s: float) -> bool:
        """Block until ``count`` samples are held or ``timeout_s`` passes; returns whether they are."""
        deadline = time.monotonic() + timeout_s
        with self._new:
            while len(self._samples) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._new.wait(left)
        return True


def _delta_p50_s(prev: Histogram | None, cur: Histogram | None) -> float | None:
    """Median (bucket upper bound, s) of the observations made between two scrapes of a cumulative histogram."""
    if prev is None or cur is None:
        return None
    before = dict(prev.buckets)
    buckets = tuple((le, n - before.get(le, 0.0)) for le, n in cur.buckets)
    return Histogram(buckets, cur.count - prev.count, cur.sum_s - prev.sum_s).quantile_s(0.5)


class EngineWatcher(MetricsWatcher[VllmMetrics]):
    """Scrape an engine's ``/metrics`` (vLLM's names) into a ring of :class:`VllmMetrics`.

    Args:
        endpoint: the endpoint to watch; the page is :func:`metrics_url` of it.
        interval_s, history, fetch, clock: as :class:`MetricsWatcher`.
    """

    def __init__(self, endpoint: Endpoint, *, interval_s: float = 2.0, history: int = 1800,
                 fetch: Fetch | None = None, clock: Callable[[], float] | None = None) -> None:
        self.endpoint = endpoint
        # The engine's key goes with every scrape (vLLM leaves /metrics open; an engine may not).
        super().__init__(metrics_url(endpoint), lambda text, t: parse_vllm(text, time_s=t), name=endpoint.name,
                         interval_s=interval_s, history=history, fetch=fetch, clock=clock,
                         headers=endpoint.auth_headers())

    def series(self) -> dict[str, list[Any]]:
        """Columns for plotting: ``time_s``, ``requests_running``, ``requests_waiting``,
        ``kv_cache_usage`` (0 to 1), ``generation_tokens_per_s``, ``ttft_p50_s`` and ``itl_p50_s``.

        The last three are between consecutive samples (``None`` first); the p50s are the
        upper bound of the histogram bucket holding the median of that interval's requests
        (``None`` when none finished in it), Prometheus' bucket resolution.
        """
        s = self.samples()
        pairs = list(zip(s, s[1:]))
        return {
            "time_s": [x.time_s for x in s],
            "requests_running": [x.requests_running for x in s],
            "requests_waiting": [x.requests_waiting for x in s],
            "kv_cache_usage": [x.kv_cache_usage for x in s],
            "generation_tokens_per_s": [None] + [b.generation_tokens_per_s(a) for a, b in pairs],
            "ttft_p50_s": [None] + [_delta_p50_s(a.ttft, b.ttft) for a, b in pairs],
            "itl_p50_s": [None] + [_delta_p50_s(a.itl, b.itl) for a, b in pairs],
        }


@dataclass(frozen=True)
class DcgmScrape:
    """One scrape of a DCGM exporter: every ``(host, gpu)`` it reported, at ``time_s`` (``time.time()``)."""

    time_s: float
    gpus: tuple[DcgmGpu, ...]


class DcgmWatcher(MetricsWatcher[DcgmScrape]):
    """Scrape a DCGM exporter (``http://node:9400/metrics``) into a ring of :class:`DcgmScrape`.

    Args:
        url: the exporter's ``/metrics`` page.
        interval_s, history, fetch, clock: as :class:`MetricsWatcher`.
    """

    def __init__(self, url: str, *, interval_s: float = 2.0, history: int = 1800, fetch: Fetch | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(url, lambda text, t: DcgmScrape(t, tuple(parse_dcgm(text))), name=url,
                         interval_s=interval_s, history=history, fetch=fetch, clock=clock)

    def series(self) -> dict[tuple[str, str], dict[str, list[Any]]]:
        """Per ``(host, gpu)``: columns ``time_s`` and every :class:`DcgmGpu` reading plotted
        (``utilization_percent``, ``memory_used_bytes``, ``power_w``, ``temperature_c``);
        a GPU missing from a scrape has no row for it."""
        out: dict[tuple[str, str], dict[str, list[Any]]] = {}
        for scrape_ in self.samples():
            for g in scrape_.gpus:
                cols = out.setdefault((g.host, g.gpu), {k: [] for k in ("time_s", *DCGM_SERIES)})
                cols["time_s"].append(scrape_.time_s)
                for key in DCGM_SERIES:
                    cols[key].append(getattr(g, key))
        return out


#: The :class:`DcgmGpu` readings :meth:`DcgmWatcher.series` gives (the Telemetry panel's GPU plots).
DCGM_SERIES = ("utilization_percent", "memory_used_bytes", "power_w", "temperature_c")
