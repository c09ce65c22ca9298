"""Which GPUs this process may use, named as torch names them, matched to NVML by UUID.

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

import os
import re
from dataclasses import dataclass, field

from ..errors import DeviceNotFoundError
from ..precision import is_gpu, normalize_device
from . import nvml, torch_cuda
from .nvml import NVMLGpu
from .torch_cuda import TorchGpu, normalize_uuid


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


def device_not_found(name: str, available: list[str]) -> DeviceNotFoundError:
    """The error for a device name this session does not have, listing those it has (and why no GPU)."""
    hint = f"available: {', '.join(available)}"
    status = nvml.status()
    if not any(is_gpu(a) for a in available) and not status.available:
        hint += f" ({status.reason})"
    return DeviceNotFoundError(
        f"no device {name!r} in this session", hint=hint, device=name, available=available
    )


def resolve_gpu(name: str) -> VisibleGpu:
    """The visible GPU called ``name`` (``"cuda:1"``; ``"cuda"`` means ``"cuda:0"``).

    Raises:
        DeviceNotFoundError: no such GPU in this session; the message lists those there are.
    """
    wanted = normalize_device(name)
    vis = visible_gpus()
    for vg in vis.gpus:
        if vg.name == wanted:
            return vg
    raise device_not_found(name, [vg.name for vg in vis.gpus] + ["cpu"])
