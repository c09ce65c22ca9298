"""Frozen telemetry records: one :class:`Sample` per tick, raw units, ``None`` when missing."""

from __future__ import annotations

from dataclasses import dataclass

from .._format import format_bytes, format_number
from .._records import Record

#: Per-GPU numeric metrics, as ``GpuSample`` fields and ``Sampler.series`` names.
GPU_METRICS: tuple[str, ...] = (
    "utilization_percent",
    "memory_used_bytes",
    "memory_total_bytes",
    "power_w",
    "power_limit_w",
    "temperature_c",
    "sm_clock_mhz",
    "mem_clock_mhz",
    "pcie_rx_bytes_s",
    "pcie_tx_bytes_s",
)

#: Host metrics, as ``Sample`` fields and ``Sampler.series`` names.
HOST_METRICS: tuple[str, ...] = ("cpu_percent", "ram_used_bytes", "ram_total_bytes", "process_rss_bytes")


@dataclass(frozen=True)
class GpuSample(Record):
    """One GPU at one instant. Every metric is ``None`` when unsupported or failing.

    Attributes:
        device: torch's name for it, ``"cuda:0"``.
        uuid: NVML's UUID (``"GPU-..."``), stable across processes and reboots.
        utilization_percent: share of the last sample period a kernel was running.
        memory_used_bytes / memory_total_bytes: device memory, all processes included.
        power_w / power_limit_w: board power draw and the enforced limit, watts.
        temperature_c: GPU die temperature, degrees Celsius.
        sm_clock_mhz / mem_clock_mhz: current clocks.
        pcie_rx_bytes_s / pcie_tx_bytes_s: PCIe throughput, bytes per second.
        processes: ``((pid, used_memory_bytes or None), ...)`` of compute processes.

    Example:
        >>> GpuSample("cuda:0", memory_used_bytes=3 * 2**30, power_w=None).memory_used_str
        '3.0 GiB'
    """

    device: str
    uuid: str | None = None
    utilization_percent: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temperature_c: float | None = None
    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    pcie_rx_bytes_s: float | None = None
    pcie_tx_bytes_s: float | None = None
    processes: tuple[tuple[int, int | None], ...] | None = None

    @property
    def memory_used_str(self) -> str:
        return format_bytes(self.memory_used_bytes)

    @property
    def memory_total_str(self) -> str:
        return format_bytes(self.memory_total_bytes)

    @property
    def utilization_str(self) -> str:
        return format_number(self.utilization_percent, "%")

    @property
    def power_str(self) -> str:
        if self.power_w is not None and self.power_limit_w:
            return f"{self.power_w:.0f} / {self.power_limit_w:.0f} W"
        return format_number(self.power_w, " W")

    @property
    def temperature_str(self) -> str:
        return format_number(self.temperature_c, " °C")


@dataclass(frozen=True)
class HostSample:
    """What :class:`PsutilSource` reads: the machine's CPU and RAM, and this kernel's RSS."""

    cpu_percent: float | None = None
    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    process_rss_bytes: int | None = None


@dataclass(frozen=True)
class Sample(Record):
    """Everything measured at one tick.

    Attributes:
        time_s: wall-clock time of the sample (``time.time()``).
        gpus: one :class:`GpuSample` per GPU this process may use (empty without NVML).
        cpu_percent: machine-wide CPU use since the previous sample, 0-100.
        ram_used_bytes / ram_total_bytes: machine RAM; used is ``total - available``.
        process_rss_bytes: resident memory of this process (the kernel running the model).

    Example:
        >>> s = Sample(0.0, (GpuSample("cuda:0"),), cpu_percent=12.5)
        >>> s.gpu("cuda:0").device, s.gpu("cuda:1"), s.cpu_str
        ('cuda:0', None, '12%')
    """

    time_s: float
    gpus: tuple[GpuSample, ...] = ()
    cpu_percent: float | None = None
    ram_used_bytes: int | None = None
    ram_total_bytes: int | None = None
    process_rss_bytes: int | None = None

    def gpu(self, device: str) -> GpuSample | None:
        """The reading of one GPU by name, or ``None`` if it was not sampled."""
        for g in self.gpus:
            if g.device == device:
                return g
        return None

    @property
    def cpu_str(self) -> str:
        return format_number(self.cpu_percent, "%")

    @property
    def ram_used_str(self) -> str:
        return format_bytes(self.ram_used_bytes)

    @property
    def ram_total_str(self) -> str:
        return format_bytes(self.ram_total_bytes)

    @property
    def process_rss_str(self) -> str:
        return format_bytes(self.process_rss_bytes)
