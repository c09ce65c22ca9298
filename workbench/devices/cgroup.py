"""This process's memory cgroup: the RAM limit JupyterHub spawners and containers set.

JupyterHub spawners (KubeSpawner, systemd) and containers often cap a user's RAM
below the machine's, and ``psutil`` only sees the machine. cgroup v2 (every
ancestor's ``memory.max``) and v1 (``memory.limit_in_bytes``) are read; the
tightest limit wins.
"""

from __future__ import annotations

from pathlib import Path

# Module attributes so tests can point them at a fake cgroup tree.
_PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number near 2**63


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


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota.

    A spawner that gives a user "2 CPUs" sets cgroup v2 ``cpu.max`` (``"200000 100000"``:
    quota and period, microseconds) or v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``; a
    thread per machine core past that quota only waits. Every ancestor's quota counts
    (the tightest wins), rounded up to whole CPUs; at least 1.
    """
    import math
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quotas = _cpu_quotas()
    if quotas:
        cpus = min(cpus, math.ceil(min(quotas)))
    return max(1, cpus)


def _cpu_quotas() -> list[float]:
    """CPU quotas (in CPUs) of this process's cgroup and its ancestors (v2), or its v1 cpu folder."""
    try:
        lines = _PROC_SELF_CGROUP.read_text().splitlines()
    except OSError:
        return []
    quotas: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "" and (_CGROUP_ROOT / "cgroup.controllers").exists():
            quotas += _v2_cpu_quotas(_CGROUP_ROOT / parts[2].lstrip("/"))
        elif "cpu" in parts[1].split(","):
            for base in (_CGROUP_ROOT / "cpu" / parts[2].lstrip("/"), _CGROUP_ROOT / "cpu"):
                quota_us, period_us = _read_int(base / "cpu.cfs_quota_us"), _read_int(base / "cpu.cfs_period_us")
                if quota_us and period_us:  # -1 (no quota) does not read as a number
                    quotas.append(quota_us / period_us)
                    break
    return quotas


def _v2_cpu_quotas(folder: Path) -> list[float]:
    found = []
    while True:
        try:
            quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
            if quota.isdigit() and period.strip().isdigit() and int(period):
                found.append(int(quota) / int(period))
        except OSError:
            pass
        if folder == _CGROUP_ROOT or _CGROUP_ROOT not in folder.parents:
            return found
        folder = folder.parent
