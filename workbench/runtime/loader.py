"""Loading one model with transformers: placement, quantization, progress, cancel, rollback.

The registry (``registry.py``) owns names and bookkeeping; this module turns a
checked :class:`LoadSpec` into a model and a tokenizer, or into a typed error
with nothing left behind.

* Progress: transformers reads weights in one loop wrapped in its ``tqdm``;
  transformers' own hook (``transformers.utils.logging.set_tqdm_hook``) lets us
  see each step, report a fraction, and stop at the next tensor when the user
  cancels. The hook is installed once and only acts on the thread that is loading.
* Memory: on the CPU bitsandbytes quantizes after reading each full-precision
  tensor, and glibc keeps what is freed; trimming the heap every few tensors
  keeps the peak near the estimate instead of hundreds of MB above it.
* Rollback: on any failure the exception's frames (which hold the half-built
  model) are cleared before the typed error is raised, then memory is released.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    BrokenModelError,
    InsufficientMemoryError,
    LoadCancelledError,
    LoadError,
    QuantizationUnsupportedError,
    UnsafeModelError,
    WorkbenchError,
)
from ..precision import normalize_device
from ..store import ModelEntry
from ..store.estimate import resolve_dtype
from ..store.tokenizer_files import find_chat_template, require_tokenizer
from . import _memory, _noise
from .spec import LoadPhase, LoadProgress, LoadSpec

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Share of the whole load each phase spans in the progress fraction.
PHASES: tuple[tuple[str, float, float], ...] = (
    ("check", 0.00, 0.02),
    ("tokenizer", 0.02, 0.06),
    ("weights", 0.06, 0.96),
    ("finalize", 0.96, 1.00),
)
_SPAN = {name: (a, b) for name, a, b in PHASES}
#: Trim glibc's heap after this many tensors while quantizing on the CPU.
TRIM_EVERY = 8


# --- safety ----------------------------------------------------------------------------------


def needs_remote_code(entry: ModelEntry) -> bool:
    """Whether the entry's ``config.json`` names its own Python classes (``auto_map``)."""
    folder = entry.path if entry.path.is_dir() else entry.path.parent
    try:
        with open(folder / "config.json", encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("auto_map"))


def check_entry(entry: ModelEntry, spec: LoadSpec) -> None:
    """Refuse broken entries, and unsafe ones unless the spec opts in for exactly that risk.

    Raises:
        BrokenModelError: the store found the files unreadable.
        UnsafeModelError: pickle weights without ``allow_pickle``, remote code without
            ``trust_remote_code``, or a risk no opt-in covers (a link out of the store).
    """
    if entry.format != "gguf" and not entry.has_tokenizer and entry.path.is_dir():
        require_tokenizer(entry.path, entry.name)
    if entry.status == "broken":
        raise BrokenModelError(f"{entry.name} cannot be loaded: {entry.problem}",
                               hint="fix or re-import the files (see `workbench store list`)",
                               name=entry.name, path=entry.path)
    if entry.status != "unsafe":
        return
    remote = needs_remote_code(entry)
    pickle = entry.format == "pickle"
    if remote and not spec.trust_remote_code:
        raise UnsafeModelError(f"{entry.name} needs to run its own Python code ({entry.path / 'config.json'})",
                               hint="load it with trust_remote_code=True only if you trust its source",
                               name=entry.name, path=entry.path)
    if pickle and not spec.allow_pickle:
        files = ", ".join(entry.weight_files[:3]) or "pickle files"
        raise UnsafeModelError(f"{entry.name} stores its weights as pickle ({files}), which can run code when loaded",
                               hint="convert it to safetensors, or pass allow_pickle=True if you trust its source "
                                    "(it then loads with weights_only=True)",
                               name=entry.name, path=entry.path)
    if not (remote or pickle):
        raise UnsafeModelError(f"{entry.name} cannot be loaded: {entry.problem}",
                               hint="no opt-in covers this; fix the store entry", name=entry.name, path=entry.path)


# --- progress and cancel, through transformers' tqdm hook -----------------------------------


