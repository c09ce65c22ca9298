"""The ``workbench devices [--json]`` document and its text table."""

from __future__ import annotations

from typing import Any

from .._format import NA, format_bytes
from . import nvml
from .device import Device
from .host import cpu_device
from .inventory import gpu_device, processes_of
from .visibility import visible_gpus


def devices_report() -> dict[str, Any]:
    """Everything ``workbench devices --json`` prints, as one JSON-friendly dict.

    Keys:
        ``nvml``: :class:`NVMLStatus` fields (``available``, ``reason``, driver versions).
        ``devices``: :meth:`Device.to_dict` of each GPU this process may use, then the CPU.
        ``processes``: ``{"cuda:0": [GPUProcess.to_dict(), ...]}`` per GPU; ``None`` for a
            GPU whose processes NVML cannot list (unknown, not "none").
        ``matched_by``: how GPUs were numbered (``"torch"``, ``"CUDA_VISIBLE_DEVICES"``,
            ``"nvml"``, ``"none"``).
        ``no_gpu_reason``: why no GPU is listed (``None`` when some are).
        ``notes``: other things worth telling the user, as sentences.

    Example:
        >>> report = devices_report()
        >>> report["devices"][-1]["name"]
        'cpu'
    """
    status = nvml.status()
    vis = visible_gpus()
    gpus = [gpu_device(vg) for vg in vis.gpus]
    devices: list[Device] = [*gpus, cpu_device()]
    processes: dict[str, list[dict[str, Any]] | None] = {}
    for vg in vis.gpus:
        procs = processes_of(vg)
        processes[vg.name] = None if procs is None else [p.to_dict() for p in procs]
    no_gpu_reason = None
    if not gpus:
        if not status.available:
            no_gpu_reason = status.reason
        else:
            no_gpu_reason = vis.notes[0] if vis.notes else "no GPU is visible to this process"
    return {
        "nvml": status.to_dict(),
        "devices": [d.to_dict() for d in devices],
        "processes": processes,
        "matched_by": vis.matched_by,
        "no_gpu_reason": no_gpu_reason,
        "notes": [n for n in vis.notes if n != no_gpu_reason],
    }


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def format_devices(report: dict[str, Any]) -> str:
    """A readable table of a :func:`devices_report` (what ``workbench devices`` prints).

    Example:
        >>> print(format_devices(devices_report()))  # doctest: +SKIP
        DEVICE  NAME         TOTAL      FREE       USED       CC   UUID
        cuda:0  NVIDIA H200  140.4 GiB  139.8 GiB  0.6 GiB    9.0  GPU-6aaf4ee1-...
        cpu     AMD EPYC     23.5 GiB   23.0 GiB   0.5 GiB    N/A  N/A
    """
    lines: list[str] = []
    status = report.get("nvml") or {}
    if status.get("available"):
        lines.append(
            f"NVIDIA driver {status.get('driver_version') or NA}, CUDA {status.get('cuda_driver_version') or NA}"
        )
    rows = [["DEVICE", "NAME", "TOTAL", "FREE", "USED", "CC", "UUID"]]
    for d in report.get("devices", []):
        cc = d.get("compute_capability")
        label = d.get("label") or NA
        if d.get("kind") == "cpu" and d.get("cores"):
            label = f"{label} ({d['cores']} cores)"
        if d.get("mig_mode"):
            label += " [MIG]"
        rows.append(
            [
                d.get("name", NA),
                label,
                format_bytes(d.get("memory_total_bytes")),
                format_bytes(d.get("memory_free_bytes")),
                format_bytes(d.get("memory_used_bytes")),
                f"{cc[0]}.{cc[1]}" if cc else NA,
                d.get("uuid") or NA,
            ]
        )
    lines.extend(_table(rows))
    for device, procs in (report.get("processes") or {}).items():
        if procs is None:
            lines.append("")
            lines.append(f"Processes on {device}: unknown (NVML cannot list them)")
            continue
        if not procs:
            continue
        lines.append("")
        lines.append(f"Processes on {device}:")
        prows = [["PID", "USER", "MEMORY", "COMMAND"]]
        for p in procs:
            command = p.get("command") or NA
            prows.append(
                [
                    str(p.get("pid")),
                    p.get("user") or NA,
                    format_bytes(p.get("used_memory_bytes")),
                    command if len(command) <= 80 else command[:77] + "...",
                ]
            )
        lines.extend("  " + line for line in _table(prows))
    if report.get("no_gpu_reason"):
        lines.append("")
        lines.append(f"No GPU: {report['no_gpu_reason']}")
    for note in report.get("notes") or []:
        lines.append(f"Note: {note}")
    return "\n".join(lines)
