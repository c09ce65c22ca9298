"""Which devices this process may use, named as torch names them.

NVML lists every board in the machine, in PCI order, and ignores
``CUDA_VISIBLE_DEVICES``; CUDA numbers only the visible ones, by default
fastest first. So ``cuda:0`` need not be NVML's device 0. We match by UUID:

1. torch is importable and ``torch.cuda.is_available()``: ask torch for each
   device's UUID (exact; this is what the runtime will use).
2. otherwise parse ``CUDA_VISIBLE_DEVICES`` (indices, ``GPU-``/``MIG-`` UUIDs or
   unique prefixes) against NVML's list, with CUDA's rules: parsing stops at the
   first invalid entry, and a repeated entry leaves no device at all.
3. neither: every NVML GPU, in NVML order.

torch is imported only when NVML reports at least one GPU, so a machine
without a driver never pays for importing it.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import DeviceNotFoundError
from ..precision import normalize_device
from . import nvml, torch_cuda
from .device import Device, GPUProcess
from .nvml import NVMLGpu
from .torch_cuda import TorchGpu, normalize_uuid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisibleGpu:
    """A CUDA device of this process, with its NVML board and/or torch record."""

    index: int
    nvml: NVMLGpu | None
    torch: TorchGpu | None = None

    @property
    def name(self) -> str:
        return f"cuda:{self.index}"

    @property
    def uuid(self) -> str | None:
        if self.nvml is not None and self.nvml.uuid:
            return self.nvml.uuid
        if self.torch is not None and self.torch.uuid:
            return f"GPU-{self.torch.uuid}"
        return None


@dataclass(frozen=True)
class Visibility:
    """The outcome of matching: the GPUs, how they were matched, and what to tell the user.

    ``matched_by`` is ``"torch"``, ``"CUDA_VISIBLE_DEVICES"``, ``"nvml"`` (no torch,
    no ``CUDA_VISIBLE_DEVICES``: NVML order) or ``"none"`` (no NVML).
    """

    gpus: tuple[VisibleGpu, ...]
    matched_by: str
    notes: tuple[str, ...] = field(default=())


# --- matching -------------------------------------------------------------------------------


def match_torch(nvml_gpus: list[NVMLGpu], torch_gpus: list[TorchGpu]) -> Visibility:
    """Pair each torch device with the NVML device (board or MIG instance) of the same UUID."""
    by_uuid = {normalize_uuid(g.uuid): g for g in nvml_gpus if g.uuid}
    found, notes = [], []
    for tg in torch_gpus:
        board = by_uuid.get(tg.uuid) if tg.uuid else None
        if board is None:
            notes.append(
                f"cuda:{tg.index} (UUID {tg.uuid}) is not among NVML's devices: its live metrics are unavailable"
            )
        found.append(VisibleGpu(tg.index, board, tg))
    return Visibility(tuple(found), "torch", tuple(notes))


def parse_visible_devices(value: str, nvml_gpus: list[NVMLGpu]) -> list[NVMLGpu]:
    """Apply ``CUDA_VISIBLE_DEVICES`` to NVML's list the way CUDA does.

    Indices count physical GPUs in NVML (PCI) order; ``GPU-``/``MIG-`` entries may be
    unique prefixes of a UUID. Parsing stops at the first invalid, out-of-range or
    ambiguous entry; a repeated entry makes the whole list empty.

    Example:
        >>> from workbench.devices.nvml import NVMLGpu
        >>> boards = [NVMLGpu(0, "GPU-aaa", 0), NVMLGpu(1, "GPU-bbb", 1)]
        >>> [g.nvml_index for g in parse_visible_devices("GPU-b,0", boards)]
        [1, 0]
    """
    physical = [g for g in nvml_gpus if not g.is_mig_instance]
    chosen: list[NVMLGpu] = []
    for raw in value.split(","):
        token = raw.strip()
        if token[:4].upper() in ("GPU-", "MIG-"):
            matches = [g for g in nvml_gpus if g.uuid and g.uuid.lower().startswith(token.lower())]
            if len(matches) != 1:  # unknown or ambiguous prefix
                break
            gpu = matches[0]
        else:
            # CUDA reads indices with strtoul: leading digits count, anything else stops.
            digits = re.match(r"\+?(\d+)", token)
            if digits is None or int(digits.group(1)) >= len(physical):
                break
            gpu = physical[int(digits.group(1))]
        if any(gpu is c for c in chosen):
            return []
        chosen.append(gpu)
    return chosen


def _match_env(nvml_gpus: list[NVMLGpu], torch_reason: str | None) -> Visibility:
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    notes: list[str] = []
    if value is None:
        chosen = [g for g in nvml_gpus if not g.is_mig_instance]
        matched_by = "nvml"
    else:
        chosen = parse_visible_devices(value, nvml_gpus)
        matched_by = "CUDA_VISIBLE_DEVICES"
        if not chosen:
            notes.append(f"CUDA_VISIBLE_DEVICES={value!r} selects no GPU")
    if chosen and torch_reason and torch_reason.startswith("torch.cuda"):
        # torch is there but cannot use CUDA: the runtime will not be able to use these GPUs.
        notes.append(f"{torch_reason}: models will load on the CPU until torch can use CUDA")
    if len(chosen) > 1 and os.environ.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        names = {nvml.static_info(g.handle).name for g in chosen}
        if len(names) > 1:
            # CUDA's default order is fastest first; only identical boards fall back to PCI order.
            notes.append(
                "the GPUs differ and CUDA_DEVICE_ORDER is not PCI_BUS_ID, so cuda:N numbering is a guess "
                f"({torch_reason}); set CUDA_DEVICE_ORDER=PCI_BUS_ID or use a CUDA build of torch"
            )
    return Visibility(tuple(VisibleGpu(i, g) for i, g in enumerate(chosen)), matched_by, tuple(notes))


def visible_gpus(import_torch: bool = True) -> Visibility:
    """The GPUs this process may use, in torch's numbering, matched to NVML by UUID.

    Args:
        import_torch: import torch (about 2 s) to match exactly when NVML sees GPUs.
            With ``False`` only an already-imported torch is asked; otherwise
            ``CUDA_VISIBLE_DEVICES`` decides (the telemetry sampler does this, and
            matches again once torch shows up).

    Example:
        >>> vis = visible_gpus()
        >>> [g.name for g in vis.gpus][:1] in ([], ["cuda:0"])
        True
    """
    status = nvml.status()
    if not status.available:
        # No NVML (Jetson, some VMs): a torch the process already imported may still see GPUs.
        tgs, _why = torch_cuda.torch_gpus(allow_import=False)
        if tgs:
            notes = (f"NVML is unavailable ({status.reason}); GPUs listed from torch, without live metrics",)
            return Visibility(tuple(VisibleGpu(t.index, None, t) for t in tgs), "torch", notes)
        return Visibility((), "none")
    boards = nvml.gpus()
    if not boards:
        return Visibility((), "nvml", ("NVML sees no NVIDIA GPU",))
    tgs, why = torch_cuda.torch_gpus(allow_import=import_torch)
    if tgs is not None:
        return match_torch(boards, tgs)
    return _match_env(boards, why)


# --- the CPU ------------------------------------------------------------------------------------

# Module attributes so tests can point them at a fake cgroup tree.
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number near 2**63


@lru_cache(maxsize=1)
def cpu_label() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                label = line.split(":", 1)[1].strip()
                if label:
                    return label
    except OSError:
        pass  # not Linux, or /proc hidden: fall back below
    return platform.processor() or platform.machine() or "CPU"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" means no limit


def _inactive_file(stat: Path, key: str) -> int:
    """Reclaimable page cache, which cgroups count as usage but the kernel frees on demand."""
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key and value.strip().isdigit():
                return int(value)
    except OSError:
        pass  # no stat file: count all usage as used
    return 0


def cgroup_memory() -> tuple[int, int] | None:
    """``(limit_bytes, free_bytes)`` of this process's memory cgroup, or ``None`` if unlimited.

    JupyterHub spawners (KubeSpawner, systemd) often cap a user's RAM below the
    machine's; ``psutil`` only sees the machine. Every ancestor's limit counts, so
    the tightest one wins. Usage excludes inactive page cache, as ``docker stats`` does.
    """
    try:
        lines = _PROC_SELF_CGROUP.read_text().splitlines()
    except OSError:
        return None
    v2_path = v1_path = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    found: list[tuple[int, int]] = []
    if v2_path is not None and (_CGROUP_ROOT / "cgroup.controllers").exists():
        found += _cgroup_v2_limits(v2_path)
    if v1_path is not None:
        found += _cgroup_v1_limits(v1_path)
    if not found:
        return None
    return min(limit for limit, _ in found), min(free for _, free in found)


def _limit_and_free(limit: int | None, usage: int | None, stat: Path, key: str) -> list[tuple[int, int]]:
    """``[(limit, free)]`` for one cgroup folder, or ``[]`` when it sets no limit."""
    if limit is None or limit >= _UNLIMITED or usage is None:
        return []
    return [(limit, max(0, limit - max(0, usage - _inactive_file(stat, key))))]


def _cgroup_v2_limits(v2_path: str) -> list[tuple[int, int]]:
    """The limits of a cgroup v2 folder and of every ancestor up to the mount."""
    found: list[tuple[int, int]] = []
    folder = _CGROUP_ROOT / v2_path.lstrip("/")
    while True:
        found += _limit_and_free(_read_int(folder / "memory.max"), _read_int(folder / "memory.current"),
                                 folder / "memory.stat", "inactive_file")
        if folder == _CGROUP_ROOT or _CGROUP_ROOT not in folder.parents:
            return found
        folder = folder.parent


def _cgroup_v1_limits(v1_path: str) -> list[tuple[int, int]]:
    """The limit of the process's cgroup v1 memory folder (or the mount's own, inside a container)."""
    mount = _CGROUP_ROOT / "memory"
    # Inside a container the process's own cgroup is usually mounted as the root.
    for candidate in (mount / v1_path.lstrip("/"), mount):
        if (candidate / "memory.limit_in_bytes").exists():
            return _limit_and_free(_read_int(candidate / "memory.limit_in_bytes"),
                                   _read_int(candidate / "memory.usage_in_bytes"),
                                   candidate / "memory.stat", "total_inactive_file")
    return []


def _cpu_cores() -> int | None:
    # The cores this process may run on (taskset, Slurm, containers), not the machine's.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def cpu_memory() -> tuple[int | None, int | None]:
    """``(total, free)`` RAM bytes this process can use: psutil, capped by the cgroup."""
    import psutil

    try:
        vm = psutil.virtual_memory()
        total, free = int(vm.total), int(vm.available)
    except (OSError, RuntimeError) as exc:
        logger.debug("psutil.virtual_memory failed: %s", exc)
        total = free = None
    limit = cgroup_memory()
    if limit is not None:
        total = limit[0] if total is None else min(total, limit[0])
        free = limit[1] if free is None else min(free, limit[1])
    return total, free


def cpu_device() -> Device:
    """The CPU as a :class:`Device` (RAM as its memory)."""
    total, free = cpu_memory()
    used = total - free if total is not None and free is not None else None
    return Device(
        name="cpu",
        kind="cpu",
        index=None,
        uuid=None,
        label=cpu_label(),
        memory_total_bytes=total,
        memory_free_bytes=free,
        memory_used_bytes=used,
        cores=_cpu_cores(),
    )


# --- public API ---------------------------------------------------------------------------------


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


def _not_found(name: str, available: list[str]) -> DeviceNotFoundError:
    hint = f"available: {', '.join(available)}"
    status = nvml.status()
    if not any(a.startswith("cuda") for a in available) and not status.available:
        hint += f" ({status.reason})"
    return DeviceNotFoundError(
        f"no device {name!r} in this session", hint=hint, device=name, available=available
    )


def _resolve_gpu(name: str) -> VisibleGpu:
    wanted = normalize_device(name)
    vis = visible_gpus()
    for vg in vis.gpus:
        if vg.name == wanted:
            return vg
    raise _not_found(name, [vg.name for vg in vis.gpus] + ["cpu"])


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
    return gpu_device(_resolve_gpu(name))


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
    vg = _resolve_gpu(device_name)
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
    return processes_of(_resolve_gpu(device_name))


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
