"""The kernel's loaded models: load, list, get, and unload so that memory really comes back.

One :class:`Registry` per process (:func:`get_registry`): the Load panel, the
Prompt panel and notebook code all see the same models.

Unloading in a notebook: the registry drops every reference the workbench holds,
asks the front ends to drop theirs (:mod:`.unload_hooks`; once a panel of
``workbench.ui`` is built, that clears IPython's output history ``Out``, ``_``, ``__``, ``___``,
``_N``), clears the last traceback's frames, collects garbage, empties the
CUDA cache and trims glibc's heap. What it cannot reach are your own names: a
variable bound to ``loaded.model`` or ``loaded.tokenizer`` (or to a tensor the
model produced on the GPU) keeps that memory alive. Keep the :class:`LoadedModel`
(which is emptied on unload) rather than its ``model``, or ``del`` such names
before unloading.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .._lazy import torch_if_imported
from .._records import Record, jsonable
from ..errors import LoadCancelledError, LoadSpecError, ModelNotLoadedError, WorkbenchError
from ..precision import is_gpu
from ..store import MemoryEstimate, ModelEntry, ModelStore, format_bytes
from ..store.estimate import load_dtype
from ..store.safety import check_entry
from ..telemetry.events import post_event
from . import _memory, holdings, idle, leasing
from .fit import FitCheck, check_devices, placement_plan, require_fit
from .spec import LoadProgress, LoadSpec, ProgressCallback, UnloadReason, check_prequantized, default_n_ctx
from .unload_hooks import run_unload_hooks

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ..devices.leases import Lease
    from .idle import IdleWatcher

logger = logging.getLogger(__name__)

#: The engines a :class:`LoadedModel` runs on.
Engine = Literal["transformers", "llamacpp"]


class LoadedModel:
    """A model in memory, with where it is and what it cost.

    Attributes:
        name: its registry name.
        spec: the :class:`LoadSpec` it was loaded with.
        entry: its store entry.
        model: the transformers model (``None`` once unloaded).
        tokenizer: its tokenizer (``None`` once unloaded).
        processor: a vision-language model's transformers processor (``None`` for text models,
            once unloaded, or when ``processor_problem`` says why it could not be built).
        devices: the devices chosen.
        placement: bytes of weights on each device (like ``ollama ps``'s CPU/GPU split).
        module_devices: module -> device, like transformers' ``hf_device_map``.
        footprint_bytes: ``model.get_memory_footprint()``.
        estimate: the store's estimate the load was checked against (``None`` when the
            headers could not be read, e.g. pickle checkpoints).
        fit: the pre-load check (needed vs available), or ``None``.
        load_times_s: seconds per phase (``check``, ``tokenizer``, ``weights``, ``finalize``).
        load_s: the whole load, in seconds.
        loaded_at, last_used: ``time.time()`` stamps.
        engine: ``"transformers"``, or ``"llamacpp"`` for a GGUF run by llama.cpp (``model`` is then a
            :class:`~workbench.runtime.llamacpp.LlamaCppModel`).
        leases: the GPU leases it holds (:mod:`.leasing`; given back, and ``()``, once unloaded).
        unload_reason: why it was unloaded (``None`` while loaded); a generation that finds it
            gone raises with it (:meth:`require`).
        lock: held by a generation (one at a time per model) and by an unload.
    """

    def __init__(self, name: str, spec: LoadSpec, entry: ModelEntry, model: PreTrainedModel,
                 tokenizer: PreTrainedTokenizerBase, *,
                 placement: dict[str, int], module_devices: dict[str, str], footprint_bytes: int,
                 estimate: MemoryEstimate | None, fit: FitCheck | None, load_times_s: dict[str, float],
                 load_s: float, processor: Any = None, processor_problem: str | None = None,
                 engine: Engine = "transformers", leases: tuple[Lease, ...] = ()) -> None:
        self.name = name
        self.spec = spec
        self.entry = entry
        self.model: PreTrainedModel | None = model
        self.tokenizer: PreTrainedTokenizerBase | None = tokenizer
        # Vision-language models (workbench/runtime/loader.py): the processor images go through,
        # or why there is none (a model that takes images but whose processor cannot be built here).
        self.processor: Any = processor
        self.processor_problem = processor_problem
        self.devices = tuple(spec.devices)
        self.placement = placement
        self.module_devices = module_devices
        self.footprint_bytes = footprint_bytes
        self.estimate = estimate
        self.fit = fit
        self.load_times_s = load_times_s
        self.load_s = load_s
        self.engine: Engine = engine
        self.leases: tuple[Lease, ...] = leases
        self.unload_reason: UnloadReason | None = None
        self.loaded_at = time.time()
        self.last_used = self.loaded_at
        # One generation at a time per model: the Prompt panel and a notebook cell may
        # both ask, and a model's KV cache and RNG are not shareable between them.
        self.lock = threading.RLock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    @property
    def precision(self) -> str:
        """``"bfloat16"``, ``"nf4+dq"``...: the spec's, with ``"auto"`` resolved (a pre-quantized model's own)."""
        if self.entry.quant_method is not None:
            return self.entry.quantization or self.entry.quant_method
        if self.spec.quant == "none" and self.estimate is not None:
            return self.estimate.dtype
        return self.spec.precision

    @property
    def quant_state_bytes(self) -> int:
        """bitsandbytes scales the footprint leaves out (from the estimate; 0 unquantized)."""
        return self.estimate.quant_state_bytes if self.estimate is not None else 0

    @property
    def weight_bytes(self) -> int:
        """Bytes a decode step reads: the footprint plus quantization scales."""
        return self.footprint_bytes + self.quant_state_bytes

    @property
    def footprint_str(self) -> str:
        return format_bytes(self.footprint_bytes)

    @property
    def placement_str(self) -> str:
        """``"cuda:0 1.2 GiB (60%), cuda:1 0.8 GiB (40%)"``, as ``ollama ps`` shows the split."""
        total = sum(self.placement.values()) or 1
        return ", ".join(f"{d} {format_bytes(b)} ({100 * b / total:.0f}%)" for d, b in self.placement.items())

    @property
    def estimate_error(self) -> float | None:
        """``(estimate - footprint) / footprint``: how far the pre-load estimate was off."""
        if self.estimate is None or not self.footprint_bytes:
            return None
        return (self.estimate.weights_bytes - self.footprint_bytes) / self.footprint_bytes

    def touch(self) -> None:
        self.last_used = time.time()

    def require(self) -> None:
        """Raise :class:`ModelNotLoadedError` if this model was unloaded.

        Raises:
            ModelNotLoadedError: the model was unloaded (by the user or the idle watcher).
        """
        if self.model is None:
            reason = self.unload_reason or UnloadReason()
            raise ModelNotLoadedError(f"{self.name} was {reason.what}", hint=reason.hint, name=self.name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.entry.name, "spec": self.spec.to_dict(), "devices": list(self.devices),
            "precision": self.precision, "placement": dict(self.placement), "module_devices": dict(self.module_devices),
            "footprint_bytes": self.footprint_bytes, "quant_state_bytes": self.quant_state_bytes,
            "estimate": jsonable(self.estimate),
            "estimate_error": self.estimate_error, "load_times_s": dict(self.load_times_s), "load_s": self.load_s,
            "loaded_at": self.loaded_at, "last_used": self.last_used, "loaded": self.loaded, "engine": self.engine,
        }

    def __repr__(self) -> str:
        state = f"{self.footprint_str} on {', '.join(self.devices)}" if self.loaded else "unloaded"
        return f"<LoadedModel {self.name!r} {self.precision} {state}>"


@dataclass(frozen=True)
class UnloadPlan:
    """What unloading ``name`` will free, before it happens (ARCHITECTURE.md principle 6)."""

    name: str
    frees_bytes: int
    devices: tuple[str, ...]

    def describe(self) -> str:
        return f"unload {self.name}, freeing about {format_bytes(self.frees_bytes)} on {', '.join(self.devices)}"


@dataclass(frozen=True)
class UnloadReport(Record):
    """What an unload gave back.

    Attributes:
        freed_bytes: the model's footprint plus quantization state, now released.
        rss_before_bytes, rss_after_bytes: process RSS around the unload.
        cuda_before_bytes, cuda_after_bytes: torch's reserved CUDA memory per device.
        cleared: references cleared outside the workbench (``"Out[3]"``, ``"_"``,
            ``"sys.last_traceback"``...).
    """

    _json_properties = ("rss_returned_bytes",)

    name: str
    freed_bytes: int
    rss_before_bytes: int
    rss_after_bytes: int
    cuda_before_bytes: dict[str, int] = field(default_factory=dict)
    cuda_after_bytes: dict[str, int] = field(default_factory=dict)
    cleared: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def rss_returned_bytes(self) -> int:
        return self.rss_before_bytes - self.rss_after_bytes

    @property
    def freed_str(self) -> str:
        return format_bytes(self.freed_bytes)


# --- references held outside the workbench ---------------------------------------------------

def _pins_memory(value: Any, targets: list[Any]) -> bool:
    if any(value is t for t in targets):
        return True
    torch = torch_if_imported()
    return torch is not None and isinstance(value, (torch.nn.Module, torch.Tensor))


def clear_last_traceback(targets: list[Any]) -> list[str]:
    """Clear the last uncaught exception's frames when they hold ``targets`` or any tensor.

    IPython sets ``sys.last_traceback`` (so does the plain REPL): its frames' locals often
    hold the model or the activations of a failed generation. Returns what was cleared.
    """
    tb = getattr(sys, "last_traceback", None)
    walk = tb
    pinned = False
    while walk is not None and not pinned:
        try:
            pinned = any(_pins_memory(v, targets) for v in walk.tb_frame.f_locals.values())
        except (AttributeError, RuntimeError):
            pinned = False
        walk = walk.tb_next
    if not pinned:
        return []
    _memory.clear_traceback_frames(tb)
    for attr in ("last_value", "last_exc"):
        _memory.scrub_exception(getattr(sys, attr, None))
    return ["sys.last_traceback"]


def _release_references(targets: list[Any]) -> list[str]:
    return run_unload_hooks(targets) + clear_last_traceback(targets)


# --- the registry ----------------------------------------------------------------------------


class Registry:
    """The models loaded in this process.

    Example:
        >>> reg = get_registry()
        >>> m = reg.load(LoadSpec("SmolLM2-135M-Instruct", quant="nf4"))   # doctest: +SKIP
        >>> [x.name for x in reg.list()]                                    # doctest: +SKIP
        ['SmolLM2-135M-Instruct']
        >>> reg.unload(m.name).freed_str                                    # doctest: +SKIP
        '116.6 MiB'
    """

    def __init__(self, store: ModelStore | None = None) -> None:
        self._store = store
        self._models: dict[str, LoadedModel] = {}
        self._reserved: set[str] = set()  # names of loads in flight
        self._lock = threading.RLock()
        #: The idle-unload watcher (:func:`.idle.ensure_watcher` starts it when the setting is on).
        self.idle_watcher: IdleWatcher | None = None

    @property
    def store(self) -> ModelStore:
        """The store given, or else a new :class:`ModelStore` on each access: one built from the
        settings of the moment, so a changed ``WORKBENCH_STORE`` (tests, notebooks) is seen."""
        return self._store if self._store is not None else ModelStore()

    # -- names --------------------------------------------------------------------------------

    def _choose_name(self, plan: LoadPlan) -> str:
        spec, entry = plan.spec, plan.entry
        taken = set(self._models) | self._reserved
        if spec.name is not None:
            if spec.name in taken:
                raise LoadSpecError(f"a model named {spec.name!r} is already loaded",
                                    hint="unload it first, or choose another name", name=spec.name)
            return spec.name
        base = entry.name
        if plan.llamacpp:
            label = entry.quantization or entry.dtype or "gguf"
        elif spec.quant != "none":
            label = plan.precision
        else:
            label = plan.dtype or spec.dtype
        candidates = [base, f"{base}@{label}", f"{base}@{label}@{'+'.join(spec.devices)}"]
        for c in candidates:
            if c not in taken:
                return c
        i = 2
        while f"{candidates[-1]}#{i}" in taken:
            i += 1
        return f"{candidates[-1]}#{i}"

    # -- load ---------------------------------------------------------------------------------

    def resolve(self, spec: LoadSpec) -> ModelEntry:
        """The spec's store entry (looked up by name, or the entry it carries)."""
        return spec.model if isinstance(spec.model, ModelEntry) else self.store.get(spec.model)

    def load(self, spec: LoadSpec, progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> LoadedModel:
        """Load a model as ``spec`` says, after checking it fits.

        Args:
            spec: what to load (validated here first).
            progress: called with :class:`LoadProgress` (phase, fraction, message);
                :func:`tqdm_progress` draws a bar.
            cancel: set it from another thread to stop the load; it rolls back.

        Raises:
            LoadSpecError: the spec is wrong (what to change is in the message).
            ModelNotFoundError, BrokenModelError, UnsafeModelError: from the store entry.
            InsufficientMemoryError: it cannot fit (numbers and a suggestion), or ran out.
            LoadCancelledError: ``cancel`` was set; nothing was kept.
            LoadError, QuantizationUnsupportedError: the load failed and was rolled back.
        """
        from . import loader

        t0 = time.perf_counter()
        name = spec.model_name
        try:
            spec.validate()
            if progress is not None:
                progress(LoadProgress("check", 0.0, f"checking {name}"))
            entry = self.resolve(spec)
            name = entry.name
            check_entry(entry, trust_remote_code=spec.trust_remote_code, allow_pickle=spec.allow_pickle)
            check_prequantized(entry, spec)
            if cancel is not None and cancel.is_set():
                raise LoadCancelledError(f"load of {name} cancelled before it started", hint="nothing was loaded")
            plan = _plan_load(entry, spec)
            fit = plan.fit
            with self._lock:
                reg_name = self._choose_name(plan)
                self._reserved.add(reg_name)
            try:  # GPU leases: other users see this load, and a GPU promised to them refuses it
                leases = leasing.take(spec, fit, entry.name)
            except BaseException:
                with self._lock:
                    self._reserved.discard(reg_name)
                raise
        except WorkbenchError as exc:
            post_event("error", f"load of {name} refused: {exc}", model=name, error=type(exc).__name__, phase="check")
            raise
        check_s = time.perf_counter() - t0
        post_event("load_started", f"loading {reg_name} ({plan.precision}) on {', '.join(spec.devices)}",
                   model=reg_name, devices=list(spec.devices), dtype=spec.dtype, quant=spec.quant,
                   needed_bytes=fit.needed_bytes if fit else None)
        try:
            if plan.llamacpp:
                from . import llamacpp as engine

                free = {b.device: b.free_bytes for b in fit.verdict.devices} if fit else None
                outcome = engine.load(entry, spec, n_ctx=plan.n_ctx, free_bytes=free, progress=progress,
                                      cancel=cancel, phase_times={"check": check_s})
            else:
                outcome = loader.load(entry, spec, device_map=plan.device_map, max_memory=plan.max_memory,
                                      progress=progress, cancel=cancel, phase_times={"check": check_s},
                                      dtype_name=plan.dtype, precision=plan.precision)
        except WorkbenchError as exc:
            leasing.give_back(leases)
            with self._lock:
                self._reserved.discard(reg_name)
            if progress is not None:
                phase = "cancelled" if isinstance(exc, LoadCancelledError) else "failed"
                progress(LoadProgress(phase, 0.0, str(exc)))
            post_event("error", f"load of {reg_name} failed: {exc}", model=reg_name, error=type(exc).__name__, phase="load")
            raise
        except BaseException:
            leasing.give_back(leases)
            with self._lock:  # KeyboardInterrupt: the loader rolled back; forget the name too
                self._reserved.discard(reg_name)
            raise
        load_s = time.perf_counter() - t0
        loaded = LoadedModel(
            reg_name, spec, entry, outcome.model, outcome.tokenizer, placement=outcome.placement,
            module_devices=outcome.module_devices, footprint_bytes=outcome.footprint_bytes,
            estimate=fit.estimate if fit else None, fit=fit, load_times_s=outcome.load_times_s, load_s=load_s,
            processor=outcome.processor, processor_problem=outcome.processor_problem,
            engine=plan.engine)
        del outcome
        loaded.leases = leasing.settle(leases, loaded)
        with self._lock:
            self._reserved.discard(reg_name)
            self._models[reg_name] = loaded
        holdings.registry_changed(self)  # the Jupyter server's meter panel lists it (CPU loads too)
        idle.ensure_watcher(self)
        if progress is not None:
            progress(LoadProgress("done", 1.0, f"loaded {reg_name} in {load_s:.1f} s"))
        post_event("load_finished", f"loaded {reg_name} in {load_s:.1f} s", model=reg_name, load_s=load_s,
             footprint_bytes=loaded.footprint_bytes, placement=dict(loaded.placement), devices=list(spec.devices))
        return loaded

    # -- lookup -------------------------------------------------------------------------------

    def get(self, name: str) -> LoadedModel:
        """The loaded model called ``name``.

        Raises:
            ModelNotLoadedError: listing what is loaded.
        """
        with self._lock:
            found = self._models.get(name)
            names = sorted(self._models)
        if found is None:
            hint = f"loaded: {', '.join(names)}" if names else "nothing is loaded; load a model first"
            raise ModelNotLoadedError(f"no loaded model named {name!r}", hint=hint, name=name)
        return found

    def list(self) -> list[LoadedModel]:
        """Loaded models, oldest first."""
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.loaded_at)

    def __contains__(self, name: object) -> bool:
        return name in self._models

    def __len__(self) -> int:
        return len(self._models)

    # -- unload -------------------------------------------------------------------------------

    def plan_unload(self, name: str) -> UnloadPlan:
        """What :meth:`unload` would free; :meth:`unload` executes this plan.

        Raises:
            ModelNotLoadedError: nothing of that name is loaded.
        """
        m = self.get(name)
        return UnloadPlan(m.name, m.weight_bytes, m.devices)

    def unload(self, name: str, reason: UnloadReason | None = None) -> UnloadReport:
        """Unload ``name`` and give its memory back; see the module docstring for what you must avoid.

        Args:
            name: the registry name.
            reason: what a generation that finds the model gone is told (default: "unloaded",
                "load it again"); the idle watcher passes its own.

        Raises:
            ModelNotLoadedError: nothing of that name is loaded.
        """
        t0 = time.perf_counter()
        with self._lock:
            plan = self.plan_unload(name)
            m = self._models.pop(name)
        with m.lock:  # wait for a generation in progress to finish
            m.unload_reason = reason or UnloadReason()
            devices = [d for d in plan.devices if is_gpu(d)]
            rss_before = _memory.rss_bytes()
            cuda_before = _memory.cuda_reserved_bytes(devices) if devices else {}
            freed = plan.frees_bytes
            if m.engine == "llamacpp" and m.model is not None:
                m.model.close()  # llama.cpp frees its mapping, context and KV cache now
            targets = [m, m.model, m.tokenizer, m.processor]
            cleared = _release_references([t for t in targets if t is not None])
            # accelerate's dispatch hooks and generation caches hang off the model itself,
            # so dropping the model drops them; the LoadedModel survives, empty, in user code.
            m.model = None
            m.tokenizer = None
            m.processor = None
            del targets
            _memory.release_memory()
            leasing.give_back(m.leases)
            m.leases = ()
            rss_after = _memory.rss_bytes()
            cuda_after = _memory.cuda_reserved_bytes(devices) if devices else {}
        holdings.registry_changed(self)
        report = UnloadReport(name, freed, rss_before, rss_after, cuda_before, cuda_after, tuple(cleared),
                              time.perf_counter() - t0)
        post_event("unload", f"unloaded {name}, freed {format_bytes(freed)}", model=name, freed_bytes=freed,
             rss_before_bytes=rss_before, rss_after_bytes=rss_after)
        return report

    def unload_all(self) -> list[UnloadReport]:
        """Unload every model (newest first)."""
        return [self.unload(m.name) for m in reversed(self.list())]


