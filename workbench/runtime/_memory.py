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
from types import TracebackType

from .._lazy import torch_if_imported
from ..precision import is_gpu

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


_omp_pause: list = []  # [function] once found; looked up again until torch has loaded OpenMP


def _find_omp_pause():
    if _omp_pause:
        return _omp_pause[0]
    if sys.platform != "linux":
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
            paths = {line.split()[-1] for line in fh if "omp" in line and ".so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        name = path.rsplit("/", 1)[-1]
        if not name.startswith(("libgomp", "libiomp5", "libomp")):
            continue
        try:
            fn = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int]
        fn.restype = ctypes.c_int
        _omp_pause.append(fn)
        return fn
    return None


def release_omp_threads() -> bool:
    """Release the calling thread's OpenMP worker pool (``omp_pause_resource_all``, soft).

    Why: torch's CPU kernels run on OpenMP thread teams, one per thread that ran
    them (the notebook's main thread, a panel's worker, a generation thread). GNU
    OpenMP lets idle workers spin between parallel regions only while all teams
    together have no more threads than CPUs; past that every region waits on a
    futex, and CPU decoding ran at 18 tokens/s instead of 32 (SmolLM2-135M, 2 cores)
    as soon as a second team existed. So each workbench operation releases its
    thread's pool when it ends, and a stream releases the consumer's pool before
    its generation thread starts: one team at a time. The next torch call on the
    thread recreates its pool (microseconds).
    """
    if torch_if_imported() is None:
        return False
    fn = _find_omp_pause()
    if fn is None:
        return False
    fn(1)  # omp_pause_soft; a non-zero result (inside a parallel region) changes nothing
    return True


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
        return {d: int(torch.cuda.memory_reserved(d)) for d in names if is_gpu(d)}
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


def clear_traceback_frames(tb: TracebackType | None) -> None:
    """Release the locals of every finished frame in ``tb``.

    ``traceback.clear_frames`` does the clearing, but on Python 3.11 a frame whose
    ``f_locals`` was ever read keeps that snapshot dict (and the model in it) after
    ``frame.clear()``; emptying the snapshot too is what frees the memory.
    """
    while tb is not None:
        frame = tb.tb_frame
        try:
            frame.clear()
        except RuntimeError:
            pass  # still executing (our own frame): its locals are ours to drop
        else:
            frame.f_locals.clear()
        tb = tb.tb_next


def scrub_exception(exc: BaseException | None) -> None:
    """Clear the locals of every frame in ``exc``'s tracebacks (and its chain).

    A failed ``from_pretrained`` or ``generate`` leaves the half-built model (or the
    activations) in the locals of its frames, which the exception's traceback keeps
    alive; clearing them is what lets the memory go while the exception itself
    (message, traceback lines) survives.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        clear_traceback_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
