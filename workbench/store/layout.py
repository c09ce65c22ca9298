"""What transformers will materialise for a checkpoint, read from the model it builds on the meta device.

Headers say what a checkpoint stores; the footprint after a load is what the
model's modules hold, and the two differ: transformers 5 fuses per-expert
matrices into 3-D parameters, keeps routers as plain parameters, ties heads,
upcasts ``_keep_in_fp32_modules_strict`` and adds buffers (rotary ``inv_freq``).
So the estimate asks the installed transformers: it builds the model from
``config.json`` on the ``meta`` device (no memory, no weights read) and applies
the rules its bitsandbytes integration applies at load time:

* ``replace_with_bnb_linear`` replaces modules whose type *is* ``nn.Linear`` (or
  GPT-2's ``Conv1D``), except those named by ``get_modules_to_not_convert``: the
  tied and output-embedding keys, the last parameter's module (the head),
  ``llm_int8_skip_modules`` and ``_keep_in_fp32_modules``
  (``transformers/quantizers/base.py``, ``integrations/bitsandbytes.py``);
* only a replaced module's ``weight`` is quantized; its bias keeps the dtype;
* parameters named by the model's dtype plan stay float32
  (``PreTrainedModel._get_dtype_plan``);
* ``get_memory_footprint()`` counts parameters and buffers, each once.

The same skeleton is run forward on the meta device for the cache a context
leaves (:mod:`workbench.store.kv_cache`), inside the same bound.

Building needs torch and transformers; it is cached per config file in the process,
and across processes in ``skeletons.json`` beside the header index (keyed by the
config's content, the transformers and torch versions and the skeleton bounds: a
second ``store inspect`` imports neither), and
:func:`model_layout` returns ``None`` (the estimate then falls back to header
rules for the weights, and says why the cache is unavailable) when the model cannot
be built: no torch, remote code, GGUF, a ``model_type`` this transformers does not
know (:func:`layout_or_reason` gives the reason).

The same skeleton answers whether a checkpoint's tensors cover the model
(:mod:`workbench.store.coverage`): :func:`coverage_or_reason` runs transformers' own
loading report on it, and caches the verdict beside the layout, keyed by the config's
content and the checkpoint's tensor names and shapes. A skeleton built for one also
answers the other (given the tensors), so a load that checks coverage and then its fit
builds one skeleton.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._transformers_compat import (
    fp32_matchers,
    loading_report,
    modules_not_to_convert,
    should_convert_module,
)
from ..errors import BrokenModelError, EstimateUnavailableError
from . import limits
from .coverage_report import CheckpointTensors, report_problem
from .folder_json import config_or_none
from .index_cache import IndexCache
from .kv_cache import CacheProfile, measure_cache
from .skeleton import check_config_counts, skeleton_budget

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ModelLayout:
    """Parameter and buffer counts of the model transformers builds, by how a load stores them.

    Attributes:
        linear_params: weights of the modules bitsandbytes replaces (quantized at int8/nf4).
        linear_rows: their output features (one int8 scale each).
        linear_count: how many such modules.
        params: every parameter once (tied ones once).
        follows_params: parameters (and floating buffers) stored in the load dtype, quantized ones excluded.
        fp32_fp16_params / fp32_bf16_params: of those, the ones the dtype plan keeps float32 when
            loading in float16 / bfloat16.
        fixed_bytes: buffers and parameters whose dtype does not follow the load (float32 ``inv_freq``,
            integer buffers), in bytes.
        cache: the cache one sequence holds (:class:`~workbench.store.kv_cache.CacheProfile`), measured
            by a meta-device forward pass; ``None`` when it could not be (``cache_problem`` says why).
    """

    params: int
    linear_params: int
    linear_rows: int
    linear_count: int
    follows_params: int
    fp32_fp16_params: int
    fp32_bf16_params: int
    fixed_bytes: int
    cache: CacheProfile | None = None
    cache_problem: str | None = None

    def other_bytes(self, width: int, dtype: str) -> int:
        """Bytes of everything bitsandbytes leaves alone, loading in ``dtype`` (``width`` bytes an element)."""
        kept = {"float16": self.fp32_fp16_params, "bfloat16": self.fp32_bf16_params}.get(dtype, 0)
        return (self.follows_params - kept) * width + kept * 4 + self.fixed_bytes

    def unquantized_bytes(self, width: int, dtype: str) -> int:
        """Bytes of the whole model loaded in ``dtype`` without quantization."""
        return self.other_bytes(width, dtype) + self.linear_params * width


_cache: dict[tuple[Any, ...], ModelLayout | EstimateUnavailableError | str] = {}
_lock = threading.Lock()


def _config_key(folder: Path, skip: tuple[str, ...] | None) -> tuple[Any, ...] | None:
    try:
        st = os.stat(folder / "config.json")
    except OSError:
        return None
    return (os.path.abspath(folder), st.st_size, st.st_mtime_ns, skip)


def model_layout(folder: Path, *, skip_modules: tuple[str, ...] | None = None,
                 shapes: Callable[[], CheckpointTensors | None] | None = None) -> ModelLayout | None:
    """The layout of the model in ``folder`` as transformers builds it; ``None`` if it cannot be built.

    See :func:`layout_or_reason` (same arguments and errors).
    """
    found = layout_or_reason(folder, skip_modules=skip_modules, shapes=shapes)
    return found if isinstance(found, ModelLayout) else None


def layout_or_reason(folder: Path, *, skip_modules: tuple[str, ...] | None = None,
                     shapes: Callable[[], CheckpointTensors | None] | None = None) -> ModelLayout | str:
    """The layout of the model in ``folder`` as transformers builds it, or why it cannot be built (a sentence).

    Args:
        folder: a model folder with ``config.json``.
        skip_modules: bitsandbytes' ``llm_int8_skip_modules`` (a pre-quantized checkpoint's);
            ``None`` for transformers' default skips (the head, tied and output embeddings).
        shapes: the checkpoint's tensor shapes by name (called only if a skeleton is built; ``None``
            from it: not to be checked); the same build then caches :func:`coverage_or_reason`'s verdict.

    Raises:
        EstimateUnavailableError: the skeleton is beyond the bounds of
            :func:`workbench.store.skeleton.skeleton_budget` (the verdict is cached too).
    """
    key = _config_key(folder, skip_modules)
    if key is None:
        return "it has no readable config.json"
    with _lock:
        if key in _cache:
            cached = _cache[key]
            if isinstance(cached, EstimateUnavailableError):
                raise cached
            return cached
    layout = _persisted(folder, skip_modules, shapes if skip_modules is None else None)
    with _lock:
        _cache[key] = layout
    if isinstance(layout, EstimateUnavailableError):
        raise layout
    return layout


def _verdict(folder: Path, skip_modules: tuple[str, ...] | None,
             shapes: Callable[[], CheckpointTensors | None] | None = None
             ) -> ModelLayout | str | EstimateUnavailableError:
    try:
        wanted = shapes() if shapes is not None else None
        return _build(folder, None if skip_modules is None else list(skip_modules), wanted)
    except EstimateUnavailableError as exc:
        if exc.reason == "time":  # depends on the machine's load now: not the config's verdict
            raise
        return exc


#: Bumped when what a stored skeleton result means changes.
_SCHEMA = 1
_persistent: dict[Path, IndexCache] = {}


def _persistent_cache() -> IndexCache | None:
    """``skeletons.json`` in the settings' cache folder now (the header index cache's kind of file)."""
    try:
        from ..config import get_settings

        path = Path(get_settings().cache_dir) / "skeletons.json"
    except Exception:  # noqa: BLE001 - no settings, no cache: an optimisation only
        return None
    with _lock:
        found = _persistent.get(path)
        if found is None:
            _persistent.clear()  # the settings moved (one at a time is kept)
            found = _persistent[path] = IndexCache(path)
        return found


@functools.lru_cache(maxsize=1)
def _library_versions() -> tuple[str, str] | None:
    """The transformers and torch versions (read once a process: a listing asks for every entry)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers"), version("torch")
    except PackageNotFoundError:
        return None


