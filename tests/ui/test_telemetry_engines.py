"""The Telemetry panel plots engines' metrics and DCGM exporters' GPUs beside the local ones.

Recorded ``/metrics`` pages are served on 127.0.0.1 or handed over at the watchers' fetch
seam; the panel is driven through :meth:`tick`/:meth:`redraw` with a fake clock.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import psutil
import pytest

from fakes.clock import FakeClock
from serve.metrics_server import serve_pages
from telemetry.test_metrics import _dcgm
from telemetry.test_watch import VLLM_LATER, VLLM_V1
from ui.test_telemetry_panel import FakeHost, HandSampler
from workbench.serve.endpoint import Endpoint
from workbench.serve.registry import EndpointRegistry
from workbench.telemetry import DcgmWatcher, EngineWatcher
from workbench.ui import TelemetryPanel
from workbench.ui.figures import synced_state


class Pages:
    """Fake fetch: the pages in order (the last one repeats); readings stamped 2 s apart, ending near now."""

    def __init__(self, *pages: str) -> None:
        self.pages = list(pages)
        self.now = time.time() - 2.0 * len(pages)

    def fetch(self, url: str, timeout_s: float) -> str:
        return self.pages.pop(0) if len(self.pages) > 1 else self.pages[0]

    def clock(self) -> float:
        self.now += 2.0
        return self.now


def _by_name(fig) -> dict[str, np.ndarray]:
    return {d.name: np.asarray(d.y) for d in fig.data}


def test_engine_and_dcgm_figures_update_in_the_batched_redraw(event_log) -> None:
    clock = FakeClock()
    sampler = HandSampler(interval_s=1, history_s=60, sources=[FakeHost()])
    eng_pages = Pages(VLLM_V1, VLLM_LATER)
    engine = EngineWatcher(Endpoint(name="team-vllm", engine="remote", base_url="http://10.0.0.5:8000/v1"),
                           fetch=eng_pages.fetch, clock=eng_pages.clock)
    dcgm_pages = Pages(_dcgm({"node-a": [(97, 70000, 11000), (3, 1, 80999)]}),
                       _dcgm({"node-a": [(40, 40960, 40000), (3, 1, 80999)], "node-b": [(5, 1024, 80000)]}))
    dcgm = DcgmWatcher("http://node-a:9400/metrics", fetch=dcgm_pages.fetch, clock=dcgm_pages.clock)
    engine.scrape_once()
    dcgm.scrape_once()
    panel = TelemetryPanel(sampler=sampler, window_s=60, event_log=event_log, clock=clock, watchers=[engine],
                           dcgm_urls=[dcgm])
    _ = panel.widget
    assert list(panel.figures) == ["host", "engine:team-vllm", "dcgm:http://node-a:9400/metrics"]
    eng_fig = panel.figures["engine:team-vllm"]
    dcgm_fig = panel.figures["dcgm:http://node-a:9400/metrics"]
    assert [d.name for d in dcgm_fig.data] == ["node-a/gpu 0", "node-a/gpu 1"] * 4

    engine.scrape_once()
    dcgm.scrape_once()  # node-b appears: its lines are added
    event_log.post("engine_ready", "vllm serving team-vllm", model="team-vllm")
    clock.now = 1.0
    before = panel.redraws
    assert panel.tick()
    assert panel.redraws == before + 1
    assert panel.tick() is False  # throttled: under 0.25 s since the last redraw

    y = _by_name(eng_fig)
    assert y["running"].dtype == np.float32
    assert list(y["running"]) == [3.0, 5.0]
    assert list(y["KV cache used"]) == pytest.approx([41.0, 41.0])
    assert np.isnan(y["generated tokens/s"][0])
    assert y["generated tokens/s"][-1] == pytest.approx(300.0)
    assert y["TTFT p50"][-1] == pytest.approx(20.0)
    assert np.isnan(y["ITL p50"][-1])  # ms; no token: a gap
    # On the panel's one timeline (seconds before the newest reading of anything): 2 s apart.
    x = np.asarray(eng_fig.data[0].x)
    assert x.dtype == np.float32
    assert x[-1] <= 0
    assert x[-1] - x[0] == pytest.approx(2.0)
    # New traces: the figure is sent whole, as a new widget with every trace from its first message.
    assert panel.figures["dcgm:http://node-a:9400/metrics"] is not dcgm_fig
    assert panel.resends == 1
    assert panel.figures["engine:team-vllm"] is eng_fig  # same traces: updated in place
    dcgm_fig = panel.figures["dcgm:http://node-a:9400/metrics"]
    assert [len(d["x"]) for d in synced_state(dcgm_fig)[0]] == [len(d.x) for d in dcgm_fig.data]
    names = [d.name for d in dcgm_fig.data]
    assert names == ["node-a/gpu 0", "node-a/gpu 1", "node-b/gpu 0"] * 4
    assert list(dcgm_fig.data[0].y) == [97.0, 40.0]                    # utilisation, %
    assert float(dcgm_fig.data[3].y[-1]) == pytest.approx(40.0)       # memory used, GiB (40960 MiB)
    assert float(dcgm_fig.data[6].y[0]) == pytest.approx(312.5)       # power, W
    # The engine's event is marked on its timeline, one line per subplot.
    assert len(eng_fig.layout.shapes) == 4
    assert [a.text for a in eng_fig.layout.annotations if a.hovertext] == ["engine ready"]
    assert "team-vllm</b> 5 running" in panel.outputs.status.value
    panel.close()


def test_static_html_scrapes_a_registered_vllm_endpoint_and_a_dcgm_url(sampler, event_log) -> None:
    pages = {"/metrics": VLLM_V1, "/dcgm": _dcgm({"node-c": [(61, 2048, 79000)]})}
    server = serve_pages(pages)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    me = psutil.Process()
    EndpointRegistry().put(Endpoint(name="local-vllm", engine="vllm", base_url=f"{base}/v1", pid=os.getpid(),
                                    pid_create_time=me.create_time(), started_by_pid=os.getpid(), detach=True))
    EndpointRegistry().put(Endpoint(name="tf", engine="transformers", base_url=f"{base}/v1", pid=os.getpid(),
                                    pid_create_time=me.create_time(), started_by_pid=os.getpid(), detach=True))
    try:
        panel = TelemetryPanel(sampler=sampler, window_s=60, event_log=event_log, dcgm_urls=[f"{base}/dcgm"])
        event_log.post("engine_started", "starting vllm for local-vllm", model="local-vllm")
        html = panel.static_html()
        # Only the running vLLM endpoint is watched (transformers serve has no /metrics).
        assert panel.watched_keys() == ["engine:local-vllm", f"dcgm:{base}/dcgm"]
        assert "Engine local-vllm" in html
        assert "KV cache used" in html
        assert "TTFT p50" in html
        # Plotly's JSON writes "/" as \u002f inside <script>.
        assert "node-c\\u002fgpu 0" in html
        assert "GPUs from DCGM exporter" in html
        assert "local-vllm</b> 3 running &middot; 2 waiting &middot; KV cache 41%" in html
        assert "engine_started" in html
        fig = panel.figure(f"dcgm:{base}/dcgm")
        util = {d.name: d.y for d in fig.data[:len(fig.data) // 4]}  # the first subplot: utilisation, %
        assert float(util["node-c/gpu 0"][-1]) == 61.0
        assert util["node-c/gpu 0"].dtype == np.float32
        panel.close()
    finally:
        server.shutdown()


def test_no_engines_no_exporters_no_extra_figures(sampler, event_log) -> None:
    panel = TelemetryPanel(sampler=sampler, window_s=60, event_log=event_log)
    assert panel.watched_keys() == []
    _ = panel.widget
    assert list(panel.figures) == ["host"]
    panel.close()


def test_dcgm_urls_setting_from_a_jupyter_config_file(sampler, event_log, tmp_path, monkeypatch) -> None:
    from workbench.config import reset_settings

    url = "http://node-z:9400/metrics"
    (tmp_path / "jupyter_workbench_config.json").write_text(
        json.dumps({"WorkbenchSettings": {"dcgm_urls": [url]}}), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path))
    reset_settings()
    try:
        panel = TelemetryPanel(sampler=sampler, window_s=60, event_log=event_log, watchers=[])
        assert panel.watched_keys() == [f"dcgm:{url}"]
        panel.close()
    finally:
        reset_settings()
