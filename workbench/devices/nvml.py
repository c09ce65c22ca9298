"""The one module that talks to NVML (``pynvml``, from the nvidia-ml-py package).

Everything NVIDIA-specific goes through here so that:

* ``pynvml`` is imported in exactly one place, lazily, and ``nvmlInit()`` runs on
  first use under a lock (never at import time: importing the workbench on a
  laptop without a driver must cost nothing and print nothing);
* a missing metric is a value (``None``), never an exception: every query goes
  through :func:`query`, which turns any ``NVMLError`` into its ``default``, in
  the spirit of nvitop's ``nvmlQuery(func, default=NA, ignore_errors=True)``;
* "NVML is not there at all" is decided once, cached with a readable reason, and
  reported by :func:`status` (callers degrade to CPU and RAM telemetry);
* tests can swap the bindings at one seam: ``sys.modules["pynvml"]`` (read by
  :func:`_import_pynvml`), with :func:`reset` between tests.

Values leave this module in SI-ish raw units: bytes, watts, degrees Celsius,
MHz, bytes per second. NVML's own units (milliwatts, KiB/s) stop here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from .._records import Record

logger = logging.getLogger(__name__)

#: Shown (once) wherever the GPU view is replaced by CPU and RAM only.
CPU_ONLY_SUFFIX = "showing CPU and RAM only"
NO_DRIVER_REASON = f"NVIDIA driver not found: {CPU_ONLY_SUFFIX}"


@dataclass(frozen=True)
class NVMLStatus(Record):
    """Whether NVML can be used in this process, and if not, why.

    Attributes:
        available: ``True`` when ``nvmlInit()`` succeeded.
        reason: one sentence saying why NVML is unavailable (``None`` when it is).
        driver_version: the NVIDIA driver's version, e.g. ``"550.54.15"``.
        cuda_driver_version: the newest CUDA the driver supports, e.g. ``"12.4"``.

    Example:
        >>> NVMLStatus(False, NO_DRIVER_REASON).to_dict()["available"]
        False
    """

    available: bool
    reason: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None


@dataclass(frozen=True)
class NVMLGpu:
    """One NVML device this process could query: a physical GPU or a MIG instance.

    ``nvml_index`` is NVML's (PCI bus) order, which ignores ``CUDA_VISIBLE_DEVICES``
    and may differ from CUDA's numbering; the inventory matches by ``uuid``.
    For a MIG instance, ``nvml_index`` is its parent GPU's index and ``mig_index``
    its slot on that GPU.
    """

    nvml_index: int
    uuid: str | None
    handle: Any
    mig_mode: bool | None = None
    mig_index: int | None = None

    @property
    def is_mig_instance(self) -> bool:
        return self.mig_index is not None


# --- lazy, locked initialisation -----------------------------------------------------------

_lock = threading.Lock()
_status: NVMLStatus | None = None
_module: Any = None
_errors: tuple[type[Exception], ...] = ()
_logged: set[tuple[str, str]] = set()


def _import_pynvml() -> Any:
    """The single import of the bindings (tests put a fake in ``sys.modules["pynvml"]``)."""
    import pynvml

    return pynvml


def _text(value: Any) -> str | None:
    """Old bindings return ``bytes`` for strings; new ones return ``str``."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _failure_reason(module: Any, exc: Exception) -> str:
    """Turn an ``nvmlInit()`` failure into one actionable sentence."""
    code = getattr(exc, "value", None)

    def is_code(name: str) -> bool:
        return code is not None and code == getattr(module, name, object())

    if is_code("NVML_ERROR_LIBRARY_NOT_FOUND") or isinstance(exc, OSError):
        return NO_DRIVER_REASON
    if is_code("NVML_ERROR_DRIVER_NOT_LOADED"):
        return f"NVIDIA driver is installed but not loaded (no GPU, or its kernel module failed): {CPU_ONLY_SUFFIX}"
    if is_code("NVML_ERROR_NO_PERMISSION"):
        return f"no permission to query the NVIDIA driver (NVML): {CPU_ONLY_SUFFIX}"
    if is_code("NVML_ERROR_LIB_RM_VERSION_MISMATCH"):
        return (
            "the NVIDIA driver and its library have different versions (reload the driver or reboot): "
            f"{CPU_ONLY_SUFFIX}"
        )
    return f"NVML failed to start ({exc}): {CPU_ONLY_SUFFIX}"


