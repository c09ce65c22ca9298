"""A scriptable fake of the ``pynvml`` module, and of ``torch.cuda``, for tests and benchmarks.

The workbench reads NVML through one seam (``sys.modules["pynvml"]``, imported
lazily by ``workbench/devices/nvml.py``) and torch through another
(``workbench.devices.torch_cuda.cuda_module``). These fakes plug in there, so
every line above them is the real code.

Typical use, in a test (fixtures in ``fakes/fixtures.py``)::

    def test_fit(fake_nvml):
        gib = 2**30
        fake = fake_nvml(
            [
                FakeGpu(memory_total_bytes=24 * gib, processes=[FakeProcess(4242, 3 * gib)]),
                FakeGpu(memory_total_bytes=24 * gib),
            ],
            torch=True,  # torch.cuda sees the same two GPUs, in NVML order
        )
        assert memory_free_bytes("cuda:0") == 21 * gib

or without pytest::

    fake = make_fake_nvml([FakeGpu(), FakeGpu()])
    with installed(fake, torch=fake.torch_cuda()):
        ...

Values may be constants, zero-argument callables (e.g. closing over
``time.monotonic()``), or ``seq(a, b, c)``: one value per query, the last one
repeating. Failures: ``FakeGpu(unsupported={"power_w"})`` raises
``NVMLError_NotSupported`` for that field; ``gpu.fail("temperature_c")`` /
``gpu.heal(...)`` inject and remove an error mid-run; ``fake.fail()`` makes every
device query fail (driver gone); ``make_fake_nvml(init_error="library_not_found")``
is a machine without the driver.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import types
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

GiB = 2**30

# --- errors, mirroring pynvml's codes and class names --------------------------------------

NVML_SUCCESS = 0
ERROR_CODES = {
    "Uninitialized": 1,
    "InvalidArgument": 2,
    "NotSupported": 3,
    "NoPermission": 4,
    "AlreadyInitialized": 5,
    "NotFound": 6,
    "InsufficientSize": 7,
    "DriverNotLoaded": 9,
    "Timeout": 10,
    "LibraryNotFound": 12,
    "FunctionNotFound": 13,
    "GpuIsLost": 15,
    "LibRmVersionMismatch": 18,
    "Unknown": 999,
}
_CONSTANT_NAMES = {
    "Uninitialized": "NVML_ERROR_UNINITIALIZED",
    "InvalidArgument": "NVML_ERROR_INVALID_ARGUMENT",
    "NotSupported": "NVML_ERROR_NOT_SUPPORTED",
    "NoPermission": "NVML_ERROR_NO_PERMISSION",
    "AlreadyInitialized": "NVML_ERROR_ALREADY_INITIALIZED",
    "NotFound": "NVML_ERROR_NOT_FOUND",
    "InsufficientSize": "NVML_ERROR_INSUFFICIENT_SIZE",
    "DriverNotLoaded": "NVML_ERROR_DRIVER_NOT_LOADED",
    "Timeout": "NVML_ERROR_TIMEOUT",
    "LibraryNotFound": "NVML_ERROR_LIBRARY_NOT_FOUND",
    "FunctionNotFound": "NVML_ERROR_FUNCTION_NOT_FOUND",
    "GpuIsLost": "NVML_ERROR_GPU_IS_LOST",
    "LibRmVersionMismatch": "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
    "Unknown": "NVML_ERROR_UNKNOWN",
}


class NVMLError(Exception):
    """Like pynvml's: ``NVMLError(code)`` builds the matching subclass; ``.value`` is the code."""

    _by_code: dict[int, type[NVMLError]] = {}
    code = ERROR_CODES["Unknown"]

    def __new__(cls, value: int | None = None) -> NVMLError:
        if cls is NVMLError and value is not None:
            cls = NVMLError._by_code.get(value, NVMLError)
        obj = Exception.__new__(cls)
        obj.value = value if value is not None else cls.code
        return obj

    def __init__(self, value: int | None = None) -> None:
        super().__init__(self.value)

    def __str__(self) -> str:
        for name, code in ERROR_CODES.items():
            if code == self.value:
                return name
        return f"NVML Error with code {self.value}"


