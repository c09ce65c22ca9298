"""Watchers scrape recorded ``/metrics`` pages into bounded histories: vLLM engines and DCGM exporters."""

from __future__ import annotations

import pytest

from serve.metrics_server import serve_pages
from serve.test_metrics import VLLM_V1, _dcgm
from workbench.errors import EndpointResponseError
from workbench.serve import DcgmWatcher, EngineWatcher
from workbench.serve.endpoint import Endpoint

# Two scrapes 2 s apart: 600 more tokens generated; of the 10 first tokens in between, 7 within 20 ms.
VLLM_LATER = (VLLM_V1.replace("} 5000.0", "} 5600.0").replace("} 3.0", "} 5.0")
              .replace('le="0.02",model_name="SmolLM2"} 2.0', 'le="0.02",model_name="SmolLM2"} 9.0')
              .replace('le="0.04",model_name="SmolLM2"} 6.0', 'le="0.04",model_name="SmolLM2"} 14.0')
              .replace('le="0.1",model_name="SmolLM2"} 9.0', 'le="0.1",model_name="SmolLM2"} 19.0')
              .replace('le="+Inf",model_name="SmolLM2"} 10.0', 'le="+Inf",model_name="SmolLM2"} 20.0')
              .replace('_seconds_count{engine="0",model_name="SmolLM2"} 10.0',
                       '_seconds_count{engine="0",model_name="SmolLM2"} 20.0'))


class Pages:
    """A fake fetch at the watcher's seam: hands out the pages in order, and a clock 2 s a step."""

    def __init__(self, *pages: str) -> None:
        self.pages = list(pages)
        self.urls: list[str] = []
        self.now = 1000.0

    def fetch(self, url: str, timeout_s: float) -> str:
        self.urls.append(url)
        return self.pages.pop(0)

    def clock(self) -> float:
        self.now += 2.0
        return self.now


def test_engine_watcher_series_from_two_scrapes() -> None:
    pages = Pages(VLLM_V1, VLLM_LATER)
    ep = Endpoint(name="team-vllm", engine="remote", base_url="http://10.0.0.5:8000/v1")
    w = EngineWatcher(ep, fetch=pages.fetch, clock=pages.clock, history=5)
    assert w.scrape_once() is not None and w.scrape_once() is not None
    assert pages.urls == ["http://10.0.0.5:8000/metrics"] * 2
    s = w.series()
    assert s["time_s"] == [1002.0, 1004.0]
    assert s["requests_running"] == [3.0, 5.0] and s["kv_cache_usage"] == [0.41, 0.41]
    assert s["generation_tokens_per_s"] == [None, pytest.approx(300.0)]
    # Between the scrapes: 7 of 10 first tokens under 20 ms, so the interval's median bucket is 0.02 s
    # (the cumulative histogram's own median is 0.04 s: the delta is what is plotted).
    assert s["ttft_p50_s"] == [None, 0.02] and w.samples()[-1].ttft.quantile_s(0.5) == 0.04
    assert s["itl_p50_s"] == [None, None]  # no token in between: no latency, not zero


def test_history_is_bounded() -> None:
    pages = Pages(*[VLLM_V1] * 7)
    w = EngineWatcher(Endpoint(name="e", engine="remote", base_url="http://h:1/v1"), fetch=pages.fetch,
                      clock=pages.clock, history=3)
    for _ in range(7):
        w.scrape_once()
    assert len(w.samples()) == 3 and w.series()["time_s"] == [1010.0, 1012.0, 1014.0]


def test_dcgm_watcher_scrapes_a_loopback_exporter() -> None:
    pages = {"/metrics": _dcgm({"node-a": [(97, 70000, 11000), (3, 1, 80999)], "node-b": [(5, 1000, 80000)]})}
    server = serve_pages(pages)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        w = DcgmWatcher(url)
        assert w.scrape_once() is not None
        pages["/metrics"] = _dcgm({"node-a": [(50, 60000, 21000), (4, 1, 80999)], "node-b": [(6, 1000, 80000)]})
        assert w.scrape_once() is not None
        s = w.series()
        assert list(s) == [("node-a", "0"), ("node-a", "1"), ("node-b", "0")]
        assert s[("node-a", "0")]["utilization_percent"] == [97.0, 50.0]
        assert s[("node-a", "0")]["memory_used_bytes"] == [70000 * 2**20, 60000 * 2**20]
        assert s[("node-a", "0")]["power_w"] == [312.5, 312.5] and s[("node-b", "0")]["power_w"] == [None, None]
        # A failing exporter is remembered, not raised, and the history stays.
        bad = DcgmWatcher(url.replace("/metrics", "/nothing"))
        assert bad.scrape_once() is None and isinstance(bad.last_error, EndpointResponseError)
        assert "404" in str(bad.last_error) and bad.samples() == []
    finally:
        server.shutdown()

