"""``workbench devices``: the GPUs and CPU this session can use, and why NVML is unavailable when it is."""

from __future__ import annotations

import argparse
from typing import Any

from ._output import add_command, emit


def cmd_devices(args: argparse.Namespace) -> int:
    from ..devices import devices_report, format_devices

    report = devices_report()
    emit(args, report, format_devices(report))
    return 0


def register(subparsers: Any) -> None:
    """Add ``devices`` to the ``workbench`` command's subparsers."""
    add_command(subparsers, "devices", cmd_devices, "the GPUs and CPU this session can use")