def _content_key(folder: Path, skip_modules: tuple[str, ...] | None) -> str | None:
    """The config's content, the libraries that answer, the bounds and the skips, hashed; ``None``: not cacheable."""
    raw = config_or_none(folder)
    libs = _library_versions()
    if raw is None or libs is None:
        return None
    text = json.dumps([_SCHEMA, raw, list(libs), skip_modules, limits.SKELETON_MAX_LAYERS, limits.SKELETON_MAX_MODULES],
                      sort_keys=True, default=str)
    return "skeleton:" + hashlib.sha256(text.encode()).hexdigest()


def _persisted(folder: Path, skip_modules: tuple[str, ...] | None,
               shapes: Callable[[], CheckpointTensors | None] | None = None,
               built: ModelLayout | str | EstimateUnavailableError | None = None
               ) -> ModelLayout | str | EstimateUnavailableError:
    """The verdict for ``folder``, from the persistent cache when its config was seen before (no torch import).

    ``built``: a verdict just computed (by :func:`coverage_or_reason`'s build), stored if none is.
    """
    try:
        key = _content_key(folder, skip_modules)
    except BrokenModelError:
        key = None
    store = _persistent_cache()
    if key is None or store is None:
        return built if built is not None else _verdict(folder, skip_modules, shapes)

    def compute() -> dict[str, Any]:
        found = built if built is not None else _verdict(folder, skip_modules, shapes)
        if isinstance(found, EstimateUnavailableError):
            return {"refused": {"message": found.message, "hint": found.hint, "reason": found.reason}}
        return {"reason": found} if isinstance(found, str) else {"layout": _layout_to_json(found)}

    stored = store.get_keyed(key, compute)
    store.save()
    try:
        if "layout" in stored:
            return _layout_from_json(stored["layout"])
        if "reason" in stored:
            return str(stored["reason"])
        r = stored["refused"]
        return EstimateUnavailableError(str(r["message"]), hint=r.get("hint"), name=folder.name, reason=r.get("reason"))
    except (KeyError, TypeError, ValueError, AttributeError):  # a damaged cache file: ask transformers again
        return _verdict(folder, skip_modules)


