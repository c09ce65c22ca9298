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
from workbench.telemetry.export import _labels


class FixedHost:
    name = "fixed"

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
    assert isinstance(first["ram_total_bytes"], int) and first["process_rss_bytes"] is None
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
    assert header[:3] == ["time_s", "type", "cpu_percent"] and "cuda:1/power_w" in header
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
            assert kind in ("gauge", "counter") and name not in declared
            declared[name] = kind
            continue
        assert SAMPLE_LINE.match(line), line
        assert line.split("{")[0].split(" ")[0] in declared, line  # TYPE comes first
    assert 'workbench_gpu_utilization_percent{device="cuda:0",uuid="GPU-' in text
    assert "workbench_cpu_percent 12.3" in text
    assert 'workbench_events_total{kind="load_finished"} 1' in text
    assert "workbench_gpu_memory_total_bytes{" in text and str(24 * GiB) in text
    # The unsupported metric is absent for cuda:0, present for cuda:1.
    power = [line for line in text.splitlines() if line.startswith("workbench_gpu_power_watts{")]
    assert len(power) == 1 and 'device="cuda:1"' in power[0]
    assert "workbench_process_rss_bytes" not in text  # missing everywhere: no family at all
    # And a real parser agrees.
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(text)}
    util = {s.labels["device"]: s.value for s in families["workbench_gpu_utilization_percent"].samples}
    assert util == {"cuda:0": 90.0, "cuda:1": 0.0}
    assert families["workbench_events"].type == "counter"


def test_label_values_are_escaped() -> None:
    assert _labels([("device", 'a"b\\c\nd'), ("uuid", None)]) == '{device="a\\"b\\\\c\\nd"}'


def test_prometheus_before_any_sample() -> None:
    text = to_prometheus(Sampler(interval_s=1, history_s=10, sources=[]))
    assert "# TYPE workbench_events_total counter" in text
