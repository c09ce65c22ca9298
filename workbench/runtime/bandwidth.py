"""Memory bandwidth of a device, measured once and cached: the roofline of decoding.

Decoding one token reads every weight once, so a model's decode speed can never
exceed ``bandwidth / weight bytes``. We time a large tensor copy (each byte read
once and written once) and keep the best of a few runs, as STREAM's "copy" does.
The copy is large enough (256 MiB on the CPU, 1 GiB on a GPU) to defeat caches.
"""

from __future__ import annotations

import threading
import time

_cache: dict[str, float] = {}
_lock = threading.Lock()

CPU_BYTES = 256 * 2**20
CUDA_BYTES = 2**30
REPEATS = 5


def _measure_cpu(nbytes: int) -> float:
    import psutil
    import torch

    # Leave the rest of the machine alone: never more than an eighth of available RAM per buffer.
    nbytes = max(16 * 2**20, min(nbytes, int(psutil.virtual_memory().available) // 8))
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page before timing
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    moved = 2 * n * 4
    del src, dst
    from ._memory import malloc_trim

    malloc_trim()
    return moved / best


def _measure_cuda(device: str, nbytes: int) -> float:
    import torch

    # Events record on the current device's stream: make it the measured device.
    with torch.cuda.device(device):
        free, _total = torch.cuda.mem_get_info(device)
        nbytes = max(64 * 2**20, min(nbytes, int(free) // 4))
        n = nbytes // 4
        src = torch.ones(n, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)
        torch.cuda.synchronize(device)
        best = float("inf")
        for _ in range(REPEATS * 2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1000.0)
        moved = 2 * n * 4
        del src, dst
        torch.cuda.empty_cache()
    return moved / best


def measure_bandwidth(device: str, *, refresh: bool = False) -> float:
    """Memory bandwidth of ``device`` (``"cpu"``, ``"cuda:0"``) in bytes/s, measured once per process.

    Example:
        >>> bw = measure_bandwidth("cpu")  # doctest: +SKIP
        >>> f"{bw / 1e9:.1f} GB/s"  # doctest: +SKIP
        '11.8 GB/s'

    Raises:
        ConfigError: ``device`` is not ``cpu`` or ``cuda:N``.
    """
    from ..precision import check_device, is_gpu

    device = check_device(device)
    with _lock:
        if not refresh and device in _cache:
            return _cache[device]
        if device == "cpu":
            value = _measure_cpu(CPU_BYTES)
        elif is_gpu(device):
            value = _measure_cuda(device, CUDA_BYTES)
        else:  # check_device admits cpu and cuda:N only
            raise AssertionError(f"unreachable: {device!r}")
        _cache[device] = value
        return value

