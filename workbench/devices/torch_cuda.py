"""The one place the device inventory touches ``torch.cuda``.

CUDA (and so torch) numbers GPUs its own way: it applies ``CUDA_VISIBLE_DEVICES``
and ``CUDA_DEVICE_ORDER``, which NVML ignores. Asking torch for each device's
UUID is the only exact way to know which NVML board ``cuda:1`` is.

Tests fake torch at :func:`cuda_module` (see ``tests/fakes/fake_pynvml.py``:
``fake_torch_cuda(uuids)``); everything above it is the real code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .._lazy import torch_if_imported

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchGpu:
    """What torch reports about one CUDA device."""

    index: int
    uuid: str | None
    name: str | None
    total_memory_bytes: int | None
    compute_capability: tuple[int, int] | None


def cuda_module(allow_import: bool = True) -> Any:
    """Return ``torch.cuda``, or ``None`` when torch is not installed (or not imported yet).

    Args:
        allow_import: import torch if it is not imported yet (about 2 s). With
            ``False``, only a torch the process already imported is used.
    """
    torch = torch_if_imported()
    if torch is None:
        if not allow_import:
            return None
        try:
            import torch
        except (ImportError, OSError) as exc:  # OSError: a broken CUDA install fails to dlopen
            logger.debug("torch unavailable: %s", exc)
            return None
    return getattr(torch, "cuda", None)


def normalize_uuid(uuid: Any) -> str | None:
    """``"GPU-6AAF..."``, ``"MIG-..."`` and torch's bare ``"6aaf..."`` compare equal after this.

    Example:
        >>> normalize_uuid("GPU-6AAF4EE1-0000"), normalize_uuid("6aaf4ee1-0000")
        ('6aaf4ee1-0000', '6aaf4ee1-0000')
    """
    if uuid is None:
        return None
    text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
    text = text.strip().lower()
    for prefix in ("gpu-", "mig-"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    return text or None


def torch_gpus(allow_import: bool = True) -> tuple[list[TorchGpu] | None, str | None]:
    """The CUDA devices torch can use, in torch's numbering, or ``(None, why not)``.

    Note that asking for device properties initialises CUDA in this process,
    which torch does anyway before any GPU work.

    Example:
        >>> gpus, why = torch_gpus(allow_import=False)
        >>> gpus is None or all(g.index == i for i, g in enumerate(gpus))
        True
    """
    cuda = cuda_module(allow_import)
    if cuda is None:
        return None, "torch is not installed" if allow_import else "torch is not imported"
    try:
        if not cuda.is_available():
            return None, "torch.cuda.is_available() is False (a CPU-only torch build, or no usable driver)"
        found = []
        for index in range(cuda.device_count()):
            props = cuda.get_device_properties(index)
            major, minor = getattr(props, "major", None), getattr(props, "minor", None)
            total = getattr(props, "total_memory", None)
            found.append(
                TorchGpu(
                    index=index,
                    uuid=normalize_uuid(getattr(props, "uuid", None)),
                    name=getattr(props, "name", None),
                    total_memory_bytes=int(total) if total is not None else None,
                    compute_capability=(int(major), int(minor)) if major is not None else None,
                )
            )
    except (RuntimeError, AssertionError, AttributeError, ValueError) as exc:
        # torch raises RuntimeError/AssertionError when CUDA init fails (driver too old...).
        return None, f"torch.cuda failed: {exc}"
    return found, None
