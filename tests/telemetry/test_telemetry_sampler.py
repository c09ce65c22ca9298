"""The sampler: sources, degradation, ring-buffer bounds, subscriber isolation, the singleton."""

from __future__ import annotations

import logging
import math
import threading
import time

import numpy as np
import pytest

from fakes.fake_pynvml import FakeGpu, FakeProcess, GiB, NVMLError_GpuIsLost, install_fake_torch_cuda, seq
from workbench.config import reset_settings
from workbench.devices import nvml_status
from workbench.errors import ConfigError, DeviceNotFoundError
from workbench.telemetry import (
    GPU_METRICS,
    HostSample,
    NVMLSource,
    PsutilSource,
    Sample,
    Sampler,
    get_sampler,
    reset_sampler,
)
from workbench.telemetry import sampler as sampler_module


class CountingSource:
    """A cheap, deterministic host source: cpu_percent is the sample number."""

    name = "counting"
    notice = None

    def __init__(self) -> None:
        self.n = 0

    def sample(self) -> HostSample:
        self.n += 1
        return HostSample(
            cpu_percent=float(self.n), ram_used_bytes=self.n, ram_total_bytes=100, process_rss_bytes=1
        )


class RaisingSource:
    name = "raising"
    notice = None

    def sample(self) -> HostSample:
        raise RuntimeError("sensor on fire")


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# --- construction ---------------------------------------------------------------------------


def test_interval_from_settings_is_bounded_but_explicit_may_be_shorter(monkeypatch) -> None:
    # The setting's trait refuses values outside [0.25, 60] (tests/test_config.py covers the
    # message); an explicit interval may go down to 0.01 s for tests and benchmarks.
    for bad in ("0.01", "1000"):
        monkeypatch.setenv("WORKBENCH_TELEMETRY_INTERVAL", bad)
        reset_settings()
        with pytest.raises(ConfigError, match="WORKBENCH_TELEMETRY_INTERVAL"):
            Sampler(history_s=10)
    monkeypatch.setenv("WORKBENCH_TELEMETRY_INTERVAL", "0.25")
    reset_settings()
    assert Sampler(history_s=10).interval_s == 0.25
    monkeypatch.delenv("WORKBENCH_TELEMETRY_INTERVAL")
    reset_settings()
    default = Sampler(sources=[])
    assert default.interval_s == 1.0
    assert default.history_s == 86_400
    assert default.capacity == 86_400
    assert Sampler(interval_s=0.05, history_s=1).capacity == 20
    assert Sampler(interval_s=0.25, history_s=10 * 86_400).capacity == sampler_module.MAX_ROWS
    for bad in (0, -1, 0.001, 61, float("nan")):
        with pytest.raises(ConfigError):
            Sampler(interval_s=bad, history_s=10)
    with pytest.raises(ConfigError):
        Sampler(interval_s=1, history_s=0)


# --- what is sampled --------------------------------------------------------------------------


def test_gpu_metrics_in_workbench_units(fake_nvml) -> None:
    fake = fake_nvml(
        [
            FakeGpu(
                power_w=123.456,
                power_limit_w=350,
                pcie_rx_bytes_s=10 * 2**20,
                pcie_tx_bytes_s=2048,
                processes=[FakeProcess(77, 3 * GiB)],
            ),
            FakeGpu(),
        ],
        torch=True,
    )
    s = Sampler(interval_s=1, history_s=10, sources=[NVMLSource(), PsutilSource()])
    sample = s.sample_now()
    assert [g.device for g in sample.gpus] == ["cuda:0", "cuda:1"]
    g0 = sample.gpu("cuda:0")
    assert g0.uuid == fake.gpus[0].uuid
    assert g0.power_w == pytest.approx(123.456)
    assert g0.power_limit_w == 350
    assert g0.pcie_rx_bytes_s == 10 * 2**20
    assert g0.pcie_tx_bytes_s == 2048
    assert g0.memory_used_bytes == 3 * GiB
    assert g0.memory_total_bytes == 24 * GiB
    assert g0.processes == ((77, 3 * GiB),)
    assert g0.temperature_c == 40
    assert g0.sm_clock_mhz == 1410
    assert g0.mem_clock_mhz == 6251
    assert g0.power_str == "123 / 350 W"
    assert g0.memory_used_str == "3.0 GiB"
    assert sample.ram_total_bytes > 0
    assert sample.process_rss_bytes > 0
    assert s.gpu_devices == ["cuda:0", "cuda:1"]
    assert s.gpu_uuids["cuda:1"] == fake.gpus[1].uuid
    assert s.notices == ()