def _make_error(name: str) -> type[NVMLError]:
    cls = type(f"NVMLError_{name}", (NVMLError,), {"code": ERROR_CODES[name]})
    NVMLError._by_code[ERROR_CODES[name]] = cls
    return cls


NVMLError_Uninitialized = _make_error("Uninitialized")
NVMLError_InvalidArgument = _make_error("InvalidArgument")
NVMLError_NotSupported = _make_error("NotSupported")
NVMLError_NoPermission = _make_error("NoPermission")
NVMLError_AlreadyInitialized = _make_error("AlreadyInitialized")
NVMLError_NotFound = _make_error("NotFound")
NVMLError_InsufficientSize = _make_error("InsufficientSize")
NVMLError_DriverNotLoaded = _make_error("DriverNotLoaded")
NVMLError_Timeout = _make_error("Timeout")
NVMLError_LibraryNotFound = _make_error("LibraryNotFound")
NVMLError_FunctionNotFound = _make_error("FunctionNotFound")
NVMLError_GpuIsLost = _make_error("GpuIsLost")
NVMLError_LibRmVersionMismatch = _make_error("LibRmVersionMismatch")
NVMLError_Unknown = _make_error("Unknown")

#: ``init_error=`` shorthands for :func:`make_fake_nvml`.
INIT_ERRORS = {
    "library_not_found": NVMLError_LibraryNotFound,
    "driver_not_loaded": NVMLError_DriverNotLoaded,
    "no_permission": NVMLError_NoPermission,
    "version_mismatch": NVMLError_LibRmVersionMismatch,
    "unknown": NVMLError_Unknown,
}

ErrorSpec = type[BaseException] | BaseException | str


def _as_error(spec: ErrorSpec) -> BaseException:
    """``"not_supported"``, ``NVMLError_GpuIsLost`` or an instance -> an exception instance."""
    if isinstance(spec, BaseException):
        return spec
    if isinstance(spec, type):
        return spec()
    key = "".join(part.capitalize() for part in str(spec).split("_"))  # "not_supported" -> "NotSupported"
    if key not in ERROR_CODES:
        raise ValueError(f"unknown NVML error {spec!r}; use one of {sorted(ERROR_CODES)}")
    return NVMLError(ERROR_CODES[key])


# --- scripted values ------------------------------------------------------------------------


class Seq:
    """One value per query, in order; the last one repeats."""

    def __init__(self, values: list[Any]) -> None:
        if not values:
            raise ValueError("seq() needs at least one value")
        self._values = list(values)
        self._i = 0
        self._lock = threading.Lock()

    def next(self) -> Any:
        with self._lock:
            value = self._values[min(self._i, len(self._values) - 1)]
            self._i += 1
            return value


def seq(*values: Any) -> Seq:
    """A scripted value: ``FakeGpu(utilization_percent=seq(0, 50, 100))``."""
    return Seq(list(values))


def _resolve(value: Any) -> Any:
    if isinstance(value, Seq):
        return value.next()
    if callable(value):
        return value()
    return value


@dataclass
class FakeProcess:
    """A compute process on a fake GPU."""

    pid: int
    used_memory_bytes: int | None = None


