"""Telemetry sources over HTTP: Prometheus ``/metrics`` pages watched over time.

:class:`MetricsWatcher` holds the scrape loop (a :class:`~workbench._periodic.Periodic`) and a
bounded history; :class:`EngineWatcher` parses an engine's page (vLLM), :class:`DcgmWatcher` a
DCGM exporter's (the GPUs of other hosts). Both give their history as the sampler does, one
:data:`~workbench.telemetry.series.Series` ``(times, columns)``.

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
from typing import TYPE_CHECKING, Generic, TypeVar

from .._periodic import Periodic
from ..errors import EndpointResponseError, ServeError
from .metrics import DcgmGpu, Histogram, VllmMetrics, parse_dcgm, parse_vllm, scrape
from .series import Series, from_rows, series_key

if TYPE_CHECKING:
    from ..serve.endpoint import Endpoint

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
        fetch: ``fetch(url, timeout_s)`` -> text (default :func:`workbench.telemetry.metrics.scrape`).
        clock: wall-clock seconds stamped on each sample (default ``time.time``).
        headers: sent with each scrape (an engine's key).
        verify: called before each scrape; raises :class:`~workbench.errors.ServeError` when the
            page must not be asked for (the port is no longer the engine's): nothing is sent.
    """

    def __init__(self, url: str, parse: Callable[[str, float], T], *, name: str, interval_s: float = 2.0,
                 history: int = 1800, fetch: Fetch | None = None, clock: Callable[[], float] | None = None,
                 headers: dict[str, str] | None = None, verify: Callable[[], None] | None = None) -> None:
        self.url = url
        self._verify = verify
        self._headers = dict(headers or {})
        self.name = name
        self.interval_s = max(0.25, float(interval_s))
        self._parse = parse
        self._fetch = fetch
        self._clock = clock or time.time
        self._samples: deque[T] = deque(maxlen=max(2, int(history)))
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self._loop = Periodic(self.scrape_once, interval_s=self.interval_s, name=f"workbench-watch-{name}",
                              join_timeout_s=10.0)
        self.last_error: ServeError | None = None

    def _get(self) -> str:
        timeout_s = min(5.0, self.interval_s * 4)
        if self._verify is not None:
            self._verify()  # raises ServeError: nothing is sent
        if self._fetch is not None:
            return self._fetch(self.url, timeout_s)
        return scrape(self.url, timeout_s=timeout_s, endpoint=self.name, headers=self._headers)

    def scrape_once(self) -> T | None:
        """One scrape now; the sample is also appended to the history (``None`` when it failed)."""
        try:
            sample = self._parse(self._get(), self._clock())
        except (ServeError, ValueError) as exc:
            # A page that is not what it should be (not Prometheus text, too many GPUs) is said as
            # such, not forgotten.
            self.last_error = exc if isinstance(exc, ServeError) else EndpointResponseError(
                f"{self.url} did not give a metrics page the workbench reads: {str(exc)[:200]}",
                hint="check that the URL is the exporter's or the engine's /metrics", endpoint=self.name)
            return None
        self.last_error = None
        with self._new:
            self._samples.append(sample)
            self._new.notify_all()
        return sample

    @property
    def running(self) -> bool:
        return self._loop.running

    def start(self) -> MetricsWatcher[T]:
        """Start the background thread (again after :meth:`stop`); returns ``self``."""
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop scraping (the history stays; :meth:`start` resumes)."""
        self._loop.stop()

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
        verify: called before each scrape, e.g. :func:`workbench.serve.process.verify_engine` of
            the endpoint for an engine started here: the key goes only to a socket proven the
            engine's (once it exits, another user may bind its port).
    """

    def __init__(self, endpoint: Endpoint, *, interval_s: float = 2.0, history: int = 1800,
                 fetch: Fetch | None = None, clock: Callable[[], float] | None = None,
                 verify: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        # The engine's key goes with every scrape (vLLM leaves /metrics open; an engine may not), but to
        # an engine started here only when ``verify`` proves the port still its own before each scrape:
        # once it exits another user may bind the port (remote endpoints are the user's own address).
        local = not endpoint.is_remote and bool(endpoint.pid)
        headers = endpoint.auth_headers() if verify is not None or not local else {}
        super().__init__(metrics_url(endpoint), lambda text, t: parse_vllm(text, time_s=t), name=endpoint.name,
                         interval_s=interval_s, history=history, fetch=fetch, clock=clock,
                         headers=headers, verify=verify)

    def series(self) -> Series:
        """``(times, columns)`` for plotting, columns :data:`ENGINE_SERIES`: ``requests_running``,
        ``requests_waiting``, ``kv_cache_usage`` (0 to 1), ``generation_tokens_per_s``,
        ``ttft_p50_s`` and ``itl_p50_s``.

        The last three are between consecutive samples (NaN first); the p50s are the upper
        bound of the histogram bucket holding the median of that interval's requests (NaN
        when none finished in it), Prometheus' bucket resolution.
        """
        s = self.samples()
        rows = [{"requests_running": b.requests_running, "requests_waiting": b.requests_waiting,
                 "kv_cache_usage": b.kv_cache_usage,
                 "generation_tokens_per_s": None if a is None else b.generation_tokens_per_s(a),
                 "ttft_p50_s": None if a is None else _delta_p50_s(a.ttft, b.ttft),
                 "itl_p50_s": None if a is None else _delta_p50_s(a.itl, b.itl)}
                for a, b in zip([None, *s], s)]
        return from_rows([x.time_s for x in s], rows, ENGINE_SERIES)


#: The columns of :meth:`EngineWatcher.series`.
ENGINE_SERIES = ("requests_running", "requests_waiting", "kv_cache_usage", "generation_tokens_per_s",
                 "ttft_p50_s", "itl_p50_s")


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

    def series(self) -> Series:
        """``(times, columns)``, one row per scrape; a column per ``"HOST/gpu N/reading"`` for every
        :data:`DCGM_SERIES` reading (``utilization_percent``, ``memory_used_bytes``, ``power_w``,
        ``temperature_c``), NaN where a GPU is missing from a scrape. GPUs in first-seen order."""
        s = self.samples()
        rows = [{series_key(key, dcgm_device(g)): getattr(g, key) for g in scrape_.gpus for key in DCGM_SERIES}
                for scrape_ in s]
        return from_rows([x.time_s for x in s], rows)


def dcgm_device(gpu: DcgmGpu) -> str:
    """``"node-a/gpu 0"``: a DCGM exporter's GPU as a device of the series keys."""
    return f"{gpu.host}/gpu {gpu.gpu}"


#: The :class:`DcgmGpu` readings :meth:`DcgmWatcher.series` gives (the Telemetry panel's GPU plots).
DCGM_SERIES = ("utilization_percent", "memory_used_bytes", "power_w", "temperature_c")
