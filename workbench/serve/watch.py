"""Watch an engine's Prometheus metrics over time: one background thread, a bounded history.

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
from typing import Any

from ..errors import ServeError
from .endpoint import Endpoint
from .metrics import VllmMetrics, parse_vllm, scrape


def metrics_url(endpoint: Endpoint) -> str:
    """``http://host:port/metrics`` for an endpoint whose base URL ends in ``/v1``."""
    return endpoint.base_url.rsplit("/v1", 1)[0] + "/metrics"


class EngineWatcher:
    """Scrape ``/metrics`` every ``interval_s`` into a ring of :class:`VllmMetrics`.

    A failed scrape is remembered in :attr:`last_error` (the engine may be restarting,
    or not export metrics at all: ``transformers serve`` does not) and the watcher
    goes on; it never raises from its thread.

    Args:
        endpoint: the endpoint to watch.
        interval_s: seconds between scrapes (at least 0.25).
        history: samples kept.
    """

    def __init__(self, endpoint: Endpoint, *, interval_s: float = 2.0, history: int = 1800) -> None:
        self.endpoint = endpoint
        self.url = metrics_url(endpoint)
        self.interval_s = max(0.25, float(interval_s))
        self._samples: deque[VllmMetrics] = deque(maxlen=max(2, int(history)))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._new = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.last_error: ServeError | None = None

    def scrape_once(self) -> VllmMetrics | None:
        """One scrape now; the sample is also appended to the history."""
        try:
            sample = parse_vllm(scrape(self.url, timeout_s=min(5.0, self.interval_s * 4), endpoint=self.endpoint.name))
        except (ServeError, ValueError) as exc:
            self.last_error = exc if isinstance(exc, ServeError) else None
            return None
        with self._new:
            self._samples.append(sample)
            self._new.notify_all()
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scrape_once()
            self._stop.wait(self.interval_s)

    def start(self) -> EngineWatcher:
        """Start the background thread (once); returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"workbench-watch-{self.endpoint.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scraping (the history stays)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def samples(self) -> list[VllmMetrics]:
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

    def series(self) -> dict[str, list[Any]]:
        """Columns for plotting: ``time_s``, ``requests_running``, ``requests_waiting``,
        ``kv_cache_usage``, ``generation_tokens_per_s`` (between consecutive samples; ``None`` first)."""
        s = self.samples()
        return {
            "time_s": [x.time_s for x in s],
            "requests_running": [x.requests_running for x in s],
            "requests_waiting": [x.requests_waiting for x in s],
            "kv_cache_usage": [x.kv_cache_usage for x in s],
            "generation_tokens_per_s": [None] + [b.generation_tokens_per_s(a) for a, b in zip(s, s[1:])],
        }