def _layout_to_json(layout: ModelLayout) -> dict[str, Any]:
    out = {f.name: getattr(layout, f.name) for f in dataclasses.fields(layout)}
    out["cache"] = layout.cache.to_dict() if layout.cache is not None else None
    return out


def _layout_from_json(data: dict[str, Any]) -> ModelLayout:
    values = {f.name: data[f.name] for f in dataclasses.fields(ModelLayout)}
    for name in ("params", "linear_params", "linear_rows", "linear_count", "follows_params", "fp32_fp16_params",
                 "fp32_bf16_params", "fixed_bytes"):
        values[name] = int(values[name])
    values["cache"] = CacheProfile.from_dict(values["cache"]) if values["cache"] is not None else None
    values["cache_problem"] = None if values["cache_problem"] is None else str(values["cache_problem"])
    return ModelLayout(**values)


#: What transformers raises for a model it cannot build or match a checkpoint to (a verdict, not a crash).
_NO_SKELETON = (ImportError, OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
                NotImplementedError, AssertionError)


def _build(folder: Path, skip_modules: list[str] | None,
           shapes: CheckpointTensors | None = None) -> ModelLayout | str:
    """Build the skeleton once: its layout, and with ``shapes``, the coverage verdict (remembered)."""
    skeleton = _meta_skeleton(folder, skip_modules)
    if isinstance(skeleton, str):
        if shapes is not None:
            _remember_coverage(folder, shapes.digest, CoverageVerdict(unchecked=skeleton))
        return skeleton
    model, skip, matchers, cache, cache_problem = skeleton
    quantized, rows = _quantized_weights(model, skip)
    layout = _count(model, quantized, rows, matchers, cache, cache_problem)
    if shapes is not None:  # last: the loading report sets the checkpoint's meta tensors into the model
        try:
            with skeleton_budget(folder.name), _quiet():
                report = loading_report(model, shapes.shapes)
        except _NO_SKELETON + (EstimateUnavailableError,) as exc:  # the layout stands; only this verdict is lost
            logger.debug("no coverage verdict for %s: %s: %s", folder, type(exc).__name__, exc)
            verdict = CoverageVerdict(unchecked=f"transformers cannot match its tensors ({type(exc).__name__}: "
                                                f"{str(exc)[:200]})")
        else:
            verdict = CoverageVerdict(problem=report_problem(report))
        _remember_coverage(folder, shapes.digest, verdict)
    return layout


