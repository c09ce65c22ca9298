"""The host as a device: the CPU's name and cores, and the RAM this process may use.

RAM is psutil's available memory capped by the memory cgroup (:mod:`.cgroup`);
cores are those this process may run on (taskset, Slurm, containers).
"""

from __future__ import annotations

import logging
import os
import platform
from functools import lru_cache
from pathlib import Path

from .cgroup import cgroup_memory
from .device import Device

logger = logging.getLogger(__name__)


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
