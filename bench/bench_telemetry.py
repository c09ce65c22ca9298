"""What the telemetry sampler costs: CPU of its thread, and ring-buffer memory for a day.

Runs the real :class:`workbench.telemetry.Sampler` (default sources: NVML, then
psutil) against the scriptable NVML fake from ``tests/fakes`` with 8 GPUs, at
1 s, for ``--seconds`` (default 20), with one no-op subscriber as a panel would.

Reports:
* the sampler thread's CPU time (``time.thread_time``) as a percent of one core
  (target: under 1 %), and the process's CPU time over the same run minus an
  idle baseline, as a cross-check that includes the subscriber thread;
* the CPU cost of one sample, timed over many back-to-back samples;
* the ring buffers' memory for a day of history at 1 s with 8 GPUs.

The fake answers in pure Python; real NVML calls go through ctypes into the
driver (tens of microseconds each, and PCIe throughput waits ~20 ms per counter
without using CPU), so treat the per-sample cost as a floor for the Python side.

Usage:
    python bench/bench_telemetry.py [--seconds 20] [--gpus 8] [--interval 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # for the NVML fake

from fakes.fake_pynvml import FakeGpu, FakeProcess, GiB, installed, make_fake_nvml  # noqa: E402
from workbench.telemetry import Sampler  # noqa: E402


def busy_fake(gpus: int):
    """8 busy H200s whose readings change every query, each with two processes."""
    start = time.monotonic()

    def wave(scale: float, offset: float = 0.0):
        return lambda: offset + scale * (0.5 + 0.5 * math.sin(time.monotonic() - start))

    boards = [
        FakeGpu(
            name="NVIDIA H200",
            memory_total_bytes=141 * GiB,
            utilization_percent=wave(100),
            power_w=wave(500, 100),
            power_limit_w=700,
            temperature_c=wave(30, 40),
            pcie_rx_bytes_s=wave(2e9),
            pcie_tx_bytes_s=wave(1e9),
            processes=[FakeProcess(1000 + i, 40 * GiB), FakeProcess(2000 + i, 3 * GiB)],
            compute_capability=(9, 0),
        )
        for i in range(gpus)
    ]
    return make_fake_nvml(boards)


def process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def run(seconds: float, gpus: int, interval_s: float) -> dict:
    fake = busy_fake(gpus)
    with installed(fake, torch=fake.torch_cuda()):
        # Per-sample cost, back to back (a separate sampler, so the run below starts clean).
        probe = Sampler(interval_s=interval_s, history_s=86_400)
        probe.sample_now()  # first sample matches GPUs and allocates the ring buffers
        n = 300
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        for _ in range(n):
            probe.sample_now()
        per_sample_cpu_s = (time.thread_time() - cpu0) / n
        per_sample_wall_s = (time.perf_counter() - wall0) / n
        day_nbytes = probe.buffer_nbytes
        day_rows = probe.capacity
        columns = len(probe.columns()[1])
        probe.close()

        # Idle baseline: what this process burns doing nothing for a while.
        baseline_s = min(3.0, seconds / 4)
        c0 = process_cpu_s()
        time.sleep(baseline_s)
        idle_rate = (process_cpu_s() - c0) / baseline_s

        sampler = Sampler(interval_s=interval_s, history_s=86_400)
        sampler.subscribe(lambda sample: None)
        c0, w0 = process_cpu_s(), time.perf_counter()
        sampler.start()
        time.sleep(seconds)
        sampler.stop()
        wall = time.perf_counter() - w0
        process_cpu = process_cpu_s() - c0
        stats = sampler.stats
        sampler.close()

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), fake NVML",
        "python": platform.python_version(),
        "gpus": gpus,
        "interval_s": interval_s,
        "seconds": round(wall, 2),
        "samples": stats["samples"],
        "sampler_thread_cpu_s": round(stats["thread_cpu_s"], 4),
        "sampler_thread_cpu_percent_of_core": round(100 * stats["thread_cpu_s"] / wall, 3),
        "process_cpu_percent_minus_idle": round(100 * max(0.0, process_cpu / wall - idle_rate), 3),
        "mean_tick_ms": round(1000 * (stats["mean_tick_s"] or 0), 3),
        "max_tick_ms": round(1000 * stats["max_tick_s"], 3),
        "per_sample_cpu_ms": round(1000 * per_sample_cpu_s, 3),
        "per_sample_wall_ms": round(1000 * per_sample_wall_s, 3),
        "projected_cpu_percent_at_interval": round(100 * per_sample_cpu_s / interval_s, 3),
        "ring_rows_for_a_day": day_rows,
        "ring_columns": columns,
        "ring_bytes_for_a_day": day_nbytes,
        "ring_mb_for_a_day": round(day_nbytes / 1e6, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the sampler runs (default 20)")
    parser.add_argument("--gpus", type=int, default=8, help="fake GPUs (default 8)")
    parser.add_argument("--interval", type=float, default=1.0, help="sampling interval, seconds (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.gpus, args.interval)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"Telemetry sampler, {result['gpus']} fake GPUs every {result['interval_s']:g} s for {result['seconds']} s"
    )
    print(f"  samples taken:                  {result['samples']}")
    print(
        f"  sampler thread CPU:             {result['sampler_thread_cpu_s']} s "
        f"= {result['sampler_thread_cpu_percent_of_core']}% of one core (target < 1%)"
    )
    print(f"  process CPU minus idle:         {result['process_cpu_percent_minus_idle']}% of one core")
    print(
        f"  one sample:                     {result['per_sample_cpu_ms']} ms CPU, {result['per_sample_wall_ms']} ms wall"
    )
    print(
        f"  ticks:                          mean {result['mean_tick_ms']} ms, max {result['max_tick_ms']} ms"
    )
    print(
        f"  ring buffer, a day at 1 s:      {result['ring_mb_for_a_day']} MB "
        f"({result['ring_rows_for_a_day']} rows x {result['ring_columns']} float32 columns + float64 times)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
