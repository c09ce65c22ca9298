"""Loading one model with transformers: placement, quantization, progress, cancel, rollback.

The registry (``registry.py``) owns names and bookkeeping, the store's safety gate
(:mod:`workbench.store.safety`) has already accepted the entry; this module turns a
checked :class:`LoadSpec` into a model and a tokenizer, or into a typed error
(:mod:`.load_errors`) with nothing left behind.

* Progress: transformers reads weights in one loop wrapped in its tqdm bar; the
  hook in :mod:`workbench._transformers_compat` lets us see each step, report a fraction,
  and stop at the next tensor when the user cancels. It only acts on the thread
  that is loading.
* Memory: on the CPU bitsandbytes quantizes after reading each full-precision
  tensor, and glibc keeps what is freed; trimming the heap every few tensors
  keeps the peak near the estimate instead of hundreds of MB above it.
* Rollback: on any failure the exception's frames (which hold the half-built
  model) are cleared before the typed error is raised, then memory is released.
* The class: the auto class the store's verdict names (``entry.auto_class``, from
  :mod:`workbench.store.support`): ``AutoModelForCausalLM``, or ``AutoModelForImageTextToText``
  for vision-language models, which also get their ``AutoProcessor`` (images in prompts).
  A processor transformers cannot build here (Qwen2-VL's needs torchvision for its video
  part) leaves the model running text prompts, and says why images are refused.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._transformers_compat import install_tqdm_hook, observing_weights
from ..errors import InsufficientMemoryError, LoadCancelledError, QuantizationUnsupportedError, WorkbenchError
from ..precision import normalize_device
from ..store import ModelEntry
from ..store.estimate import TRIM_EVERY, load_dtype
from ..store.support import CAUSAL_LM, IMAGE_TEXT_TO_TEXT
from ..store.tokenizer_files import find_chat_template
from . import _memory, _noise
from .load_errors import translate_error
from .spec import LoadPhase, LoadProgress, LoadSpec, ProgressCallback

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

# Share of the whole load each phase spans in the progress fraction.
PHASES: tuple[tuple[str, float, float], ...] = (
    ("check", 0.00, 0.02),
    ("tokenizer", 0.02, 0.06),
    ("weights", 0.06, 0.96),
    ("finalize", 0.96, 1.00),
)
_SPAN = {name: (a, b) for name, a, b in PHASES}


@dataclass
class _LoadContext:
    """One load's progress, cancel and trim pace; the weights loop reports to it tensor by tensor."""

    report: Callable[[LoadPhase, float, str], None]
    cancel: threading.Event | None
    trim_every: int = 0
    weights_done: int = 0
    weights_total: int = 0

    def check_cancel(self, where: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise LoadCancelledError(f"load cancelled during {where}", hint="nothing was kept; load again when ready")

    # WeightsObserver (see _transformers_compat.WeightsProgress)
    def start(self, total: int) -> None:
        self.weights_total = total
        self.check_cancel("weights")

    def step(self) -> None:
        self.weights_done += 1
        n = self.weights_done
        if self.trim_every and n % self.trim_every == 0:
            _memory.malloc_trim()
        frac = n / self.weights_total if self.weights_total else 0.0
        self.report("weights", frac, f"weights {n}/{self.weights_total}")
        self.check_cancel("weights")


@dataclass
class LoadOutcome:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    # Vision-language models: transformers' processor (images and text), or why there is none.
    processor: Any = None
    processor_problem: str | None = None
    load_times_s: dict[str, float] = field(default_factory=dict)
    placement: dict[str, int] = field(default_factory=dict)
    module_devices: dict[str, str] = field(default_factory=dict)
    footprint_bytes: int = 0


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


def load(entry: ModelEntry, spec: LoadSpec, *, device_map: Any, max_memory: dict[Any, int] | None,
         progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
         phase_times: dict[str, float] | None = None, dtype_name: str | None = None,
         precision: str | None = None) -> LoadOutcome:
    """Load ``entry`` as ``spec`` says; on any failure nothing stays referenced.

    Args:
        entry: an entry the store's safety gate accepted (:func:`workbench.store.safety.check_entry`).
        spec: a validated spec.
        device_map, max_memory: from :func:`workbench.runtime.fit.placement_plan`.
        progress: called with :class:`LoadProgress` as phases advance.
        cancel: set it (from another thread) to stop at the next tensor.
        phase_times: seconds already spent per phase (the registry's check).
        dtype_name: the torch dtype the weights load in, as the registry's plan resolved it
            (``None``: resolved here from ``spec.dtype``).
        precision: the precision label progress shows, as the plan has it (``None``: ``spec.precision``).

    Raises:
        LoadCancelledError, LoadError, InsufficientMemoryError, QuantizationUnsupportedError.
    """

    def report(phase: LoadPhase, frac: float, message: str) -> None:
        if progress is not None:
            a, b = _SPAN.get(phase, (0.0, 1.0))
            progress(LoadProgress(phase, a + (b - a) * max(0.0, min(1.0, frac)), message))

    ctx = _LoadContext(report, cancel)
    _noise.install()
    err: WorkbenchError | None = None
    outcome: LoadOutcome | None = None
    try:
        dtype = dtype_name or load_dtype(entry, spec.dtype)
        outcome = _load(entry, spec, ctx, device_map, max_memory, dict(phase_times or {}), dtype,
                        precision or spec.precision)
        return outcome
    except Exception as exc:  # translated and re-raised below, after the rollback
        err = translate_error(exc, entry, spec)
        if err is not exc:
            err.__cause__ = exc
        _memory.scrub_exception(exc)
        del exc
    finally:
        if outcome is None:
            # Also on KeyboardInterrupt: nothing of ours is referenced; give the memory back.
            _memory.release_memory()
        _memory.release_omp_threads()  # one OpenMP team at a time (see _memory.release_omp_threads)
    assert err is not None
    raise err


def _load(entry: ModelEntry, spec: LoadSpec, ctx: _LoadContext, device_map: Any,
          max_memory: dict[Any, int] | None, times: dict[str, float], dtype_name: str, precision: str) -> LoadOutcome:
    ctx.check_cancel("start")
    hooked = install_tqdm_hook()
    common: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code, "local_files_only": True}
    if entry.format == "gguf" and entry.gguf_file:
        common["gguf_file"] = entry.gguf_file

    t = time.perf_counter()
    ctx.report("tokenizer", 0.0, "reading the tokenizer")
    tokenizer = _read_tokenizer(entry, common)
    processor, processor_problem = _read_processor(entry, common, tokenizer)
    times["tokenizer"] = time.perf_counter() - t
    ctx.check_cancel("tokenizer")

    t = time.perf_counter()
    ctx.report("weights", 0.0, f"reading weights ({precision} on {', '.join(spec.devices)})")
    model = _read_weights(entry, spec, ctx, common, device_map, max_memory, dtype_name)
    times["weights"] = time.perf_counter() - t
    if not hooked:
        ctx.check_cancel("weights")

    t = time.perf_counter()
    ctx.report("finalize", 0.0, "placing and checking")
    model.eval()
    placement = measure_placement(model)
    _require_chosen_devices(entry, spec, placement)
    hf_map = getattr(model, "hf_device_map", None) or {"": spec.devices[0]}
    module_devices = {str(k): _device_str(v) for k, v in hf_map.items()}
    footprint = int(model.get_memory_footprint())
    ctx.check_cancel("finalize")
    # What the load freed (float32 scratch, full-precision copies) goes back now.
    _memory.malloc_trim()
    times["finalize"] = time.perf_counter() - t
    ctx.report("finalize", 1.0, "loaded")
    return LoadOutcome(model, tokenizer, processor, processor_problem, times, placement, module_devices, footprint)