@dataclass(frozen=True)
class LoadPlan:
    """A load decided before anything moves, resolved once and read by every step after.

    Attributes:
        entry: the store entry (looked up once).
        spec: the validated spec.
        engine: ``"llamacpp"`` for a GGUF at its own quantization (runtime/llamacpp.py), else
            ``"transformers"``: :meth:`LoadSpec.uses_llamacpp`, asked once, here.
        precision: the spec's precision label (``"bfloat16"``, ``"nf4+dq"``), for names, events and progress.
        dtype: the torch dtype name the weights load in: the fit's estimate's, so the dtype counted is
            the dtype loaded (:func:`~workbench.store.estimate.load_dtype`, the one rule: ``"auto"``
            resolved from the checkpoint); ``None`` on llama.cpp.
        n_ctx: the context llama.cpp allocates (:func:`.spec.default_n_ctx`; 0 on transformers).
        fit: the fit check (free memory and other users' leases read once, here, and handed to the
            lease's own check), or ``None`` for entries without headers to estimate from (pickle, remote code).
        device_map, max_memory: what ``from_pretrained`` gets (:func:`.fit.placement_plan`).
    """

    entry: ModelEntry
    spec: LoadSpec
    engine: Engine
    precision: str
    dtype: str | None
    n_ctx: int
    fit: FitCheck | None
    device_map: Any
    max_memory: dict[Any, int] | None

    @property
    def llamacpp(self) -> bool:
        return self.engine == "llamacpp"


