"""Turning what a failed load raises into a typed, actionable :class:`WorkbenchError`.

torch, transformers, accelerate and bitsandbytes fail in their own words (a bare
``RuntimeError`` for a CUDA out-of-memory, ``NotImplementedError`` for a kernel a
device lacks, ``UnpicklingError``...); the user gets one of the workbench's errors
naming the model, the file at fault and what to try next.
"""

from __future__ import annotations

from pathlib import Path

from .._transformers_compat import conversion_error
from ..errors import (
    BrokenModelError,
    InsufficientMemoryError,
    LoadError,
    QuantizationUnsupportedError,
    WorkbenchError,
)
from ..store import ModelEntry
from .spec import LoadSpec

_QUANT_HINT = "try another quantization ('nf4', 'int8') or quant='none'"


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory: ``MemoryError``, torch's ``OutOfMemoryError``,
    or a ``RuntimeError`` saying "out of memory" (CUDA allocators, bitsandbytes)."""
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def culprit_file(entry: ModelEntry, exc: BaseException) -> Path:
    """The weight file a load failure is about: the one whose header is bad, or the one named."""
    folder = entry.folder
    text = str(exc)
    for name in entry.weight_files:
        if name in text:
            return folder / name
    if entry.format == "safetensors":
        from ..store.safetensors_header import read_safetensors_header

        for name in entry.weight_files:
            try:
                read_safetensors_header(folder / name)
            except (BrokenModelError, OSError):
                return folder / name
    if entry.gguf_file:
        return folder / entry.gguf_file
    if len(entry.weight_files) == 1:
        return folder / entry.weight_files[0]
    return entry.path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _quant_unsupported(spec: LoadSpec, entry: ModelEntry, detail: str) -> QuantizationUnsupportedError:
    return QuantizationUnsupportedError(
        f"{spec.quant} quantization is not available on {', '.join(spec.devices)} ({detail})",
        hint=_QUANT_HINT, quant=spec.quant, devices=list(spec.devices), name=entry.name)


def translate_error(exc: BaseException, entry: ModelEntry, spec: LoadSpec) -> WorkbenchError:
    """A typed, readable error for an exception raised while loading ``entry`` as ``spec`` says.

    Returns (never raises): ``exc`` itself when it already is a :class:`WorkbenchError`;
    :class:`InsufficientMemoryError` for running out of memory;
    :class:`QuantizationUnsupportedError` for a quantization the devices cannot run;
    :class:`LoadError` naming the file at fault otherwise.
    """
    if isinstance(exc, WorkbenchError):
        return exc
    detail = _first_line(exc)
    conversion = conversion_error(exc)
    if conversion is not None:
        kind, msg = conversion
        detail = f"{kind}: {msg}"
        if spec.quant != "none" and kind in ("NotImplementedError", "ImportError", "ModuleNotFoundError"):
            return _quant_unsupported(spec, entry, detail)
        if "out of memory" in msg.lower() or kind in ("OutOfMemoryError", "MemoryError"):
            exc = MemoryError(msg)
    if is_oom(exc):
        return InsufficientMemoryError(
            f"ran out of memory loading {entry.name} ({spec.precision}) on {', '.join(spec.devices)} ({detail})",
            hint="try a smaller quantization (quant='nf4'), another device, or free memory first",
            needed_bytes=None, devices=list(spec.devices), name=entry.name)
    if spec.quant != "none" and isinstance(exc, (NotImplementedError, ImportError)):
        return _quant_unsupported(spec, entry, detail)
    path = culprit_file(entry, exc)
    if entry.format == "pickle" and ("weights_only" in str(exc) or "Unpickl" in type(exc).__name__):
        return LoadError(f"{path} holds objects other than tensors and was not unpickled ({detail})",
                         hint="convert it to safetensors in an environment you trust", path=path, name=entry.name)
    return LoadError(f"loading {entry.name} from {path} failed ({detail})",
                     hint="check the files (`workbench store list` re-reads their headers) or re-import the model",
                     path=path, name=entry.name)