def _read_tokenizer(entry: ModelEntry, common: dict[str, Any]) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(entry.folder, **common)
    if entry.format != "gguf":
        # The template the store reports is the one prompts get (chat_template.json included).
        found = find_chat_template(entry.folder)
        tokenizer.chat_template = found.template if found else None
    if getattr(tokenizer, "chat_template", None):
        from ..chat_template import prestart

        prestart()  # the bounded renderer's worker, started while the weights load
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Batches need a pad token; the EOS token is the usual stand-in (masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _read_processor(entry: ModelEntry, common: dict[str, Any],
                    tokenizer: PreTrainedTokenizerBase) -> tuple[Any, str | None]:
    """``(AutoProcessor, None)`` for a vision-language model, ``(None, why not)`` when transformers
    cannot build it here; ``(None, None)`` for text models. Its tokenizer is the one just read."""
    if entry.auto_class != IMAGE_TEXT_TO_TEXT:
        return None, None
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(entry.folder, **common)
    except (ImportError, OSError, ValueError, TypeError, AttributeError, KeyError) as exc:
        # A missing optional backend (torchvision), or no image processor files: text still runs.
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return None, f"transformers could not build its processor ({type(exc).__name__}: {first})"
    if getattr(processor, "tokenizer", None) is None or not hasattr(processor, "image_processor"):
        return None, f"its processor ({type(processor).__name__}) has no image processor"
    # One tokenizer for text and images: the one with the store's chat template and pad token.
    processor.tokenizer = tokenizer
    return processor, None


def _read_weights(entry: ModelEntry, spec: LoadSpec, ctx: _LoadContext, common: dict[str, Any], device_map: Any,
                  max_memory: dict[Any, int] | None, dtype_name: str) -> PreTrainedModel:
    import torch
    import transformers

    auto_class = getattr(transformers, entry.auto_class or CAUSAL_LM)
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
    with observing_weights(ctx):
        return auto_class.from_pretrained(entry.folder, **kwargs)


def _require_chosen_devices(entry: ModelEntry, spec: LoadSpec, placement: dict[str, int]) -> None:
    """accelerate may offload what does not fit (to the CPU, or to disk: "meta" here);
    the user chose the devices, so that is a failure to fit, not a silent slow model."""
    stray = sorted(set(placement) - set(spec.devices))
    if stray:
        raise InsufficientMemoryError(
            f"{entry.name} did not fit on {', '.join(spec.devices)}: accelerate put part of it on "
            f"{', '.join('disk' if d == 'meta' else d for d in stray)}",
            hint="add a device, raise max_memory, or use a smaller quantization",
            devices=list(spec.devices), name=entry.name)