def _plan_load(entry: ModelEntry, spec: LoadSpec) -> LoadPlan:
    """The engine, precision, fit check and placement of a load.

    A GGUF at its own quantization runs on llama.cpp, checked for the context it allocates;
    pickle or remote-code entries have no headers to estimate from (no fit, devices checked).

    Raises:
        InsufficientMemoryError: it cannot fit.
        LoadSpecError: a device this session does not have.
    """
    precision = spec.precision
    if spec.uses_llamacpp(entry):
        n_ctx = default_n_ctx(entry, spec.n_ctx)
        fit = require_fit(entry, spec, context_tokens=n_ctx, llamacpp=True)
        return LoadPlan(entry, spec, "llamacpp", precision, None, n_ctx, fit, None, None)
    fit = None
    if entry.params is not None:
        fit = require_fit(entry, spec, llamacpp=False)
    else:
        check_devices(spec)
    device_map, max_memory = placement_plan(spec, fit, fallback=_torch_free_bytes)
    # The dtype the estimate counted (store.estimate.load_dtype decided it there); asked afresh only
    # when there is no estimate (entries without headers).
    dtype = fit.estimate.dtype if fit is not None else load_dtype(entry, spec.dtype)
    return LoadPlan(entry, spec, "transformers", precision, dtype, 0, fit, device_map, max_memory)


def _torch_free_bytes(device: str) -> int | None:
    """torch's free-memory query, for a device whose NVML reading is missing."""
    if device == "cpu":
        from ..devices import memory_free_bytes

        return memory_free_bytes("cpu")
    torch = torch_if_imported()
    if torch is None:
        import torch
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, AssertionError, ValueError):
        return None


_registry: Registry | None = None
_registry_lock = threading.Lock()


def get_registry() -> Registry:
    """The process's (kernel's) registry, created on first use."""
    global _registry
    with _registry_lock:
        if _registry is None:
            _registry = Registry()
        return _registry