@dataclass
class FakeGpu:
    """One fake GPU (or MIG instance). Units as the workbench reports them (bytes, W, bytes/s).

    ``memory_used_bytes=None`` means "the sum of ``processes``' memory".
    ``unsupported`` and ``errors`` name fields: ``name``, ``uuid``, ``memory``,
    ``utilization_percent``, ``power_w``, ``power_limit_w``, ``temperature_c``,
    ``sm_clock_mhz``, ``mem_clock_mhz``, ``pcie_rx_bytes_s``, ``pcie_tx_bytes_s``,
    ``processes``, ``compute_capability``, ``mig_mode``, ``handle``.
    """

    name: Any = "NVIDIA A10"
    uuid: str | None = None
    memory_total_bytes: Any = 24 * GiB
    memory_used_bytes: Any = None
    utilization_percent: Any = 0
    power_w: Any = 60.0
    power_limit_w: Any = 300.0
    temperature_c: Any = 40
    sm_clock_mhz: Any = 1410
    mem_clock_mhz: Any = 6251
    pcie_rx_bytes_s: Any = 0
    pcie_tx_bytes_s: Any = 0
    processes: Any = field(default_factory=list)
    compute_capability: Any = (8, 6)
    mig_mode: bool | None = False
    mig_instances: list[FakeGpu] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)
    errors: dict[str, ErrorSpec] = field(default_factory=dict)

    def fail(self, field_name: str, error: ErrorSpec = NVMLError_Unknown) -> None:
        """Make queries of ``field_name`` raise ``error`` from now on (mid-run injection)."""
        self.errors[field_name] = error

    def heal(self, field_name: str | None = None) -> None:
        """Undo :meth:`fail` for one field, or all of them."""
        if field_name is None:
            self.errors.clear()
        else:
            self.errors.pop(field_name, None)


@dataclass(frozen=True)
class FakeHandle:
    gpu: FakeGpu
    index: int
    mig_slot: int | None = None