def test_sampler_never_imports_torch_but_rematches_once_torch_is_there(fake_nvml, monkeypatch) -> None:
    fake = fake_nvml([FakeGpu(name="NVIDIA L4"), FakeGpu(name="NVIDIA H200")])
    cuda = fake.torch_cuda(order=[1, 0])  # CUDA numbers the faster H200 first
    cuda.imported = False  # installed, not imported yet
    install_fake_torch_cuda(monkeypatch, cuda)
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # keep the mixed-boards note quiet
    s = Sampler(interval_s=1, history_s=10, sources=[NVMLSource(pcie=False, processes=False)])
    first = s.sample_now()
    assert [g.uuid for g in first.gpus] == [fake.gpus[0].uuid, fake.gpus[1].uuid]  # NVML order for now
    assert cuda.calls["get_device_properties"] == 0  # torch was not touched
    cuda.imported = True  # the runtime imported torch
    second = s.sample_now()
    assert [g.uuid for g in second.gpus] == [fake.gpus[1].uuid, fake.gpus[0].uuid]
    assert s.gpu_uuids["cuda:0"] == fake.gpus[1].uuid
    calls = cuda.calls["get_device_properties"]
    s.sample_now()
    assert cuda.calls["get_device_properties"] == calls  # matched once, not every tick


def test_values_that_change_over_time(fake_nvml) -> None:
    fake_nvml([FakeGpu(utilization_percent=seq(10, 20, 30), power_w=seq(50, 150))])
    s = Sampler(interval_s=1, history_s=10, sources=[NVMLSource(processes=False)])
    for _ in range(4):
        s.sample_now()
    _times, util = s.series("utilization_percent")  # one GPU: device may be omitted
    assert util.dtype == np.float32
    assert util.tolist() == [10, 20, 30, 30]
    assert s.series("power_w", "cuda:0")[1].tolist() == [50, 150, 150, 150]


def test_unsupported_fields_are_none_and_nan(fake_nvml) -> None:
    fake_nvml([FakeGpu(unsupported={"power_w", "pcie_rx_bytes_s", "pcie_tx_bytes_s", "processes"})])
    s = Sampler(interval_s=1, history_s=10, sources=[NVMLSource()])
    g = s.sample_now().gpus[0]
    assert g.power_w is None
    assert g.pcie_rx_bytes_s is None
    assert g.processes is None
    assert g.power_str == "N/A"
    assert g.utilization_percent == 0
    assert math.isnan(s.series("power_w")[1][0])


def test_errors_mid_run_do_not_stop_sampling(fake_nvml) -> None:
    fake = fake_nvml([FakeGpu(power_w=100), FakeGpu(power_w=200)], torch=True)
    s = Sampler(interval_s=0.02, history_s=60)
    s.start()
    wait_until(lambda: s.stats["samples"] >= 3)
    fake.gpus[0].fail("power_w", NVMLError_GpuIsLost)  # one field on one GPU
    n = s.stats["samples"]
    wait_until(lambda: s.stats["samples"] >= n + 3)
    assert s.latest().gpu("cuda:0").power_w is None
    assert s.latest().gpu("cuda:1").power_w == 200
    fake.fail()  # the whole driver goes away
    n = s.stats["samples"]
    wait_until(lambda: s.stats["samples"] >= n + 3)
    latest = s.latest()
    assert all(getattr(g, m) is None for g in latest.gpus for m in GPU_METRICS)
    assert latest.ram_total_bytes > 0  # host telemetry carries on
    fake.heal()
    fake.gpus[0].heal()
    n = s.stats["samples"]
    wait_until(lambda: s.stats["samples"] >= n + 2)
    assert s.latest().gpu("cuda:0").power_w == 100
    assert s.running
    s.stop()
    _t, power = s.series("power_w", "cuda:1")
    assert np.isnan(power).any()
    assert (power == 200).any()


