"""Prometheus text from vLLM and NVIDIA's DCGM exporter, parsed into dataclasses.

The recorded pages use the metric names vLLM documents (its metrics design doc, V1 names
and the V0 ones it replaced) and dcgm-exporter's default counters with its labels.
"""

from __future__ import annotations

import numpy as np
import pytest

from serve.fake_openai import serve_in_thread
from workbench.errors import EndpointResponseError, EndpointUnreachableError
from workbench.serve.process import free_port
from workbench.telemetry import parse_dcgm, parse_vllm, scrape

VLLM_V1 = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="SmolLM2"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="SmolLM2"} 2.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="SmolLM2"} 0.41
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="SmolLM2"} 1200.0
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="SmolLM2"} 5000.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.02",model_name="SmolLM2"} 2.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.04",model_name="SmolLM2"} 6.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.1",model_name="SmolLM2"} 9.0
vllm:time_to_first_token_seconds_bucket{engine="0",le="+Inf",model_name="SmolLM2"} 10.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="SmolLM2"} 10.0
vllm:time_to_first_token_seconds_sum{engine="0",model_name="SmolLM2"} 0.5
# HELP vllm:inter_token_latency_seconds Histogram of inter-token latency in seconds.
# TYPE vllm:inter_token_latency_seconds histogram
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.01",model_name="SmolLM2"} 90.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="0.025",model_name="SmolLM2"} 100.0
vllm:inter_token_latency_seconds_bucket{engine="0",le="+Inf",model_name="SmolLM2"} 100.0
vllm:inter_token_latency_seconds_count{engine="0",model_name="SmolLM2"} 100.0
vllm:inter_token_latency_seconds_sum{engine="0",model_name="SmolLM2"} 0.8
"""

VLLM_V0 = """\
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="m"} 0.25
# TYPE vllm:time_per_output_token_seconds histogram
vllm:time_per_output_token_seconds_bucket{le="0.05",model_name="m"} 4.0
vllm:time_per_output_token_seconds_bucket{le="+Inf",model_name="m"} 4.0
vllm:time_per_output_token_seconds_count{model_name="m"} 4.0
vllm:time_per_output_token_seconds_sum{model_name="m"} 0.12
"""

_LABELS = 'gpu="{g}",UUID="GPU-{h}-{g}",device="nvidia{g}",modelName="NVIDIA H100 80GB HBM3",Hostname="{h}",' \
          'DCGM_FI_DRIVER_VERSION="550.54.15"'


def _dcgm(hosts: dict[str, list[tuple[float, int, int]]]) -> str:
    out = []
    for metric, kind, idx in [("DCGM_FI_DEV_GPU_UTIL", "gauge", 0), ("DCGM_FI_DEV_FB_USED", "gauge", 1),
                              ("DCGM_FI_DEV_FB_FREE", "gauge", 2)]:
        out.append(f"# HELP {metric} recorded\n# TYPE {metric} {kind}")
        for h, gpus in hosts.items():
            for g, row in enumerate(gpus):
                out.append(f"{metric}{{{_LABELS.format(g=g, h=h)}}} {row[idx]}")
    out.append("# HELP DCGM_FI_DEV_POWER_USAGE Power draw (in W).\n# TYPE DCGM_FI_DEV_POWER_USAGE gauge")
    out.append(f'DCGM_FI_DEV_POWER_USAGE{{{_LABELS.format(g=0, h="node-a")}}} 312.5')
    out.append("# HELP DCGM_FI_DEV_XID_ERRORS Value of the last XID error.\n# TYPE DCGM_FI_DEV_XID_ERRORS gauge")
    out.append(f'DCGM_FI_DEV_XID_ERRORS{{{_LABELS.format(g=1, h="node-a")}}} 0')
    return "\n".join(out) + "\n"


def test_vllm_v1_page() -> None:
    m = parse_vllm(VLLM_V1, time_s=100.0)
    assert (m.requests_running, m.requests_waiting, m.kv_cache_usage) == (3.0, 2.0, 0.41)
    assert (m.prompt_tokens_total, m.generation_tokens_total) == (1200.0, 5000.0)
    assert m.ttft.count == 10
    assert m.ttft.mean_s == pytest.approx(0.05)
    assert m.ttft.quantile_s(0.5) == 0.04
    assert m.ttft.quantile_s(0.95) == float("inf")
    assert m.itl.quantile_s(0.9) == 0.01
    assert m.itl.mean_s == pytest.approx(0.008)
    later = parse_vllm(VLLM_V1.replace("} 5000.0", "} 5600.0"), time_s=102.0)
    assert later.generation_tokens_per_s(m) == pytest.approx(300.0)


def test_vllm_v0_names_and_missing_metrics() -> None:
    m = parse_vllm(VLLM_V0)
    assert m.kv_cache_usage == 0.25
    assert m.itl.count == 4
    assert m.requests_running is None
    assert m.ttft is None
    assert m.generation_tokens_total is None


def test_dcgm_exporter_per_host_and_gpu() -> None:
    text = _dcgm({"node-b": [(5, 1000, 80000)], "node-a": [(97, 70000, 11000), (0, 1, 80999)]})
    gpus = parse_dcgm(text)
    assert [(g.host, g.gpu) for g in gpus] == [("node-a", "0"), ("node-a", "1"), ("node-b", "0")]
    a0 = gpus[0]
    assert a0.utilization_percent == 97
    assert a0.memory_used_bytes == 70000 * 2**20
    assert a0.memory_total_bytes == 81000 * 2**20
    assert a0.power_w == 312.5
    assert a0.uuid == "GPU-node-a-0"
    assert a0.model_name == "NVIDIA H100 80GB HBM3"
    assert gpus[1].extra == {"DCGM_FI_DEV_XID_ERRORS": 0.0}
    assert gpus[1].power_w is None


def test_scrape_errors_are_typed() -> None:
    srv, _ = serve_in_thread()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        assert parse_vllm(scrape(base + "/metrics")).requests_running == 1.0
        with pytest.raises(EndpointResponseError, match="HTTP 404"):
            scrape(base + "/nothing")
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(EndpointUnreachableError):
        scrape(f"http://127.0.0.1:{free_port()}/metrics", timeout_s=2)


def test_watcher_keeps_a_bounded_history_and_survives_a_missing_endpoint() -> None:
    from workbench.serve import Endpoint
    from workbench.telemetry import EngineWatcher

    srv, _ = serve_in_thread()
    ep = Endpoint("fake", "remote", f"http://127.0.0.1:{srv.server_address[1]}/v1")
    w = EngineWatcher(ep, interval_s=0.25, history=3).start()
    try:
        assert w.wait_for(3, timeout_s=30)
    finally:
        w.stop()
        srv.shutdown()
        srv.server_close()
    times, cols = w.series()
    assert len(times) == 3
    assert cols["requests_running"].tolist() == [1.0, 1.0, 1.0]
    assert np.isnan(cols["generation_tokens_per_s"][0])
    assert (cols["generation_tokens_per_s"][1:] > 0).all()

    gone = EngineWatcher(Endpoint("gone", "remote", f"http://127.0.0.1:{free_port()}/v1"))
    assert gone.scrape_once() is None
    assert isinstance(gone.last_error, EndpointUnreachableError)
    assert gone.samples() == []


def test_a_dcgm_page_naming_too_many_gpus_is_refused_not_kept() -> None:
    from workbench.telemetry.metrics import MAX_DCGM_GPUS, parse_dcgm

    # (_dcgm also reports node-a's GPUs 0 and 1: one host of MAX_DCGM_GPUS GPUs is the most kept.)
    assert len(parse_dcgm(_dcgm({"node-a": [(1, 2, 3)] * MAX_DCGM_GPUS}))) == MAX_DCGM_GPUS
    hosts = {f"node-{i}": [(1, 2, 3)] for i in range(MAX_DCGM_GPUS + 1)}
    with pytest.raises(ValueError, match=f"more than {MAX_DCGM_GPUS} GPUs"):
        parse_dcgm(_dcgm(hosts))