# -- coverage: the checkpoint's tensors against the skeleton (workbench/store/coverage.py) --------------------


@dataclass(frozen=True)
class CoverageVerdict:
    """Whether a checkpoint's tensors cover the model transformers builds for it.

    Attributes:
        problem: ``None`` when they do; else the sentence naming the tensors at fault
            (:func:`workbench.store.coverage.report_problem`).
        unchecked: why there is no verdict (the skeleton cannot be built); ``problem`` is then ``None``.
    """

    problem: str | None = None
    unchecked: str | None = None


_coverage: dict[tuple[Any, ...], CoverageVerdict] = {}


def _coverage_keys(folder: Path, digest: str) -> tuple[tuple[Any, ...] | None, str | None]:
    """(in-process key, persistent key) of the verdict for a checkpoint's tensors (their
    :func:`~workbench.store.coverage.checkpoint_digest`) against ``folder``'s config."""
    config_key = _config_key(folder, None)
    try:
        content = _content_key(folder, None)
    except BrokenModelError:
        content = None
    persistent = None if content is None else "coverage:" + hashlib.sha256(
        json.dumps([_SCHEMA, content, digest]).encode()).hexdigest()
    return (None if config_key is None else (*config_key, digest)), persistent


def _remember_coverage(folder: Path, digest: str, verdict: CoverageVerdict) -> None:
    local, persistent = _coverage_keys(folder, digest)
    if local is not None:
        with _lock:
            _coverage[local] = verdict
    store = _persistent_cache()
    if persistent is not None and store is not None and verdict.unchecked is None:
        # get_keyed keeps a verdict already there (the same content gives the same verdict)
        store.get_keyed(persistent, lambda: {"problem": verdict.problem})
        store.save()


def cached_coverage(folder: Path, digest: str) -> CoverageVerdict | None:
    """The verdict for the checkpoint tensors of ``digest`` against ``folder``'s model if one was computed
    before, else ``None``.

    Builds nothing and imports neither torch nor transformers (the listing asks this).
    """
    local, persistent = _coverage_keys(folder, digest)
    if local is not None:
        with _lock:
            hit = _coverage.get(local)
        if hit is not None:
            return hit
    store = _persistent_cache()
    if persistent is None or store is None:
        return None
    stored = store.peek_keyed(persistent)
    if not isinstance(stored, dict) or not isinstance(stored.get("problem"), (str, type(None))):
        return None  # none, or a damaged cache file
    return CoverageVerdict(problem=stored["problem"])


def coverage_or_reason(folder: Path, shapes: CheckpointTensors) -> CoverageVerdict:
    """Whether a checkpoint of tensors of ``shapes`` covers the model transformers builds from ``folder``'s config.

    Cached (:func:`cached_coverage`); otherwise the skeleton is built once for this verdict and for
    :func:`layout_or_reason`'s layout (stored too, so the estimate that follows builds nothing).

    Raises:
        EstimateUnavailableError: only for the time bound (the machine's load now); the other bounds
            give a verdict with ``unchecked`` set.
    """
    hit = cached_coverage(folder, shapes.digest)
    if hit is not None:
        return hit
    key = _config_key(folder, None)
    if key is None:
        return CoverageVerdict(unchecked="it has no readable config.json")
    built = _verdict(folder, None, lambda: shapes)
    layout = _persisted(folder, None, built=built)
    with _lock:
        _cache.setdefault(key, layout)
    if isinstance(built, EstimateUnavailableError):
        return CoverageVerdict(unchecked=str(built))
    found = cached_coverage(folder, shapes.digest)
    return found if found is not None else CoverageVerdict(unchecked="its verdict could not be kept")


def model_class(raw: dict[str, Any] | None) -> str:
    """The transformers auto class the runtime loads a ``config.json`` (as a dict) with (:mod:`.support`)."""
    from .support import CAUSAL_LM, model_support

    return (model_support(raw).auto_class if raw is not None else None) or CAUSAL_LM


