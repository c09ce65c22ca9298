"""Exports: records, CSV that parses back, Prometheus text that parses."""

from __future__ import annotations

import csv
import io
import json
import re

from fakes.fake_pynvml import FakeGpu, FakeProcess, GiB, seq
from workbench.telemetry import (
    HostSample,
    NVMLSource,
    Sampler,
    events_to_records,
    post_event,
    to_csv,
    to_prometheus,
    to_records,
)


class FixedHost:
    name = "fixed"
    notice = None

    def sample(self) -> HostSample:
        return HostSample(
            cpu_percent=12.3, ram_used_bytes=5 * GiB + 7, ram_total_bytes=16 * GiB, process_rss_bytes=None
        )


def sampler_with_history(fake_nvml, **gpu_kwargs) -> Sampler:
    fake_nvml(
        [
            FakeGpu(utilization_percent=seq(10, 55, 90), processes=[FakeProcess(1, GiB)], **gpu_kwargs),
            FakeGpu(name="NVIDIA L4"),
        ],
        torch=True,
    )
    s = Sampler(interval_s=1, history_s=60, sources=[NVMLSource(pcie=False), FixedHost()])
    s.sample_now()
    post_event("load_started", "loading tiny", model="tiny", devices=["cuda:0"])
    s.sample_now()
    post_event("load_finished", 'loaded "tiny", 1.2 s', model="tiny", load_s=1.2)
    s.sample_now()
    return s


def test_records_interleave_samples_and_events(fake_nvml) -> None:
    s = sampler_with_history(fake_nvml)
    records = to_records(s)
    assert [r["type"] for r in records] == ["sample", "event", "sample", "event", "sample"]
    first = records[0]
    assert first["cpu_percent"] == 12.3  # float32 noise rounded away
    assert abs(first["ram_used_bytes"] - (5 * GiB + 7)) < 1024  # float32: ~7 significant digits
    assert isinstance(first["ram_total_bytes"], int)
    assert first["process_rss_bytes"] is None
    assert [r["cuda:0/utilization_percent"] for r in records if r["type"] == "sample"] == [10, 55, 90]
    assert records[1]["event_data"] == {"devices": ["cuda:0"]}
    since = to_records(s, since_s=records[1]["time_s"])
    assert [r["type"] for r in since] == ["sample", "event", "sample"]
    assert len(to_records(s, include_events=False)) == 3
    assert [r["event_kind"] for r in events_to_records()] == ["load_started", "load_finished"]


def test_csv_parses_back(fake_nvml, tmp_path) -> None:
    s = sampler_with_history(fake_nvml)
    path = tmp_path / "telemetry.csv"
    text = to_csv(s, path)
    assert path.read_text() == text
    buffer = io.StringIO()
    assert to_csv(s, buffer) == buffer.getvalue()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 5
    header = text.splitlines()[0].split(",")
    assert header[:3] == ["time_s", "type", "cpu_percent"]
    assert "cuda:1/power_w" in header
    samples = [r for r in rows if r["type"] == "sample"]
    events = [r for r in rows if r["type"] == "event"]
    assert [float(r["cuda:0/utilization_percent"]) for r in samples] == [10, 55, 90]
    assert int(samples[0]["cuda:0/memory_used_bytes"]) == GiB
    assert samples[0]["process_rss_bytes"] == ""  # missing -> empty cell
    assert events[1]["event_message"] == 'loaded "tiny", 1.2 s'  # quoting survives
    assert json.loads(events[1]["event_data"]) == {"load_s": 1.2}
    times = [float(r["time_s"]) for r in rows]
    assert times == sorted(times)


SAMPLE_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? '
    r"[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|Inf|NaN)$"
)


def test_prometheus_text_is_well_formed(fake_nvml) -> None:
    s = sampler_with_history(fake_nvml, unsupported={"power_w"})
    text = to_prometheus(s)
    assert text.endswith("\n")
    declared: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter")
            assert name not in declared
            declared[name] = kind
            continue
        assert SAMPLE_LINE.match(line), line
        name = line.split("{")[0].split(" ")[0]
        assert name in declared or name.removesuffix("_total") in declared, line  # TYPE comes first
    assert 'workbench_gpu_utilization_percent{device="cuda:0",uuid="GPU-' in text
    # And a real parser agrees on the values.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    util = {s.labels["device"]: s.value for s in families["workbench_gpu_utilization_percent"].samples}
    assert util == {"cuda:0": 90.0, "cuda:1": 0.0}
    assert [s.value for s in families["workbench_cpu_percent"].samples] == [12.3]
    assert families["workbench_events"].type == "counter"
    events = {s.labels["kind"]: s.value for s in families["workbench_events"].samples}
    assert events == {"load_started": 1, "load_finished": 1}
    total = {s.labels["device"]: s.value for s in families["workbench_gpu_memory_total_bytes"].samples}
    assert total["cuda:0"] == 24 * GiB
    clocks = families["workbench_gpu_sm_clock_hertz"].samples  # NVML's MHz scaled to the base unit
    assert all(s.value >= 1e6 for s in clocks)
    # The unsupported metric is absent for cuda:0, present for cuda:1.
    power = families["workbench_gpu_power_watts"].samples
    assert [s.labels["device"] for s in power] == ["cuda:1"]
    assert "workbench_process_rss_bytes" not in families  # missing everywhere: no family at all


def test_label_values_survive_quotes_and_newlines() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from workbench.telemetry import WorkbenchCollector
    from workbench.telemetry.prometheus import to_prometheus_text

    lease = {"gpu_uuid": "GPU-1", "device": "cuda:0", "owner": 'a"b\\c\nd', "host": "h", "pid": 42, "model": "m",
             "reserved_bytes": 3 * GiB, "heartbeat_s": 1.5}
    text = to_prometheus_text(WorkbenchCollector(lambda: None, leases=lambda: [lease]))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    [reserved] = families["workbench_gpu_lease_reserved_bytes"].samples
    assert reserved.labels["owner"] == lease["owner"]
    assert reserved.value == 3 * GiB
    assert reserved.labels["uuid"] == "GPU-1"
    assert reserved.labels["pid"] == "42"
    assert [s.value for s in families["workbench_gpu_leases"].samples] == [1]


def test_loaded_models_series() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    model = {"name": "tiny", "model": "tiny-llama", "precision": "bfloat16", "loaded": True,
             "placement": {"cuda:0": 3 * GiB, "cpu": 5}}
    text = to_prometheus(Sampler(interval_s=1, history_s=10, sources=[]), models=lambda: [model])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["workbench_models_loaded"].samples] == [1]
    placed = {s.labels["device"]: s.value for s in families["workbench_model_placement_bytes"].samples}
    assert placed == {"cuda:0": 3 * GiB, "cpu": 5}


def test_a_failing_source_leaves_the_others() -> None:
    from workbench.telemetry import WorkbenchCollector
    from workbench.telemetry.prometheus import to_prometheus_text

    def broken() -> list[dict]:
        raise OSError("lease directory unreadable")

    s = Sampler(interval_s=1, history_s=10, sources=[FixedHost()])
    s.sample_now()
    text = to_prometheus_text(WorkbenchCollector(lambda: s, leases=broken))
    assert "workbench_cpu_percent 12.3" in text
    assert "workbench_gpu_leases" not in text


def test_prometheus_before_any_sample() -> None:
    text = to_prometheus(Sampler(interval_s=1, history_s=10, sources=[]))
    assert "# TYPE workbench_events_total counter" in text
