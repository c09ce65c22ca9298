"""Process and CUDA memory: what a load costs and what an unload gives back.

Small helpers with no torch import unless torch is already loaded: the registry
measures memory before and after every unload, and the loader trims glibc's
heap while it quantizes.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import sys
import threading
from functools import lru_cache

logger = logging.getLogger(__name__)


def rss_bytes() -> int:
    """This process's resident set size now (psutil)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    # malloc_trim is a glibc extension: musl (Alpine) and macOS have none, and there
    # freed memory goes back to the system by other means (or not at all).
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError) as exc:
        logger.debug("malloc_trim unavailable: %s", exc)
        return None


_trim_lock = threading.Lock()


def malloc_trim() -> bool:
    """Give glibc's free heap pages back to the system; ``True`` if it could.

    Why: glibc keeps freed memory in its arenas (one per thread that allocated),
    and raises its mmap threshold after the first large free, so the tensors a
    quantized load frees (full-precision copies, float32 scratch) stay in the
    process's RSS: 190-490 MB for a 135M model, seen. ``malloc_trim(0)`` walks
    every arena and returns whole free pages.
    """
    libc = _libc()
    if libc is None:
        return False
    with _trim_lock:  # concurrent trims only repeat each other's work
        libc.malloc_trim(0)
    return True


def torch_if_imported():
    """torch, if this process already imported it; never imports it."""
    return sys.modules.get("torch")


def cuda_reserved_bytes(devices: list[str] | tuple[str, ...] | None = None) -> dict[str, int]:
    """Bytes torch's caching allocator holds on each CUDA device (``memory_reserved``).

    Only devices torch has initialised are asked; an empty dict without CUDA.
    """
    torch = torch_if_imported()
    if torch is None:
        return {}
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        names = devices if devices is not None else [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        return {d: int(torch.cuda.memory_reserved(d)) for d in names if d.startswith("cuda")}
    except (RuntimeError, AssertionError, AttributeError) as exc:
        logger.debug("CUDA memory query failed: %s", exc)
        return {}


def empty_cuda_cache() -> None:
    """Return torch's cached CUDA blocks to the driver, if CUDA is in use."""
    torch = torch_if_imported()
    if torch is None:
        return
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except (RuntimeError, AssertionError, AttributeError) as exc:
        logger.debug("empty_cache failed: %s", exc)


def release_memory() -> None:
    """Collect garbage, empty the CUDA cache, trim the heap: after an unload or a rollback."""
    import gc

    gc.collect()
    empty_cuda_cache()
    malloc_trim()
