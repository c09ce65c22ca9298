"""Device inventory: the GPUs this process may use (NVML matched to torch by UUID), and the CPU.

Importing this package is cheap: no pynvml, no torch, no ``nvmlInit()``. NVML
starts on the first call that needs it; torch is consulted only when NVML
reports a GPU. Without an NVIDIA driver everything still works and lists the
CPU, and :func:`nvml_status` says why no GPU is shown.

Example:
    >>> from workbench.devices import list_devices, nvml_status
    >>> [d.name for d in list_devices()]  # doctest: +SKIP
    ['cuda:0', 'cuda:1', 'cpu']
    >>> nvml_status().reason  # doctest: +SKIP
    'NVIDIA driver not found: showing CPU and RAM only'
"""

from __future__ import annotations

from .._format import format_bytes, format_number
from ..precision import DeviceKind
from .device import Device, GPUProcess
from .host import cpu_device
from .inventory import get_device, gpu_processes, list_devices, memory_free_bytes
from .nvml import NVMLStatus
from .report import devices_report, format_devices
from .visibility import Visibility, VisibleGpu, visible_gpus


def nvml_status() -> NVMLStatus:
    """Whether NVML works in this process and, if not, why (initialises NVML on first call).

    Example:
        >>> s = nvml_status()
        >>> s.available or bool(s.reason)
        True
    """
    from . import nvml

    return nvml.status()


__all__ = [
    "Device",
    "DeviceKind",
    "GPUProcess",
    "NVMLStatus",
    "Visibility",
    "VisibleGpu",
    "cpu_device",
    "devices_report",
    "format_bytes",
    "format_devices",
    "format_number",
    "get_device",
    "gpu_processes",
    "list_devices",
    "memory_free_bytes",
    "nvml_status",
    "visible_gpus",
]
