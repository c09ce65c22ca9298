"""Watchers scrape recorded ``/metrics`` pages into bounded histories: vLLM engines and DCGM exporters."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from serve.metrics_server import serve_pages
from telemetry.test_metrics import VLLM_V1, _dcgm
from workbench.errors import EndpointResponseError
from workbench.serve.endpoint import Endpoint
from workbench.telemetry import DcgmWatcher, EngineWatcher
from workbench.telemetry.series import devices_of
from workbench.telemetry.watch import ENGINE_SERIES

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
    assert w.scrape_once() is not None
    assert w.scrape_once() is not None
    assert pages.urls == ["http://10.0.0.5:8000/metrics"] * 2
    times, cols = w.series()
    assert (times.dtype, times.tolist()) == (np.float64, [1002.0, 1004.0])
    assert list(cols) == list(ENGINE_SERIES)
    assert {cols[k].dtype for k in cols} == {np.dtype(np.float32)}
    assert cols["requests_running"].tolist() == [3.0, 5.0]
    assert cols["kv_cache_usage"].tolist() == pytest.approx([0.41, 0.41])
    assert np.isnan(cols["generation_tokens_per_s"][0])
    assert cols["generation_tokens_per_s"][1] == pytest.approx(300.0)
    # Between the scrapes: 7 of 10 first tokens under 20 ms, so the interval's median bucket is 0.02 s
    # (the cumulative histogram's own median is 0.04 s: the delta is what is plotted).
    assert np.isnan(cols["ttft_p50_s"][0])
    assert cols["ttft_p50_s"][1] == pytest.approx(0.02)
    assert w.samples()[-1].ttft.quantile_s(0.5) == 0.04
    assert np.isnan(cols["itl_p50_s"]).all()  # no token in between: no latency, not zero


def test_history_is_bounded() -> None:
    pages = Pages(*[VLLM_V1] * 7)
    w = EngineWatcher(Endpoint(name="e", engine="remote", base_url="http://h:1/v1"), fetch=pages.fetch,
                      clock=pages.clock, history=3)
    for _ in range(7):
        w.scrape_once()
    assert len(w.samples()) == 3
    assert w.series()[0].tolist() == [1010.0, 1012.0, 1014.0]


def test_a_stopped_watcher_starts_again() -> None:
    """stop() then start() scrapes again (the hand-written loop kept its stop flag set and never did)."""
    scraped = threading.Semaphore(0)

    def fetch(url: str, timeout_s: float) -> str:
        scraped.release()
        return VLLM_V1

    w = EngineWatcher(Endpoint(name="e", engine="remote", base_url="http://h:1/v1"), fetch=fetch, interval_s=60)
    w.start()
    assert scraped.acquire(timeout=10)
    w.stop()
    assert w.running is False
    w.start()
    try:
        assert scraped.acquire(timeout=10)  # the restarted thread scrapes at once
        assert w.running
    finally:
        w.stop()
    assert len(w.samples()) == 2


def test_dcgm_watcher_scrapes_a_loopback_exporter() -> None:
    pages = {"/metrics": _dcgm({"node-a": [(97, 70000, 11000), (3, 1, 80999)], "node-b": [(5, 1000, 80000)]})}
    server = serve_pages(pages)
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        w = DcgmWatcher(url)
        assert w.scrape_once() is not None
        pages["/metrics"] = _dcgm({"node-a": [(50, 60000, 21000), (4, 1, 80999)], "node-b": [(6, 1000, 80000)]})
        assert w.scrape_once() is not None
        times, cols = w.series()
        assert len(times) == 2
        assert devices_of(cols) == ["node-a/gpu 0", "node-a/gpu 1", "node-b/gpu 0"]
        assert cols["node-a/gpu 0/utilization_percent"].tolist() == [97.0, 50.0]
        assert cols["node-a/gpu 0/memory_used_bytes"].tolist() == [70000 * 2**20, 60000 * 2**20]
        assert cols["node-a/gpu 0/power_w"].tolist() == [312.5, 312.5]
        assert np.isnan(cols["node-b/gpu 0/power_w"]).all()
        # A failing exporter is remembered, not raised, and the history stays.
        bad = DcgmWatcher(url.replace("/metrics", "/nothing"))
        assert bad.scrape_once() is None
        assert isinstance(bad.last_error, EndpointResponseError)
        assert "404" in str(bad.last_error)
        assert bad.samples() == []
    finally:
        server.shutdown()



def test_a_page_that_is_no_metrics_page_is_said_not_forgotten() -> None:
    from workbench.telemetry.metrics import MAX_DCGM_GPUS

    too_many = _dcgm({f"node-{i}": [(1, 2, 3)] for i in range(MAX_DCGM_GPUS + 1)})
    w = DcgmWatcher("http://h:9400/metrics", fetch=lambda url, timeout_s: too_many)
    assert w.scrape_once() is None
    assert isinstance(w.last_error, EndpointResponseError)
    assert f"more than {MAX_DCGM_GPUS} GPUs" in str(w.last_error)


def test_the_engine_key_goes_to_a_local_engine_only_with_a_proof_of_its_port(monkeypatch) -> None:
    import workbench.telemetry.watch as watch

    sent: list[dict] = []
    monkeypatch.setattr(watch, "scrape", lambda url, timeout_s, endpoint, headers: sent.append(headers) or VLLM_V1)
    local = Endpoint(name="e", engine="vllm", base_url="http://127.0.0.1:1/v1", pid=os.getpid())
    monkeypatch.setattr(Endpoint, "auth_headers", lambda self: {"Authorization": "Bearer k"})
    EngineWatcher(local).scrape_once()
    checked: list[str] = []
    EngineWatcher(local, verify=lambda: checked.append("proved")).scrape_once()
    EngineWatcher(Endpoint(name="r", engine="remote", base_url="http://10.0.0.5:8000/v1")).scrape_once()
    assert sent == [{}, {"Authorization": "Bearer k"}, {"Authorization": "Bearer k"}]
    assert checked == ["proved"]
