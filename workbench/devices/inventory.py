"""The device inventory's public API: the devices this process may use, as :class:`Device` records.

GPUs come from :mod:`.visibility` (NVML matched to torch by UUID, in torch's
numbering) with NVML's live memory; the CPU from :mod:`.host` (RAM within the
cgroup limit). Each query reads fresh values.
"""

from __future__ import annotations

from ..precision import normalize_device
from . import nvml
from .device import Device, GPUProcess
from .host import cpu_device, cpu_memory
from .visibility import VisibleGpu, resolve_gpu, visible_gpus


def gpu_device(vg: VisibleGpu) -> Device:
    tg = vg.torch
    if vg.nvml is None:
        return Device(
            name=vg.name,
            kind="cuda",
            index=vg.index,
            uuid=vg.uuid,
            label=(tg.name if tg else None) or "CUDA GPU",
            memory_total_bytes=tg.total_memory_bytes if tg else None,
            memory_free_bytes=None,
            memory_used_bytes=None,
            compute_capability=tg.compute_capability if tg else None,
        )
    info = nvml.static_info(vg.nvml.handle)
    return Device(
        name=vg.name,
        kind="cuda",
        index=vg.index,
        uuid=vg.uuid,
        label=info.name or (tg.name if tg else None) or "NVIDIA GPU",
        memory_total_bytes=info.memory_total_bytes,
        memory_free_bytes=info.memory_free_bytes,
        memory_used_bytes=info.memory_used_bytes,
        compute_capability=info.compute_capability or (tg.compute_capability if tg else None),
        mig_mode=vg.nvml.mig_mode,
        nvml_index=vg.nvml.nvml_index,
    )


def list_devices(include_cpu: bool = True) -> list[Device]:
    """The devices this process may use: its CUDA GPUs (torch numbering), then the CPU.

    Without NVML this is just the CPU; :func:`nvml_status` says why.

    Args:
        include_cpu: append the CPU (``"cpu"``) after the GPUs.

    Example:
        >>> [d.name for d in list_devices()][-1]
        'cpu'
    """
    devices = [gpu_device(vg) for vg in visible_gpus().gpus]
    if include_cpu:
        devices.append(cpu_device())
    return devices


def get_device(name: str) -> Device:
    """The device called ``name`` (``"cuda:1"``, ``"cpu"``; ``"cuda"`` means ``"cuda:0"``).

    Raises:
        DeviceNotFoundError: no such device in this session; the message lists those there are.

    Example:
        >>> get_device("cpu").kind
        'cpu'
    """
    if normalize_device(name) == "cpu":
        return cpu_device()
    return gpu_device(resolve_gpu(name))


def memory_free_bytes(device_name: str) -> int | None:
    """Free memory of one device now, in bytes: one quick query for the runtime's fit check.

    For a GPU this is NVML's free memory (other users' processes already taken out);
    ``None`` when it cannot be read. For ``"cpu"``, available RAM within the cgroup limit.

    Raises:
        DeviceNotFoundError: no such device in this session.

    Example:
        >>> memory_free_bytes("cpu") > 0
        True
    """
    if normalize_device(device_name) == "cpu":
        return cpu_memory()[1]
    vg = resolve_gpu(device_name)
    if vg.nvml is None:
        return None
    return nvml.memory_info(vg.nvml.handle)[1]


def _process_details(pid: int) -> tuple[str | None, str | None]:
    import psutil

    try:
        proc = psutil.Process(pid)
    except (psutil.Error, OSError):
        return None, None
    user = command = None
    try:
        user = proc.username()
    except (psutil.Error, OSError, KeyError):  # KeyError: a uid without a passwd entry
        user = None
    try:
        argv = proc.cmdline()
        command = " ".join(argv) if argv else proc.name()
    except (psutil.Error, OSError):
        command = None
    return user, command


def gpu_processes(device_name: str) -> list[GPUProcess] | None:
    """Compute processes on one GPU, with their user and command line where we may see them.

    Returns ``[]`` for ``"cpu"`` and for a GPU that NVML says runs nothing, and
    ``None`` when NVML cannot list its processes (unsupported, no permission, a
    GPU NVML does not see): unknown, which is not the same as "nobody holds memory".

    Raises:
        DeviceNotFoundError: no such device in this session.

    Example:
        >>> gpu_processes("cpu")
        []
    """
    if normalize_device(device_name) == "cpu":
        return []
    return processes_of(resolve_gpu(device_name))


def processes_of(vg: VisibleGpu) -> list[GPUProcess] | None:
    """:func:`gpu_processes` for an already-resolved GPU (the report lists all at once)."""
    if vg.nvml is None:
        return None
    listed = nvml.compute_processes(vg.nvml.handle)
    if listed is None:
        return None
    found = []
    for pid, used in listed:
        user, command = _process_details(pid)
        found.append(GPUProcess(pid, user, command, used, vg.name))
    return found