def test_a_raising_source_is_counted_and_logged_once(caplog) -> None:
    s = Sampler(interval_s=1, history_s=10, sources=[RaisingSource(), CountingSource()])
    with caplog.at_level(logging.WARNING, logger="workbench.telemetry.sampler"):
        for _ in range(5):
            sample = s.sample_now()
    assert sample.cpu_percent == 5.0
    assert s.stats["source_errors"] == {"raising": 5}
    assert sum("telemetry source raising failed" in r.getMessage() for r in caplog.records) == 1


def test_library_missing_degrades_to_cpu_with_a_notice(no_nvml_driver, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="workbench.telemetry"):
        a = Sampler(interval_s=1, history_s=10)
        a.sample_now()
        a.sample_now()
        b = Sampler(interval_s=1, history_s=10)
        sample = b.sample_now()
    assert sample.gpus == ()
    assert sample.ram_total_bytes > 0
    # The notice is data, once per sampler, for whoever shows it (the panel's status, REST's "notices"),
    # not a warning on stderr under the cell.
    assert a.notices == ("NVIDIA driver not found: showing CPU and RAM only",)
    assert b.notices == a.notices
    assert [r.levelname for r in caplog.records if "NVIDIA driver not found" in r.getMessage()] == ["INFO"] * 2
    with pytest.raises(DeviceNotFoundError, match="NVIDIA driver not found"):
        b.series("power_w", "cuda:0")


def test_real_path_on_this_machine() -> None:
    s = Sampler(interval_s=1, history_s=10)
    sample = s.sample_now()
    assert isinstance(sample, Sample)
    assert sample.ram_total_bytes > 0
    assert sample.process_rss_bytes > 0
    if not nvml_status().available:
        assert sample.gpus == ()
        assert s.notices
        assert "CPU and RAM only" in s.notices[0]


def test_psutil_source_measures_cpu_between_its_own_samples() -> None:
    src = PsutilSource()
    first = src.sample()
    assert first.cpu_percent is None  # no baseline yet: unknown, not a fake 0
    sum(i * i for i in range(200_000))  # let some CPU time pass
    second = src.sample()
    assert second.cpu_percent is None or 0.0 <= second.cpu_percent <= 100.0
    assert second.ram_used_bytes < second.ram_total_bytes


# --- series -------------------------------------------------------------------------------------


def test_series_arguments_and_since(fake_nvml) -> None:
    fake_nvml([FakeGpu(), FakeGpu()], torch=True)
    s = Sampler(interval_s=1, history_s=10, sources=[NVMLSource(pcie=False), CountingSource()])
    first = s.sample_now()
    s.sample_now()
    third = s.sample_now()
    times, values = s.series("cpu_percent")
    assert times.dtype == np.float64
    assert values.tolist() == [1, 2, 3]
    assert times[0] == first.time_s
    assert times[-1] == third.time_s
    assert s.series("cpu_percent", since_s=first.time_s)[1].tolist() == [2, 3]
    assert len(s.series("utilization_percent", "cuda:1")[0]) == 3
    with pytest.raises(ConfigError, match="per-GPU metric"):
        s.series("utilization_percent")
    with pytest.raises(ConfigError, match="unknown telemetry metric"):
        s.series("fan_speed")
    with pytest.raises(DeviceNotFoundError, match="sampled GPUs: cuda:0, cuda:1"):
        s.series("power_w", "cuda:7")
    times, columns = s.columns()
    assert len(times) == 3
    assert "cuda:1/power_w" in columns
    assert "cpu_percent" in columns


# --- bounded memory -------------------------------------------------------------------------------


def test_ring_buffer_drops_the_oldest_and_stays_bounded() -> None:
    s = Sampler(interval_s=0.01, history_s=1, sources=[CountingSource()])
    assert s.capacity == 100
    s.sample_now()
    nbytes = s.buffer_nbytes
    for _ in range(999):
        s.sample_now()
    assert s.rows == 100
    assert s.stats["samples"] == 1000
    assert s.buffer_nbytes == nbytes  # nothing grew
    times, values = s.series("cpu_percent")
    assert values.tolist() == list(range(901, 1001))  # the oldest 900 were dropped
    assert (np.diff(times) >= 0).all()