def _cuda_version(raw: Any) -> str | None:
    """NVML reports CUDA 12.4 as the integer 12040."""
    if not isinstance(raw, int) or raw <= 0:
        return None
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _lazy_init() -> Any:
    """Initialise NVML once per process; return the bindings, or ``None`` when unusable.

    Double-checked under a lock so concurrent first callers (the sampler thread and
    a notebook cell) run ``nvmlInit()`` once. The outcome, failure included, is
    cached: retrying a missing driver every second would only burn CPU.
    """
    global _status, _module, _errors
    if _status is not None:
        return _module
    with _lock:
        if _status is not None:
            return _module
        try:
            module = _import_pynvml()
        except ImportError:
            _status = NVMLStatus(
                False, f"nvidia-ml-py is not installed (pip install nvidia-ml-py): {CPU_ONLY_SUFFIX}"
            )
            logger.info("NVML unavailable: %s", _status.reason)
            return None
        nvml_error = getattr(module, "NVMLError", None)
        if not (isinstance(nvml_error, type) and issubclass(nvml_error, Exception)):
            _status = NVMLStatus(False, f"the pynvml module found is not nvidia-ml-py: {CPU_ONLY_SUFFIX}")
            return None
        try:
            module.nvmlInit()
        except (nvml_error, OSError) as exc:
            _status = NVMLStatus(False, _failure_reason(module, exc))
            logger.info("NVML unavailable: %s", _status.reason)
            return None
        errors: list[type[Exception]] = [nvml_error]
        # Bindings newer than the driver raise this for versioned functions.
        mismatch = getattr(module, "NVMLLibraryMismatchError", None)
        if isinstance(mismatch, type) and issubclass(mismatch, Exception):
            errors.append(mismatch)
        _errors = tuple(errors)
        _module = module
        driver = _text(_call(module, "nvmlSystemGetDriverVersion"))
        cuda = _cuda_version(_call(module, "nvmlSystemGetCudaDriverVersion"))
        _status = NVMLStatus(True, None, driver, cuda)
        return module


def _call(module: Any, func: str, *args: Any, default: Any = None) -> Any:
    fn = getattr(module, func, None)
    if fn is None:  # older bindings lack newer functions: a missing metric, not an error
        return default
    try:
        return fn(*args)
    except _errors as exc:
        # NotSupported is routine (consumer GPUs, MIG, VMs); log each kind once, quietly.
        key = (func, type(exc).__name__)
        if key not in _logged:
            _logged.add(key)
            logger.debug("NVML %s failed: %s", func, exc)
        return default


def query(func: str, *args: Any, default: Any = None) -> Any:
    """Call one NVML function by name; any NVML error (or no NVML) gives ``default``.

    Args:
        func: the pynvml function name, e.g. ``"nvmlDeviceGetPowerUsage"``.
        *args: its arguments (usually a device handle).
        default: what to return when NVML is unavailable or the call fails.

    Example:
        >>> query("nvmlDeviceGetCount", default=0) >= 0  # 0 on a machine without a driver
        True
    """
    module = _lazy_init()
    if module is None:
        return default
    return _call(module, func, *args, default=default)


def status() -> NVMLStatus:
    """Whether NVML works in this process (initialising it on first call).

    Example:
        >>> status().available in (True, False)
        True
    """
    _lazy_init()
    assert _status is not None
    return _status


def reset() -> None:
    """Shut NVML down and forget every cached outcome, so the next use starts over.

    Tests call this between fakes; it is also how a long-lived kernel can retry
    after a driver was installed or reloaded.
    """
    global _status, _module, _errors
    with _lock:
        if _module is not None:
            _call(_module, "nvmlShutdown")
        _status = None
        _module = None
        _errors = ()
        _logged.clear()


# --- inventory and metrics -----------------------------------------------------------------


