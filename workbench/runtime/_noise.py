"""Keep bitsandbytes' harmless CPU noise out of what users see.

On the CPU, bitsandbytes logs "Failed to load CPU gemm_4bit_forward from
kernels-community" when it is imported on a CPU with AVX512-BF16 but without the
optional ``kernels`` package (it falls back to its own kernel), and
"MatMul8bitLt: inputs will be cast from torch.bfloat16 to float16" on every int8
matmul: hundreds of lines per generation, none of which the user can act on.

The filters are targeted (these messages only, on the loggers that emit them) and
installed by the first load, never at import time, so importing the workbench
changes nothing about a process's logging.
"""

from __future__ import annotations

import logging
import threading
import warnings

# (logger name, message prefix) pairs that are dropped.
_SUPPRESSED: tuple[tuple[str, str], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"),
    ("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast from"),
)
# Python warnings bitsandbytes versions have raised for the same situations.
_WARNINGS: tuple[str, ...] = (
    r"MatMul8bitLt: inputs will be cast from .*",
    r".*Failed to load CPU gemm_4bit_forward from kernels-community.*",
)


class _PrefixFilter(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg if isinstance(record.msg, str) else str(record.msg)
        return not msg.startswith(self.prefixes)


_lock = threading.Lock()
_installed = False
suppressed_count = 0  # how often a message was dropped (tests read it)


class _CountingFilter(_PrefixFilter):
    def filter(self, record: logging.LogRecord) -> bool:
        keep = super().filter(record)
        if not keep:
            global suppressed_count
            suppressed_count += 1
        return keep


def install() -> None:
    """Install the filters once per process (idempotent, thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        by_logger: dict[str, list[str]] = {}
        for name, prefix in _SUPPRESSED:
            by_logger.setdefault(name, []).append(prefix)
        for name, prefixes in by_logger.items():
            # A filter on the logger itself: records it emits are dropped before any handler.
            logging.getLogger(name).addFilter(_CountingFilter(tuple(prefixes)))
        for pattern in _WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        _installed = True
