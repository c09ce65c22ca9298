"""Frozen records of devices and GPU processes: raw values, display strings as properties."""

from __future__ import annotations

from dataclasses import dataclass

from .._format import NA, format_bytes
from .._records import Record
from ..precision import DeviceKind


@dataclass(frozen=True)
class Device(Record):
    """One device this process may use: a CUDA GPU (torch numbering) or the CPU.

    Attributes:
        name: ``"cuda:0"`` (as torch and transformers name it) or ``"cpu"``.
        kind: ``"cuda"`` or ``"cpu"``.
        index: torch's CUDA index (``None`` for the CPU).
        uuid: NVML's ``"GPU-..."`` (or ``"MIG-..."``) UUID, stable across processes.
        label: a human name, e.g. ``"NVIDIA H200"`` or the CPU model.
        memory_total_bytes: device memory; for the CPU, RAM (capped by the cgroup limit).
        memory_free_bytes: what a new allocation can use now. For a GPU this is NVML's
            free memory, which already subtracts other users' processes; for the CPU,
            available RAM (within the cgroup limit, if any).
        memory_used_bytes: ``total - free`` for the CPU; NVML's used memory for a GPU.
        compute_capability: ``(9, 0)`` for Hopper; ``None`` for the CPU or when unknown.
        mig_mode: whether the GPU is split into MIG instances (``None`` if unknown).
        nvml_index: NVML's index of the board (PCI order), which can differ from ``index``.
        cores: logical CPU cores this process may run on (CPU only).

    Example:
        >>> d = Device("cpu", "cpu", None, None, "AMD EPYC", 8 * 2**30, 6 * 2**30, 2 * 2**30, cores=4)
        >>> d.memory_free_str
        '6.0 GiB'
    """

    name: str
    kind: DeviceKind
    index: int | None
    uuid: str | None
    label: str
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    memory_used_bytes: int | None
    compute_capability: tuple[int, int] | None = None
    mig_mode: bool | None = None
    nvml_index: int | None = None
    cores: int | None = None

    @property
    def is_gpu(self) -> bool:
        return self.kind == "cuda"

    @property
    def memory_total_str(self) -> str:
        return format_bytes(self.memory_total_bytes)

    @property
    def memory_free_str(self) -> str:
        return format_bytes(self.memory_free_bytes)

    @property
    def memory_used_str(self) -> str:
        return format_bytes(self.memory_used_bytes)

    @property
    def compute_capability_str(self) -> str:
        cc = self.compute_capability
        return f"{cc[0]}.{cc[1]}" if cc else NA


@dataclass(frozen=True)
class GPUProcess(Record):
    """A compute process using a GPU, as NVML reports it, joined with psutil.

    ``user`` and ``command`` are ``None`` when the process is gone, belongs to
    someone we may not inspect, or lives in another PID namespace (containers).
    ``used_memory_bytes`` is ``None`` when NVML cannot attribute memory (MIG, WDDM).
    """

    pid: int
    user: str | None
    command: str | None
    used_memory_bytes: int | None
    device: str

    @property
    def used_memory_str(self) -> str:
        return format_bytes(self.used_memory_bytes)