class FakeNVML:
    """The fake library's state; :attr:`module` is what goes in ``sys.modules["pynvml"]``."""

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        driver_version: str = "550.54.15",
        cuda_driver_version: int = 12040,
        init_error: ErrorSpec | None = None,
    ) -> None:
        self.gpus = list(gpus)
        for i, gpu in enumerate(self.gpus):
            if gpu.uuid is None:
                gpu.uuid = default_uuid(i)
            for j, child in enumerate(gpu.mig_instances):
                if child.uuid is None:
                    child.uuid = "MIG-" + default_uuid(100 + 10 * i + j)[4:]
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        if isinstance(init_error, str) and init_error in INIT_ERRORS:
            init_error = INIT_ERRORS[init_error]
        self.init_error = init_error
        self.initialized = False
        self.init_count = 0
        self.shutdown_count = 0
        self.broken: BaseException | None = None
        self.calls: Counter[str] = Counter()
        self.module = self._build_module()

    # --- scripting -------------------------------------------------------------------------

    def fail(self, error: ErrorSpec = NVMLError_GpuIsLost) -> None:
        """Every device query raises ``error`` from now on (the driver went away)."""
        self.broken = _as_error(error)

    def heal(self) -> None:
        """Undo :meth:`fail`."""
        self.broken = None

    def torch_cuda(self, order: list[int] | None = None) -> FakeTorchCuda:
        """A ``torch.cuda`` fake seeing these GPUs (all, or NVML indices in ``order``)."""
        indices = order if order is not None else list(range(len(self.gpus)))
        gpus = [self.gpus[i] for i in indices]
        return FakeTorchCuda(
            [g.uuid or "" for g in gpus],
            names=[_resolve(g.name) for g in gpus],
            total_memory=[_resolve(g.memory_total_bytes) for g in gpus],
            capabilities=[_resolve(g.compute_capability) for g in gpus],
        )

    # --- the fake library ------------------------------------------------------------------

    def _check(self, handle: Any, field_name: str) -> FakeGpu:
        self.calls[field_name] += 1
        if not self.initialized:
            raise NVMLError_Uninitialized()
        if self.broken is not None:
            raise self.broken
        if not isinstance(handle, FakeHandle):
            raise NVMLError_InvalidArgument()
        gpu = handle.gpu
        if field_name in gpu.errors:
            raise _as_error(gpu.errors[field_name])
        if field_name in gpu.unsupported:
            raise NVMLError_NotSupported()
        return gpu

    def _used(self, gpu: FakeGpu) -> int:
        used = _resolve(gpu.memory_used_bytes)
        if used is None:
            used = sum(p.used_memory_bytes or 0 for p in self._processes(gpu))
        return int(used)

    @staticmethod
    def _processes(gpu: FakeGpu) -> list[FakeProcess]:
        return list(_resolve(gpu.processes) or [])

    def _build_module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        m.__file__ = __file__
        m.__fake__ = self
        m.NVML_SUCCESS = NVML_SUCCESS
        for name, const in _CONSTANT_NAMES.items():
            setattr(m, const, ERROR_CODES[name])
        m.NVMLError = NVMLError
        for name in ERROR_CODES:
            setattr(m, f"NVMLError_{name}", NVMLError._by_code[ERROR_CODES[name]])
        m.NVML_TEMPERATURE_GPU = 0
        m.NVML_CLOCK_SM = 1
        m.NVML_CLOCK_MEM = 2
        m.NVML_PCIE_UTIL_TX_BYTES = 0
        m.NVML_PCIE_UTIL_RX_BYTES = 1
        m.NVML_DEVICE_MIG_DISABLE = 0
        m.NVML_DEVICE_MIG_ENABLE = 1

        def nvmlInit() -> None:
            self.calls["nvmlInit"] += 1
            if self.init_error is not None:
                raise _as_error(self.init_error)
            self.initialized = True
            self.init_count += 1

        def nvmlShutdown() -> None:
            self.calls["nvmlShutdown"] += 1
            if not self.initialized:
                raise NVMLError_Uninitialized()
            self.initialized = False
            self.shutdown_count += 1

        def nvmlSystemGetDriverVersion() -> str:
            if not self.initialized:
                raise NVMLError_Uninitialized()
            return self.driver_version

        def nvmlSystemGetCudaDriverVersion() -> int:
            if not self.initialized:
                raise NVMLError_Uninitialized()
            return self.cuda_driver_version

        def nvmlDeviceGetCount() -> int:
            self.calls["count"] += 1
            if not self.initialized:
                raise NVMLError_Uninitialized()
            if self.broken is not None:
                raise self.broken
            return len(self.gpus)

        def nvmlDeviceGetHandleByIndex(index: int) -> FakeHandle:
            if not 0 <= index < len(self.gpus):
                raise NVMLError_InvalidArgument()
            handle = FakeHandle(self.gpus[index], index)
            self._check(handle, "handle")
            return handle

        def nvmlDeviceGetUUID(handle: FakeHandle) -> str:
            return str(self._check(handle, "uuid").uuid)

        def nvmlDeviceGetName(handle: FakeHandle) -> str:
            return str(_resolve(self._check(handle, "name").name))

        def nvmlDeviceGetMemoryInfo(handle: FakeHandle) -> Any:
            gpu = self._check(handle, "memory")
            total, used = int(_resolve(gpu.memory_total_bytes)), self._used(gpu)
            return types.SimpleNamespace(total=total, used=used, free=max(0, total - used))

        def nvmlDeviceGetUtilizationRates(handle: FakeHandle) -> Any:
            gpu = self._check(handle, "utilization_percent")
            return types.SimpleNamespace(gpu=int(_resolve(gpu.utilization_percent)), memory=0)

        def nvmlDeviceGetPowerUsage(handle: FakeHandle) -> int:
            return int(round(float(_resolve(self._check(handle, "power_w").power_w)) * 1000))

        def nvmlDeviceGetEnforcedPowerLimit(handle: FakeHandle) -> int:
            return int(round(float(_resolve(self._check(handle, "power_limit_w").power_limit_w)) * 1000))

        def nvmlDeviceGetTemperature(handle: FakeHandle, sensor: int) -> int:
            if sensor != m.NVML_TEMPERATURE_GPU:
                raise NVMLError_InvalidArgument()
            return int(_resolve(self._check(handle, "temperature_c").temperature_c))

        def nvmlDeviceGetClockInfo(handle: FakeHandle, clock: int) -> int:
            if clock == m.NVML_CLOCK_SM:
                return int(_resolve(self._check(handle, "sm_clock_mhz").sm_clock_mhz))
            if clock == m.NVML_CLOCK_MEM:
                return int(_resolve(self._check(handle, "mem_clock_mhz").mem_clock_mhz))
            raise NVMLError_InvalidArgument()

        def nvmlDeviceGetPcieThroughput(handle: FakeHandle, counter: int) -> int:
            # Real NVML reports KiB/s.
            if counter == m.NVML_PCIE_UTIL_RX_BYTES:
                return int(_resolve(self._check(handle, "pcie_rx_bytes_s").pcie_rx_bytes_s)) // 1024
            if counter == m.NVML_PCIE_UTIL_TX_BYTES:
                return int(_resolve(self._check(handle, "pcie_tx_bytes_s").pcie_tx_bytes_s)) // 1024
            raise NVMLError_InvalidArgument()

        def nvmlDeviceGetComputeRunningProcesses(handle: FakeHandle) -> list[Any]:
            gpu = self._check(handle, "processes")
            return [
                types.SimpleNamespace(pid=p.pid, usedGpuMemory=p.used_memory_bytes)
                for p in self._processes(gpu)
            ]

        def nvmlDeviceGetCudaComputeCapability(handle: FakeHandle) -> tuple[int, int]:
            return tuple(_resolve(self._check(handle, "compute_capability").compute_capability))

        def nvmlDeviceGetMigMode(handle: FakeHandle) -> list[int]:
            gpu = self._check(handle, "mig_mode")
            if gpu.mig_mode is None:
                raise NVMLError_NotSupported()
            mode = int(bool(gpu.mig_mode))
            return [mode, mode]

        def nvmlDeviceGetMaxMigDeviceCount(handle: FakeHandle) -> int:
            gpu = self._check(handle, "mig_mode")
            return 7 if gpu.mig_mode else 0

        def nvmlDeviceGetMigDeviceHandleByIndex(handle: FakeHandle, slot: int) -> FakeHandle:
            gpu = self._check(handle, "mig_mode")
            if not gpu.mig_mode or not 0 <= slot < len(gpu.mig_instances):
                raise NVMLError_NotFound()
            return FakeHandle(gpu.mig_instances[slot], handle.index, slot)

        for fn in list(locals().values()):
            if callable(fn) and getattr(fn, "__name__", "").startswith("nvml"):
                setattr(m, fn.__name__, fn)
        return m


