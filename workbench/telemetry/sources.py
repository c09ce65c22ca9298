"""Telemetry sources: where a :class:`Sample`'s numbers come from.

A source satisfies :class:`Source`: a ``name``, a ``notice`` (a sentence to show the
user, e.g. why GPUs are missing, or ``None``) and ``sample()`` returning either a
:class:`HostSample` or a tuple of :class:`GpuSample`. Sources never raise for a
missing metric: that field is ``None``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any, Protocol, runtime_checkable

from ..devices import nvml, torch_cuda
from ..errors import ArgumentTypeError
from .sample import GpuSample, HostSample

logger = logging.getLogger(__name__)


@runtime_checkable
class Source(Protocol):
    """What the :class:`~workbench.telemetry.Sampler` reads every tick.

    Attributes:
        name: names the source in the sampler's ``stats["source_errors"]`` and its log.
        notice: a sentence for the user (shown once in :attr:`Sampler.notices`), or ``None``.
    """

    name: str

    @property
    def notice(self) -> str | None: ...

    def sample(self) -> HostSample | tuple[GpuSample, ...]:
        """The host's readings, or one reading per GPU; a missing metric is ``None``, not an error."""
        ...


def check_source(source: object) -> Source:
    """``source`` itself when it satisfies :class:`Source`.

    Raises:
        ArgumentTypeError: it lacks ``name``, ``notice`` or ``sample``.
    """
    if not isinstance(source, Source):
        missing = [m for m in ("name", "notice", "sample") if not hasattr(source, m)]
        raise ArgumentTypeError(
            f"{type(source).__name__} is not a telemetry source: it has no {', '.join(missing)}",
            hint="give it name (str), notice (str or None) and sample() -> HostSample or tuple of GpuSample",
        )
    return source


def _torch_ready() -> bool:
    """Whether this process has imported torch already (asked at the inventory's torch seam)."""
    return torch_cuda.cuda_module(allow_import=False) is not None


class NVMLSource:
    """GPU metrics from NVML for the GPUs this process may use (named ``"cuda:N"``).

    The GPU list is matched on the first sample (see
    :func:`workbench.devices.visible_gpus`) without importing torch: a telemetry
    panel must not cost the kernel a 2 s torch import on a background thread.
    Until torch is imported, ``CUDA_VISIBLE_DEVICES`` decides the numbering; once
    it is, the next sample matches again, exactly, by UUID. :meth:`refresh` forces
    a new match. Without NVML it samples nothing and :attr:`notice` says why.

    Args:
        pcie: read PCIe throughput. NVML measures each counter over ~20 ms, which
            adds wall time (not CPU time) to every sample; turn it off for many GPUs
            at short intervals.
        processes: read each GPU's compute processes and their memory.

    Example:
        >>> NVMLSource().sample()  # on a machine without an NVIDIA driver  # doctest: +SKIP
        ()
    """

    name = "nvml"

    def __init__(self, *, pcie: bool = True, processes: bool = True) -> None:
        self.pcie = pcie
        self.processes = processes
        self._lock = threading.Lock()
        self._targets: list[tuple[str, str | None, Any]] | None = None
        self._matched_with_torch = False

    def _resolve(self) -> list[tuple[str, str | None, Any]]:
        with self._lock:
            if self._targets is not None and not self._matched_with_torch and _torch_ready():
                self._targets = None  # torch arrived since the last match: match exactly now
            if self._targets is None:
                from ..devices.visibility import visible_gpus

                self._matched_with_torch = _torch_ready()
                vis = visible_gpus(import_torch=False)
                # GPUs known only to torch (no NVML handle) have no live metrics to read.
                self._targets = [(vg.name, vg.uuid, vg.nvml.handle) for vg in vis.gpus if vg.nvml is not None]
            return self._targets

    def refresh(self) -> None:
        """Forget the matched GPU list; the next sample matches again."""
        with self._lock:
            self._targets = None

    @property
    def devices(self) -> list[str]:
        """Names of the GPUs this source samples (matching them if not done yet)."""
        return [name for name, _uuid, _handle in self._resolve()]

    @property
    def notice(self) -> str | None:
        """Why there are no GPU metrics, when NVML is unavailable; else ``None``."""
        return nvml.status().reason

    def sample(self) -> tuple[GpuSample, ...]:
        """One :class:`GpuSample` per GPU; unsupported or failing fields are ``None``."""
        return tuple(
            GpuSample(
                device=name, uuid=uuid, **nvml.gpu_metrics(handle, pcie=self.pcie, processes=self.processes)
            )
            for name, uuid, handle in self._resolve()
        )


def _busy_and_total(times: Any) -> tuple[float, float]:
    """CPU busy and total seconds, computed the way ``psutil.cpu_percent`` does."""
    total = float(sum(times))
    if sys.platform.startswith("linux"):
        # guest time is already counted in user time on Linux.
        total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    busy = total - times.idle - getattr(times, "iowait", 0.0)
    return busy, total


class PsutilSource:
    """Machine CPU and RAM, and this process's resident memory, from psutil.

    CPU percent is measured between this source's own consecutive samples (not
    ``psutil.cpu_percent()``'s shared state), so the first sample has ``None``.

    Example:
        >>> src = PsutilSource()
        >>> src.sample().ram_total_bytes > 0
        True
    """

    name = "psutil"
    notice = None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_times: tuple[float, float] | None = None
        self._proc: Any = None
        self._pid: int | None = None

    def _cpu_percent(self, psutil: Any) -> float | None:
        busy, total = _busy_and_total(psutil.cpu_times())
        with self._lock:
            last, self._last_times = self._last_times, (busy, total)
        if last is None:
            return None
        d_total = total - last[1]
        if d_total <= 0:
            return None  # called twice within one clock tick
        return max(0.0, min(100.0, 100.0 * (busy - last[0]) / d_total))

    def _rss(self, psutil: Any) -> int | None:
        pid = os.getpid()
        if self._proc is None or self._pid != pid:  # re-create after a fork
            self._proc, self._pid = psutil.Process(pid), pid
        return int(self._proc.memory_info().rss)

    def sample(self) -> HostSample:
        """Read CPU, RAM and RSS; a failing reading is ``None``, the others still count."""
        import psutil

        values: dict[str, Any] = {}
        try:
            values["cpu_percent"] = self._cpu_percent(psutil)
        except (psutil.Error, OSError) as exc:
            logger.debug("cpu_times failed: %s", exc)
        try:
            vm = psutil.virtual_memory()
            values["ram_total_bytes"] = int(vm.total)
            values["ram_used_bytes"] = int(vm.total - vm.available)
        except (psutil.Error, OSError) as exc:
            logger.debug("virtual_memory failed: %s", exc)
        try:
            values["process_rss_bytes"] = self._rss(psutil)
        except (psutil.Error, OSError) as exc:
            logger.debug("memory_info failed: %s", exc)
        return HostSample(**values)