def _meta_skeleton(folder: Path, skip_modules: list[str] | None
                   ) -> tuple[Any, list[str], dict[str, Any], CacheProfile | None, str | None] | str:
    """``(model on the meta device, modules not quantized, fp32 matchers, cache, cache problem)``, or why not."""
    try:
        import torch
        import transformers
        from transformers import AutoConfig
    except ImportError as exc:
        logger.debug("no model layout for %s: %s", folder, exc)
        return f"torch and transformers are not installed ({exc})"
    raw = config_or_none(folder)
    if raw is not None:  # before transformers expands per-layer lists for a million layers
        check_config_counts(raw, folder.name)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        if getattr(config, "quantization_config", None) is not None:
            # Build the full-precision skeleton; the caller knows how the checkpoint is packed.
            del config.quantization_config
        auto_name = model_class(raw)
        _import_model_class(config, auto_name)  # a first import of the modeling code is not the skeleton's cost
        auto = getattr(transformers, auto_name)
        cache: CacheProfile | None = None
        cache_problem: str | None = None
        # The one bound on a skeleton's cost (workbench/store/skeleton.py): a config declaring
        # thousands of layers is refused, a build or forward pass past its module or time budget abandoned.
        with skeleton_budget(folder.name), _quiet(), torch.device("meta"):
            model = auto.from_config(config, dtype=torch.bfloat16)
            try:
                cache = measure_cache(model, folder.name)
            except EstimateUnavailableError as exc:
                if exc.reason != "cache":
                    raise
                cache_problem = str(exc)
        return model, modules_not_to_convert(model, skip_modules), fp32_matchers(model), cache, cache_problem
    except _NO_SKELETON as exc:
        logger.debug("no model layout for %s: %s: %s", folder, type(exc).__name__, exc)
        return f"transformers cannot build it ({type(exc).__name__}: {str(exc)[:200]})"


def _import_model_class(config: Any, auto_name: str) -> None:
    """Import the class ``from_config`` will build (the auto class's mapping); unknown: nothing."""
    from transformers.models.auto import modeling_auto

    mapping = {"AutoModelForCausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING,
               "AutoModelForImageTextToText": modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING}.get(auto_name)
    try:
        if mapping is not None:
            mapping[type(config)]
    except KeyError:
        pass


def _quantized_weights(model: Any, skip: list[str]) -> tuple[set[str], int]:
    """The weights bitsandbytes would quantize (``nn.Linear`` or ``Conv1D`` modules not skipped), and their rows."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    quantized: set[str] = set()
    rows = 0
    for mod_name, module in model.named_modules():
        if not (isinstance(module, Conv1D) or type(module) is nn.Linear):
            continue
        weight = getattr(module, "weight", None)
        if weight is None or not should_convert_module(mod_name, skip):
            continue
        quantized.add(f"{mod_name}.weight" if mod_name else "weight")
        rows += weight.shape[1] if isinstance(module, Conv1D) else weight.shape[0]
    return quantized, rows


def _count(model: Any, quantized: set[str], rows: int, matchers: dict[str, Any], cache: CacheProfile | None = None,
           cache_problem: str | None = None) -> ModelLayout:
    import torch

    params = linear = follows = fixed = 0
    kept = {"float16": 0, "bfloat16": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        params += n
        if name in quantized:
            linear += n
            continue
        if p.dtype == torch.bfloat16:
            follows += n
            for dt, rx in matchers.items():
                if rx is not None and rx.search(name):
                    kept[dt] += n
        else:
            fixed += n * p.element_size()
    for _name, b in model.named_buffers():
        if b.dtype == torch.bfloat16:
            follows += b.numel()
        else:
            fixed += b.numel() * b.element_size()
    return ModelLayout(params=params, linear_params=linear, linear_rows=rows, linear_count=len(quantized),
                       follows_params=follows, fp32_fp16_params=kept["float16"], fp32_bf16_params=kept["bfloat16"],
                       fixed_bytes=fixed, cache=cache, cache_problem=cache_problem)


class _quiet:
    """Silence transformers' warnings while building a skeleton nobody will run."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()

    def __exit__(self, *exc: Any) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)