def default_uuid(index: int) -> str:
    """Distinct, deterministic UUIDs whose first hex digit differs for the first 15 GPUs."""
    digit = (index % 15) + 1
    base = int(f"{digit:x}" * 32, 16) ^ index  # index folded in so >15 GPUs stay distinct
    return f"GPU-{uuid_module.UUID(int=base)}"


def make_fake_nvml(
    gpus: list[FakeGpu] | None = None,
    *,
    driver_version: str = "550.54.15",
    cuda_driver_version: int = 12040,
    init_error: ErrorSpec | None = None,
    library_missing: bool = False,
) -> FakeNVML:
    """Build a fake NVML with these GPUs (default: one ``FakeGpu()``).

    ``library_missing=True`` is a machine without the driver: ``nvmlInit`` raises
    ``NVMLError_LibraryNotFound``.
    """
    if library_missing:
        init_error = NVMLError_LibraryNotFound
    return FakeNVML(
        [FakeGpu()] if gpus is None else gpus,
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
        init_error=init_error,
    )


# --- torch.cuda -----------------------------------------------------------------------------


class FakeCudaUUID:
    """torch's ``_CUuuid``: ``str()`` is the bare UUID, without ``GPU-``."""

    def __init__(self, text: str) -> None:
        self._text = text

    def __str__(self) -> str:
        return self._text