@dataclass
class _LoadContext:
    report: Callable[[str, float, str], None]
    cancel: threading.Event | None
    trim_every: int = 0
    weights_done: int = 0
    weights_total: int = 0

    def check_cancel(self, where: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise LoadCancelledError(f"load cancelled during {where}", hint="nothing was kept; load again when ready")


_local = threading.local()
_hook_lock = threading.Lock()
_hook_state: dict[str, Any] = {"installed": False, "previous": None}


class _WeightsProgress:
    """Stands in for transformers' "Loading weights" tqdm bar on a loading thread."""

    def __init__(self, iterable: Any, ctx: _LoadContext) -> None:
        self._iterable = iterable
        self._ctx = ctx
        try:
            self.total = len(iterable)
        except TypeError:
            self.total = 0

    def __iter__(self) -> Any:
        ctx = self._ctx
        ctx.weights_total = self.total
        for item in self._iterable:
            ctx.check_cancel("weights")
            yield item
            ctx.weights_done += 1
            n = ctx.weights_done
            if ctx.trim_every and n % ctx.trim_every == 0:
                _memory.malloc_trim()
            frac = n / self.total if self.total else 0.0
            ctx.report("weights", frac, f"weights {n}/{self.total}")

    def __len__(self) -> int:
        return self.total

    def __enter__(self) -> _WeightsProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        # update(), close(), set_postfix()...: nothing to draw.
        return lambda *args, **kwargs: None


def _tqdm_hook(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    ctx = getattr(_local, "ctx", None)
    if ctx is not None and args and kwargs.get("desc") == "Loading weights":
        return _WeightsProgress(args[0], ctx)
    previous = _hook_state["previous"]
    if previous is not None:
        return previous(factory, args, kwargs)
    return factory(*args, **kwargs)


def _install_tqdm_hook() -> bool:
    """Install :func:`_tqdm_hook` once; ``False`` where transformers has no hook (older than 5.x)."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):
        return False
    with _hook_lock:
        current = getattr(hf_logging, "_tqdm_hook", None)
        if _hook_state["installed"] and current is _tqdm_hook:
            return True
        # Chain to whatever hook someone else set before us.
        _hook_state["previous"] = current if current is not _tqdm_hook else None
        hf_logging.set_tqdm_hook(_tqdm_hook)
        _hook_state["installed"] = True
    return True


# --- the load --------------------------------------------------------------------------------


@dataclass
class LoadOutcome:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    load_times_s: dict[str, float] = field(default_factory=dict)
    placement: dict[str, int] = field(default_factory=dict)
    module_devices: dict[str, str] = field(default_factory=dict)
    footprint_bytes: int = 0


def model_folder(entry: ModelEntry) -> Path:
    return entry.path if entry.path.is_dir() else entry.path.parent


def torch_dtype_name(entry: ModelEntry, spec: LoadSpec) -> str:
    """The dtype name the weights load in (``"auto"`` resolved from the checkpoint)."""
    return resolve_dtype(entry, spec.dtype)


def bnb_config(spec: LoadSpec, dtype_name: str) -> BitsAndBytesConfig | None:
    """transformers' ``BitsAndBytesConfig`` for the spec, or ``None`` without quantization.

    Raises:
        QuantizationUnsupportedError: the spec quantizes and bitsandbytes is not installed.
    """
    if spec.quant == "none":
        return None
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationUnsupportedError(f"quant={spec.quant!r} needs bitsandbytes, which is not installed",
                                           hint="pip install bitsandbytes, or load with quant='none'")
    import torch
    from transformers import BitsAndBytesConfig

    mixed = "cpu" in spec.devices and spec.device_type == "cuda"
    if spec.quant == "int8":
        # With a CPU share, int8 keeps the offloaded layers in float32 (bitsandbytes' rule).
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=mixed)
    compute = getattr(torch, spec.compute_dtype or dtype_name)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=spec.quant,
                              bnb_4bit_use_double_quant=spec.double_quant, bnb_4bit_compute_dtype=compute,
                              llm_int8_enable_fp32_cpu_offload=mixed)


def _device_str(value: Any) -> str:
    if isinstance(value, int):
        return f"cuda:{value}"
    return normalize_device(str(value))


def measure_placement(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers on each device, as ``get_memory_footprint()`` counts them."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    for tensors in (model.parameters(), model.buffers()):
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            d = _device_str(t.device)
            out[d] = out.get(d, 0) + t.nelement() * t.element_size()
    return out


def clear_traceback_frames(tb: Any) -> None:
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


def _scrub(exc: BaseException | None) -> None:
    """Clear the locals of every frame in ``exc``'s tracebacks (and its chain).

    A failed ``from_pretrained`` leaves the half-built model in the locals of its
    frames, which the exception's traceback keeps alive; clearing them is what lets
    the memory go while the exception itself (message, traceback lines) survives.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        clear_traceback_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _culprit_file(entry: ModelEntry, exc: BaseException) -> Path:
    """The weight file a load failure is about: the one whose header is bad, or the one named."""
    folder = model_folder(entry)
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


def _conversion_error(exc: BaseException) -> tuple[str, str] | None:
    """transformers 5 collects per-tensor conversion errors (a failed quantization) in
    ``loading_info.conversion_errors``, logs a report and raises a bare RuntimeError
    pointing at it; recover the first underlying ``(type name, message)`` from the frames."""
    tb = exc.__traceback__
    while tb is not None:
        info = tb.tb_frame.f_locals.get("loading_info")
        errors = getattr(info, "conversion_errors", None)
        if isinstance(errors, dict) and errors:
            text = str(next(iter(errors.values())))
            lines = [ln for ln in text.splitlines() if ln.strip()]
            for i in range(len(lines) - 1, 0, -1):
                head, sep, msg = lines[i].partition(": ")
                if sep and head.isidentifier() and head.endswith(("Error", "Exception")) and head != "Error":
                    return head, msg.strip()
            return "RuntimeError", lines[0] if lines else text
        tb = tb.tb_next
    return None


def translate_error(exc: BaseException, entry: ModelEntry, spec: LoadSpec) -> WorkbenchError:
    """A typed, readable error for an exception raised while loading."""
    if isinstance(exc, WorkbenchError):
        return exc
    detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}".rstrip(": ")
    conversion = _conversion_error(exc)
    if conversion is not None:
        kind, msg = conversion
        detail = f"{kind}: {msg}"
        if spec.quant != "none" and kind in ("NotImplementedError", "ImportError", "ModuleNotFoundError"):
            return QuantizationUnsupportedError(
                f"{spec.quant} quantization is not available on {', '.join(spec.devices)} ({detail})",
                hint="try another quantization ('nf4', 'int8') or quant='none'", quant=spec.quant,
                devices=list(spec.devices), name=entry.name)
        if "out of memory" in msg.lower() or kind in ("OutOfMemoryError", "MemoryError"):
            exc = MemoryError(msg)
    where = ", ".join(spec.devices)
    if _is_oom(exc):
        return InsufficientMemoryError(
            f"ran out of memory loading {entry.name} ({spec.precision}) on {where} ({detail})",
            hint="try a smaller quantization (quant='nf4'), another device, or free memory first",
            needed_bytes=None, devices=list(spec.devices), name=entry.name)
    if spec.quant != "none" and isinstance(exc, (NotImplementedError, ImportError)):
        return QuantizationUnsupportedError(
            f"{spec.quant} quantization is not available on {where} ({detail})",
            hint="try another quantization ('nf4', 'int8') or quant='none'", quant=spec.quant,
            devices=list(spec.devices), name=entry.name)
    path = _culprit_file(entry, exc)
    if entry.format == "pickle" and ("weights_only" in str(exc) or "Unpickl" in type(exc).__name__):
        return LoadError(f"{path} holds objects other than tensors and was not unpickled ({detail})",
                         hint="convert it to safetensors in an environment you trust", path=path, name=entry.name)
    return LoadError(f"loading {entry.name} from {path} failed ({detail})",
                     hint="check the files (`workbench store list` re-reads their headers) or re-import the model",
                     path=path, name=entry.name)


ReportFn = Callable[[LoadProgress], Any]


def load(entry: ModelEntry, spec: LoadSpec, *, device_map: Any, max_memory: dict[Any, int] | None,  # noqa: C901 (split with the module, issue 10)
         progress: ReportFn | None = None, cancel: threading.Event | None = None,
         phase_times: dict[str, float] | None = None) -> LoadOutcome:
    """Load ``entry`` as ``spec`` says; on any failure nothing stays referenced.

    Args:
        entry: a checked store entry (:func:`check_entry`).
        spec: a validated spec.
        device_map, max_memory: from :func:`workbench.runtime.fit.placement_plan`.
        progress: called with :class:`LoadProgress` as phases advance.
        cancel: set it (from another thread) to stop at the next tensor.
        phase_times: seconds already spent per phase (the registry's check).

    Raises:
        LoadCancelledError, LoadError, InsufficientMemoryError, QuantizationUnsupportedError.
    """
    times = dict(phase_times or {})

    def report(phase: LoadPhase, frac: float, message: str) -> None:
        if progress is not None:
            a, b = _SPAN.get(phase, (0.0, 1.0))
            progress(LoadProgress(phase, a + (b - a) * max(0.0, min(1.0, frac)), message))

    ctx = _LoadContext(report, cancel)
    dtype_name = torch_dtype_name(entry, spec)
    _noise.install()
    model = tokenizer = None
    err: WorkbenchError | None = None
    ok = False
    try:
        ctx.check_cancel("start")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hooked = _install_tqdm_hook()
        folder = model_folder(entry)
        common: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "local_files_only": True}
        if entry.format == "gguf" and entry.gguf_file:
            common["gguf_file"] = entry.gguf_file

        t = time.perf_counter()
        report("tokenizer", 0.0, "reading the tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, **common)
        if entry.format != "gguf":
            # The template the store reports is the one prompts get (chat_template.json included).
            found = find_chat_template(folder)
            tokenizer.chat_template = found.template if found else None
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            # Batches need a pad token; the EOS token is the usual stand-in (masked out anyway).
            tokenizer.pad_token = tokenizer.eos_token
        times["tokenizer"] = time.perf_counter() - t
        ctx.check_cancel("tokenizer")

        kwargs: dict[str, Any] = dict(common, dtype=getattr(torch, dtype_name), device_map=device_map)
        if max_memory:
            kwargs["max_memory"] = max_memory
        if entry.format == "pickle":
            kwargs.update(use_safetensors=False, weights_only=True)
        elif entry.format == "safetensors":
            kwargs["use_safetensors"] = True
        qc = bnb_config(spec, dtype_name)
        if qc is not None:
            kwargs["quantization_config"] = qc
        converting = entry.format == "gguf" or (entry.dtype is not None and entry.dtype != dtype_name)
        if "cpu" in spec.devices and (qc is not None or converting):
            # Host-side scratch only matters when the weights end up in host memory.
            ctx.trim_every = TRIM_EVERY
        t = time.perf_counter()
        report("weights", 0.0, f"reading weights ({spec.precision} on {', '.join(spec.devices)})")
        _local.ctx = ctx
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        finally:
            _local.ctx = None
        times["weights"] = time.perf_counter() - t
        if not hooked:
            ctx.check_cancel("weights")

        t = time.perf_counter()
        report("finalize", 0.0, "placing and checking")
        model.eval()
        placement = measure_placement(model)
        # accelerate may offload what does not fit (to the CPU, or to disk: "meta" here);
        # the user chose the devices, so that is a failure to fit, not a silent slow model.
        stray = sorted(set(placement) - set(spec.devices))
        if stray:
            raise InsufficientMemoryError(
                f"{entry.name} did not fit on {', '.join(spec.devices)}: accelerate put part of it on "
                f"{', '.join('disk' if d == 'meta' else d for d in stray)}",
                hint="add a device, raise max_memory, or use a smaller quantization",
                devices=list(spec.devices), name=entry.name)
        hf_map = getattr(model, "hf_device_map", None) or {"": spec.devices[0]}
        module_devices = {str(k): _device_str(v) for k, v in hf_map.items()}
        footprint = int(model.get_memory_footprint())
        ctx.check_cancel("finalize")
        # What the load freed (float32 scratch, full-precision copies) goes back now.
        _memory.malloc_trim()
        times["finalize"] = time.perf_counter() - t
        report("finalize", 1.0, "loaded")
        ok = True
        return LoadOutcome(model, tokenizer, times, placement, module_devices, footprint)
    except Exception as exc:  # translated and re-raised below, after the rollback
        err = translate_error(exc, entry, spec)
        if err is not exc:
            err.__cause__ = exc
        _scrub(exc)
        del exc
    finally:
        if not ok:
            # Also on KeyboardInterrupt: drop our references, then give the memory back.
            _local.ctx = None
            model = tokenizer = None
            _memory.release_memory()
        _memory.release_omp_threads()  # one OpenMP team at a time (see _memory.release_omp_threads)
    assert err is not None
    raise err