def test_a_day_of_eight_gpus_fits_in_tens_of_megabytes(fake_nvml) -> None:
    fake_nvml([FakeGpu() for _ in range(8)])
    s = Sampler(interval_s=1, history_s=86_400, sources=[NVMLSource(), PsutilSource()])
    s.sample_now()
    columns = 4 + 8 * len(GPU_METRICS)
    assert s.buffer_nbytes == 86_400 * (8 + 4 * columns)
    assert s.buffer_nbytes < 32 * 10**6


# --- threads and subscribers ----------------------------------------------------------------------


def _stats_of(s: Sampler, name: str) -> dict:
    return next(sub for sub in s.stats["subscribers"] if name in sub["callback"])


def test_subscribers_cannot_stop_or_delay_the_sampler(caplog) -> None:
    """Event-driven: one subscriber is stuck until released, one raises, one keeps up.

    Samples are taken by hand (``sample_now``), so nothing depends on how fast a
    busy machine runs threads; only bounded waits for conditions.
    """
    got: list[Sample] = []
    slow_seen: list[float] = []
    entered = threading.Event()
    release = threading.Event()

    def slow(sample: Sample) -> None:
        slow_seen.append(sample.cpu_percent)
        entered.set()
        release.wait(60)

    def raising(sample: Sample) -> None:
        raise ValueError("bad panel")

    s = Sampler(interval_s=1, history_s=60, sources=[CountingSource()])  # never started
    with caplog.at_level(logging.ERROR, logger="workbench.telemetry._dispatch"):
        s.subscribe(raising)
        s.subscribe(slow)
        unsubscribe = s.subscribe(got.append)
        s.sample_now()
        assert entered.wait(30)  # the slow subscriber holds sample 1 and is stuck
        wait_until(lambda: _stats_of(s, "raising")["errors"] == 1, 30)
        burst = threading.Thread(target=lambda: [s.sample_now() for _ in range(15)], daemon=True)
        burst.start()
        burst.join(30)
        assert not burst.is_alive()  # 15 samples taken while a subscriber was stuck: no waiting on it
        wait_until(lambda: got and got[-1].cpu_percent == 16, 30)  # the fast one has the newest
        wait_until(lambda: _stats_of(s, "raising")["errors"] >= 2, 30)  # kept receiving after raising
        slow_stats = _stats_of(s, "slow")
        assert slow_stats["delivered"] == 0
        assert slow_stats["dropped"] == 14  # one waiting, 14 replaced
        release.set()
        wait_until(lambda: _stats_of(s, "slow")["delivered"] == 2, 30)
    assert slow_seen == [1, 16]  # then it got the newest sample, skipping the rest
    assert sum("raised" in r.getMessage() for r in caplog.records) == 1  # logged once
    # The fast subscriber saw samples in order, newest last.
    assert [g.cpu_percent for g in got] == sorted(g.cpu_percent for g in got)
    unsubscribe()
    unsubscribe()  # idempotent
    n = len(got)
    s.sample_now()
    assert len(got) == n  # unsubscribe joined the delivery thread: nothing can arrive now
    s.close()


def test_stop_joins_and_start_resumes() -> None:
    before = set(threading.enumerate())
    s = Sampler(interval_s=0.02, history_s=60, sources=[CountingSource()])
    s.subscribe(lambda sample: None)
    with s:
        assert s.running
        wait_until(lambda: s.stats["samples"] >= 2)
        s.stop()
        assert not s.running  # the thread was joined: nothing samples after this
        n = s.stats["samples"]
        s.start()
        wait_until(lambda: s.stats["samples"] > n)
    assert not s.running
    assert set(threading.enumerate()) <= before  # sampler and subscriber threads joined
    assert "Sampler stopped" in repr(s)


def test_one_sampler_per_process() -> None:
    seen: list[Sampler] = []
    barrier = threading.Barrier(6)

    def grab() -> None:
        barrier.wait()
        seen.append(get_sampler(start=False))

    threads = [threading.Thread(target=grab) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in seen}) == 1
    assert not seen[0].running
    running = get_sampler()
    assert running is seen[0]
    assert running.running
    reset_sampler()
    assert not running.running
    assert get_sampler(start=False) is not running