class FakeTorchCuda:
    """Just enough of ``torch.cuda`` for the device inventory."""

    def __init__(
        self,
        uuids: list[str],
        *,
        names: list[str] | None = None,
        total_memory: list[int] | None = None,
        capabilities: list[tuple[int, int]] | None = None,
        available: bool = True,
        imported: bool = True,
    ) -> None:
        self.uuids = list(uuids)
        # False: torch is installed but this process has not imported it yet, so the
        # inventory only sees it when it may import torch (allow_import=True).
        self.imported = imported
        self.names = names or ["NVIDIA A10"] * len(self.uuids)
        self.total_memory = total_memory or [24 * GiB] * len(self.uuids)
        self.capabilities = capabilities or [(8, 6)] * len(self.uuids)
        self.available = available
        self.calls: Counter[str] = Counter()

    def is_available(self) -> bool:
        self.calls["is_available"] += 1
        return self.available

    def device_count(self) -> int:
        return len(self.uuids) if self.available else 0

    def get_device_properties(self, index: int) -> Any:
        self.calls["get_device_properties"] += 1
        if not 0 <= index < self.device_count():
            raise AssertionError("Invalid device id")
        bare = self.uuids[index]
        for prefix in ("GPU-", "MIG-"):
            if bare.startswith(prefix):
                bare = bare[len(prefix) :]
        major, minor = self.capabilities[index]
        return types.SimpleNamespace(
            name=self.names[index],
            uuid=FakeCudaUUID(bare),
            total_memory=self.total_memory[index],
            major=major,
            minor=minor,
        )


def fake_torch_cuda(uuids: list[str], **kwargs: Any) -> FakeTorchCuda:
    """A ``torch.cuda`` fake whose devices have these UUIDs, in this (torch) order."""
    return FakeTorchCuda(uuids, **kwargs)


# --- installing at the seams ----------------------------------------------------------------


def _torch_patch(torch: FakeTorchCuda | None) -> Callable[..., Any]:
    def cuda_module(allow_import: bool = True) -> Any:
        if torch is not None and not allow_import and not torch.imported:
            return None
        return torch

    return cuda_module


def install_fake_nvml(monkeypatch: Any, fake: FakeNVML | None) -> FakeNVML | None:
    """Put ``fake`` in ``sys.modules["pynvml"]`` (``None``: "nvidia-ml-py not installed")."""
    from workbench.devices import nvml

    monkeypatch.setitem(sys.modules, "pynvml", fake.module if fake is not None else None)
    nvml.reset()
    return fake


def install_fake_torch_cuda(monkeypatch: Any, torch: FakeTorchCuda | None) -> FakeTorchCuda | None:
    """Make the inventory see ``torch`` as ``torch.cuda`` (``None``: torch not installed)."""
    from workbench.devices import torch_cuda

    monkeypatch.setattr(torch_cuda, "cuda_module", _torch_patch(torch))
    return torch


@contextlib.contextmanager
def installed(fake: FakeNVML | None, torch: FakeTorchCuda | None = None) -> Iterator[FakeNVML | None]:
    """Install the fakes outside pytest (benchmarks, notebooks); restores everything on exit."""
    from workbench.devices import nvml, torch_cuda

    missing = object()
    saved_module = sys.modules.get("pynvml", missing)
    saved_torch = torch_cuda.cuda_module
    sys.modules["pynvml"] = fake.module if fake is not None else None  # type: ignore[assignment]
    torch_cuda.cuda_module = _torch_patch(torch)
    nvml.reset()
    try:
        yield fake
    finally:
        nvml.reset()
        torch_cuda.cuda_module = saved_torch
        if saved_module is missing:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = saved_module  # type: ignore[assignment]