def gpus() -> list[NVMLGpu]:
    """Every NVML device, physical GPUs in NVML order, each followed by its MIG instances.

    Returns an empty list when NVML is unavailable or reports no GPU. A GPU whose
    handle cannot be read is skipped (logged at debug level): one broken board
    should not hide the others.
    """
    module = _lazy_init()
    if module is None:
        return []
    count = _call(module, "nvmlDeviceGetCount", default=0) or 0
    mig_enabled = getattr(module, "NVML_DEVICE_MIG_ENABLE", 1)
    found: list[NVMLGpu] = []
    for index in range(count):
        handle = _call(module, "nvmlDeviceGetHandleByIndex", index)
        if handle is None:
            continue
        uuid = _text(_call(module, "nvmlDeviceGetUUID", handle))
        modes = _call(module, "nvmlDeviceGetMigMode", handle)
        mig_mode = None if not modes else modes[0] == mig_enabled
        found.append(NVMLGpu(index, uuid, handle, mig_mode))
        if mig_mode:
            slots = _call(module, "nvmlDeviceGetMaxMigDeviceCount", handle, default=0) or 0
            for slot in range(slots):
                # Empty slots raise NotFound, which _call turns into None.
                child = _call(module, "nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
                if child is not None:
                    child_uuid = _text(_call(module, "nvmlDeviceGetUUID", child))
                    found.append(NVMLGpu(index, child_uuid, child, True, slot))
    return found


@dataclass(frozen=True)
class StaticInfo:
    """What does not change while a GPU is in use (queried once per listing)."""

    name: str | None
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    memory_used_bytes: int | None
    compute_capability: tuple[int, int] | None


def static_info(handle: Any) -> StaticInfo:
    """Name, memory and compute capability of one device handle (``None`` where unknown)."""
    name = _text(query("nvmlDeviceGetName", handle))
    total, free, used = memory_info(handle)
    cc = query("nvmlDeviceGetCudaComputeCapability", handle)
    capability = (int(cc[0]), int(cc[1])) if cc else None
    return StaticInfo(name, total, free, used, capability)


def memory_info(handle: Any) -> tuple[int | None, int | None, int | None]:
    """``(total, free, used)`` bytes of one device; ``free`` counts other users' processes."""
    mem = query("nvmlDeviceGetMemoryInfo", handle)
    if mem is None:
        return None, None, None
    return (
        _int_or_none(getattr(mem, "total", None)),
        _int_or_none(getattr(mem, "free", None)),
        _int_or_none(getattr(mem, "used", None)),
    )


def compute_processes(handle: Any) -> list[tuple[int, int | None]] | None:
    """``[(pid, used_memory_bytes), ...]`` of compute processes; ``None`` if NVML cannot say.

    The PIDs are in the host's PID namespace: inside a container they may not
    match (or may name a different process than) what ``psutil`` sees.
    """
    procs = query("nvmlDeviceGetComputeRunningProcesses", handle)
    if procs is None:
        return None
    return [(int(p.pid), _int_or_none(getattr(p, "usedGpuMemory", None))) for p in procs]


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value >= 0 else None


def _scaled(value: Any, factor: float) -> float | None:
    return float(value) * factor if isinstance(value, (int, float)) else None


def gpu_metrics(handle: Any, *, pcie: bool = True, processes: bool = True) -> dict[str, Any]:
    """One telemetry reading of a device, as keyword arguments for ``GpuSample``.

    Every field is ``None`` when unsupported or failing; nothing raises.

    Args:
        handle: an NVML device handle from :func:`gpus`.
        pcie: read PCIe throughput. NVML measures it over a ~20 ms window per
            counter, so it adds wall time (not CPU time) to each sample.
        processes: list the compute processes and their memory.
    """
    module = _lazy_init()
    if module is None:
        return {}
    total, _free, used = memory_info(handle)
    util = _call(module, "nvmlDeviceGetUtilizationRates", handle)
    result: dict[str, Any] = {
        "utilization_percent": _scaled(getattr(util, "gpu", None), 1.0),
        "memory_used_bytes": used,
        "memory_total_bytes": total,
        # NVML reports milliwatts.
        "power_w": _scaled(_call(module, "nvmlDeviceGetPowerUsage", handle), 1e-3),
        "power_limit_w": _scaled(_call(module, "nvmlDeviceGetEnforcedPowerLimit", handle), 1e-3),
        "temperature_c": _scaled(
            _call(module, "nvmlDeviceGetTemperature", handle, getattr(module, "NVML_TEMPERATURE_GPU", 0)), 1.0
        ),
        "sm_clock_mhz": _scaled(
            _call(module, "nvmlDeviceGetClockInfo", handle, getattr(module, "NVML_CLOCK_SM", 1)), 1.0
        ),
        "mem_clock_mhz": _scaled(
            _call(module, "nvmlDeviceGetClockInfo", handle, getattr(module, "NVML_CLOCK_MEM", 2)), 1.0
        ),
        "pcie_rx_bytes_s": None,
        "pcie_tx_bytes_s": None,
        "processes": None,
    }
    if pcie:
        # NVML reports KiB/s.
        rx = _call(
            module, "nvmlDeviceGetPcieThroughput", handle, getattr(module, "NVML_PCIE_UTIL_RX_BYTES", 1)
        )
        tx = _call(
            module, "nvmlDeviceGetPcieThroughput", handle, getattr(module, "NVML_PCIE_UTIL_TX_BYTES", 0)
        )
        result["pcie_rx_bytes_s"] = _scaled(rx, 1024.0)
        result["pcie_tx_bytes_s"] = _scaled(tx, 1024.0)
    if processes:
        procs = compute_processes(handle)
        result["processes"] = tuple(procs) if procs is not None else None
    return result
