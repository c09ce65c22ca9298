"""Everything the workbench takes from transformers' internals, in one place.

transformers offers no public API for these, so each is a bet on how its current
version works. They live here (at the bottom of the package, so the store and the
runtime both use them), each with one contract test in
``tests/test_transformers_contract.py``, so a transformers upgrade that breaks a
bet fails that named test instead of a load, a scan or an import:

* **Weights progress**: transformers reads the weights in one loop wrapped in its
  tqdm bar described ``"Loading weights"``; ``transformers.utils.logging.set_tqdm_hook``
  (5.x) lets us swap that bar for :class:`WeightsProgress` on the loading thread.
  The hook in place before ours is read from the private ``_tqdm_hook`` attribute
  so we can chain to it.
* **Conversion errors**: transformers 5 collects per-tensor conversion errors (a
  failed quantization) in ``loading_info.conversion_errors``, logs a report and
  raises a bare ``RuntimeError`` pointing at it; :func:`conversion_error` reads
  ``loading_info`` out of the traceback's frames to recover the real error.
* **GGUF progress bars**: transformers' GGUF reader loops over ``tqdm.auto``
  (module attribute ``tqdm`` of ``modeling_gguf_pytorch_utils``) rather than its
  switchable ``logging.tqdm``; :func:`library_progress_bars_off` points it there.
* **Chat templates** (:mod:`workbench.chat_template`): a prompt is rendered by
  ``transformers.utils.chat_template_utils.render_jinja_template`` (what
  ``apply_chat_template`` calls, with transformers' own sandboxed Jinja environment and
  filters), given the tokenizer's ``special_tokens_map`` as template variables, in a
  worker process; :func:`render_jinja_template` is that function.
* **The serving app** (:mod:`workbench.serve.tf_launcher`): ``transformers serve``
  (``transformers.cli.serve.Serve``) builds its FastAPI app by calling
  ``transformers.cli.serving.server.build_server``, imported from that module when the
  command runs; :func:`wrap_serve_app` replaces the module attribute so the app built
  gets the engine's key check before uvicorn starts it.
* **Quantization layout** (the store's estimates, :mod:`workbench.store.layout`):
  which modules bitsandbytes quantizes (``HfQuantizer.get_modules_to_not_convert``
  with the model's ``_keep_in_fp32_modules``, ``should_convert_module``), and which
  parameters a model keeps in float32 under a half dtype (``_get_dtype_plan``,
  matched with ``core_model_loading.build_glob_alternation``).
* **Auto classes' mappings** (:mod:`workbench.store.support`): which model class each
  ``AutoModelFor*`` builds for a ``model_type`` is the ``*_MAPPING_NAMES`` tables of
  ``transformers/models/auto/modeling_auto.py``. Importing that module imports torch
  (seconds), so :func:`auto_mapping_names` reads the tables out of its source with
  ``ast.literal_eval`` (tens of milliseconds, no code run), and imports the module only
  when the source no longer has that shape.
* **What a load reports missing** (:mod:`workbench.store.coverage`): ``from_pretrained`` decides which
  checkpoint tensors fill which parameters in ``core_model_loading.convert_and_load_state_dict_in_model``
  (keys renamed by ``conversion_mapping.get_model_conversion_mapping``'s transforms through
  ``rename_source_key``, converters applied, the base-model prefix added or stripped, shapes compared
  in ``set_param_for_module``), then ``PreTrainedModel.tie_weights(missing_keys=...)`` and
  ``_adjust_missing_and_unexpected_keys``; :func:`loading_report` runs those calls on a meta skeleton.
* **Where a forward pass returns its cache** (:mod:`workbench.store.kv_cache`, the family sweep): under
  one of the names ``generate()`` looks for, ``transformers.generation.utils.ALL_CACHE_NAMES``
  (``cache``; RWKV's ``state``, XLNet's ``mems``, Reformer's ``past_buckets_states``);
  :func:`cache_output` reads it.

Nothing here imports transformers at module level.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

#: The ``desc`` of transformers' tqdm bar around the weights loop.
WEIGHTS_BAR_DESC = "Loading weights"
#: The private attribute of ``transformers.utils.logging`` holding the installed hook.
HOOK_ATTRIBUTE = "_tqdm_hook"
#: The local variable of transformers' loading frames that collects conversion errors.
LOADING_INFO_LOCAL = "loading_info"


class WeightsObserver(Protocol):
    """What :class:`WeightsProgress` tells the load about: one call per tensor read."""

    def start(self, total: int) -> None: ...

    def step(self) -> None: ...


class WeightsProgress:
    """Stands in for transformers' "Loading weights" tqdm bar on a loading thread.

    Iterates like the bar would and calls ``observer.step()`` after each tensor, so the
    observer can report progress, raise to cancel, or trim memory between tensors.
    """

    def __init__(self, iterable: Iterable[Any], observer: WeightsObserver) -> None:
        self._iterable = iterable
        self._observer = observer
        try:
            self.total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            self.total = 0

    def __iter__(self) -> Iterator[Any]:
        self._observer.start(self.total)
        for item in self._iterable:
            yield item
            self._observer.step()

    def __len__(self) -> int:
        return self.total

    def __enter__(self) -> WeightsProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        # update(), close(), set_postfix()...: nothing to draw.
        return lambda *args, **kwargs: None


_local = threading.local()
_hook_lock = threading.Lock()
_hook_state: dict[str, Any] = {"installed": False, "previous": None}


def _tqdm_hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    observer = getattr(_local, "observer", None)
    if observer is not None and args and kwargs.get("desc") == WEIGHTS_BAR_DESC:
        return WeightsProgress(args[0], observer)
    previous = _hook_state["previous"]
    if previous is not None:
        return previous(factory, args, kwargs)
    return factory(*args, **kwargs)


def install_tqdm_hook() -> bool:
    """Install the weights-progress hook once; ``False`` where transformers has none (older than 5.x).

    Chains to whatever hook someone else set before us.
    """
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):
        return False
    with _hook_lock:
        current = getattr(hf_logging, HOOK_ATTRIBUTE, None)
        if _hook_state["installed"] and current is _tqdm_hook:
            return True
        _hook_state["previous"] = current if current is not _tqdm_hook else None
        hf_logging.set_tqdm_hook(_tqdm_hook)
        _hook_state["installed"] = True
    return True


@contextmanager
def observing_weights(observer: WeightsObserver) -> Iterator[None]:
    """``with observing_weights(observer): from_pretrained(...)``: this thread's weights loop reports to it."""
    previous = getattr(_local, "observer", None)  # nested (a coverage check inside a load): restored after
    _local.observer = observer
    try:
        yield
    finally:
        _local.observer = previous


def conversion_error(exc: BaseException) -> tuple[str, str] | None:
    """The first underlying ``(type name, message)`` of a transformers 5 conversion failure, or ``None``.

    Reads ``loading_info.conversion_errors`` out of the frames of ``exc``'s traceback
    (see the module docstring); ``None`` when no frame holds one.
    """
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        info = tb.tb_frame.f_locals.get(LOADING_INFO_LOCAL)
        errors = getattr(info, "conversion_errors", None)
        if isinstance(errors, dict) and errors:
            return _last_error_line(str(next(iter(errors.values()))))
        tb = tb.tb_next
    return None


def _last_error_line(text: str) -> tuple[str, str]:
    """``("ValueError", "msg")`` from the last ``ValueError: msg`` line of a formatted traceback."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for i in range(len(lines) - 1, 0, -1):
        head, sep, msg = lines[i].partition(": ")
        if sep and head.isidentifier() and head.endswith(("Error", "Exception")) and head != "Error":
            return head, msg.strip()
    return "RuntimeError", lines[0] if lines else text


@contextmanager
def library_progress_bars_off() -> Iterator[None]:
    """Silence transformers' (and huggingface_hub's) own progress bars for the block.

    In a Jupyter kernel ``tqdm.auto`` draws ipywidgets, which a headless run
    (``nbconvert --execute``) stores as widget views that render blank offline.
    transformers' GGUF reader loops over ``tqdm.auto`` directly rather than its
    switchable ``logging.tqdm``, so for the block it is pointed at the switchable
    one. Restores what it changed.
    """
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # the gguf package is missing: transformers says so when it is needed
        gguf_utils = None
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    saved = getattr(gguf_utils, "tqdm", None)
    if saved is not None:
        gguf_utils.tqdm = hf_logging.tqdm
    try:
        yield
    finally:
        if saved is not None:
            gguf_utils.tqdm = saved
        if was_enabled:
            hf_logging.enable_progress_bar()


def modules_not_to_convert(model: Any, skip_modules: list[str] | None) -> list[str]:
    """The module names bitsandbytes leaves unquantized in ``model`` (its head, fp32-kept modules, ``skip_modules``)."""
    from transformers.quantizers.base import HfQuantizer

    return HfQuantizer.get_modules_to_not_convert(model, skip_modules, model._keep_in_fp32_modules)


def should_convert_module(name: str, skip: list[str]) -> bool:
    """Whether transformers' quantizers replace the module called ``name``, given :func:`modules_not_to_convert`."""
    from transformers.quantizers.quantizers_utils import should_convert_module as should

    return bool(should(name, skip))


def fp32_matchers(model: Any) -> dict[str, re.Pattern[str] | None]:
    """``{"float16": rx, "bfloat16": rx}``: parameter names the model keeps in float32 under that dtype.

    ``None`` where the model keeps nothing in float32 for that dtype.
    """
    import torch
    from transformers.core_model_loading import build_glob_alternation

    plan_of = getattr(model, "_get_dtype_plan", lambda dtype: {})
    matchers: dict[str, re.Pattern[str] | None] = {}
    for name in ("float16", "bfloat16"):
        plan = plan_of(getattr(torch, name))
        matchers[name] = build_glob_alternation(list(plan))[0] if plan else None
    return matchers


@dataclass(frozen=True)
class LoadingReport:
    """What ``from_pretrained(..., output_loading_info=True)`` reports for a checkpoint, without loading it.

    Attributes:
        missing: parameters and persistent buffers no checkpoint tensor fills (left at random initialisation).
        unexpected: checkpoint tensors the model has no place for (never read).
        mismatched: ``(name, checkpoint shape, model shape)`` of tensors whose shape differs from the parameter's.
        unconvertible: parameters whose checkpoint tensors transformers' weight conversion fails on
            (a fused expert tensor from parts of the wrong shapes), with the error.
    """

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    unconvertible: tuple[tuple[str, str], ...] = ()


class _Unobserved:
    def start(self, total: int) -> None:
        return None

    def step(self) -> None:
        return None


def loading_report(model: Any, shapes: Mapping[str, tuple[int, ...]]) -> LoadingReport:
    """What ``from_pretrained`` reports loading a checkpoint of tensors of ``shapes`` into ``model``.

    ``model`` is built on the meta device (``from_config``); the checkpoint is given as meta tensors of
    its shapes, so nothing is read or allocated. The calls are ``from_pretrained``'s own (module
    docstring): the model's conversion mapping, ``convert_and_load_state_dict_in_model`` (which sets the
    meta tensors into ``model``: build a skeleton for this or use it last), ``tie_weights`` with the
    missing keys (a tied parameter present on either side is loaded) and
    ``_adjust_missing_and_unexpected_keys`` (``_keys_to_ignore_on_load_missing``/``_unexpected``, old
    per-layer ``rotary_emb.inv_freq`` and ``position_ids``).
    """
    import torch
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig

    state = {name: torch.empty(tuple(shape), dtype=torch.float32, device="meta") for name, shape in shapes.items()}
    # dtype None: each tensor takes its parameter's dtype, as in a load without a dtype plan.
    config = LoadStateDictConfig(device_map={"": "meta"}, weight_mapping=get_model_conversion_mapping(model))
    install_tqdm_hook()
    with observing_weights(_Unobserved()):  # its "Loading weights" bar, on this thread only, draws nothing
        info, _offload = convert_and_load_state_dict_in_model(model, state, config)
    model.tie_weights(missing_keys=info.missing_keys, recompute_mapping=False)
    model._adjust_missing_and_unexpected_keys(info)
    return LoadingReport(
        missing=tuple(sorted(info.missing_keys)), unexpected=tuple(sorted(info.unexpected_keys)),
        mismatched=tuple(sorted((str(k), tuple(a), tuple(b)) for k, a, b in info.mismatched_keys)),
        unconvertible=tuple(sorted((str(k), str(v).strip().splitlines()[-1][:200] if str(v).strip() else "")
                                   for k, v in (info.conversion_errors or {}).items())))


def render_jinja_template(conversations: list[Any], *, chat_template: str, **kwargs: Any) -> list[str]:
    """transformers' own rendering of ``chat_template`` for each conversation (what
    ``apply_chat_template(..., tokenize=False)`` returns), special tokens and options in ``kwargs``."""
    from transformers.utils.chat_template_utils import render_jinja_template as render

    rendered, _generation_indices = render(conversations=conversations, chat_template=chat_template, **kwargs)
    return list(rendered)


def wrap_serve_app(change: Callable[[Any], Any]) -> None:
    """Make ``transformers serve`` call ``change(app)`` on the FastAPI app it builds, before it serves."""
    from transformers.cli.serving import server

    original = server.build_server

    def build_server(*args: Any, **kwargs: Any) -> Any:
        app = original(*args, **kwargs)
        change(app)
        return app

    server.build_server = build_server


#: The auto classes whose tables the store's verdict needs (workbench/store/support.py).
NEEDED_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModelForSeq2SeqLM",
                       "AutoModelForMaskedLM", "AutoModel")
#: Where the auto classes' tables live, inside the transformers package.
AUTO_MODELING_FILE = ("models", "auto", "modeling_auto.py")


def auto_modeling_file() -> Any:
    """The path of transformers' ``modeling_auto.py``, found without importing transformers;
    ``None`` when transformers is not installed."""
    from pathlib import Path

    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*AUTO_MODELING_FILE)
    return path if path.is_file() else None


def _names(value: Any) -> list[str]:
    # A mapping value is one class name, or (rarely) a tuple of them.
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def auto_mapping_names(source: str | None = None) -> dict[str, dict[str, list[str]]]:
    """``{auto class name: {model_type: [model class names]}}`` for every ``AutoModel*`` class.

    Read from the source of ``modeling_auto.py`` (``source``, or the installed file): the
    literal ``X_MAPPING_NAMES = OrderedDict([...])`` tables, the ``X_MAPPING =
    _LazyAutoMapping(CONFIG_MAPPING_NAMES, X_MAPPING_NAMES)`` lines pairing them, and the
    ``class AutoModelForY(...): _model_mapping = X_MAPPING`` classes using them. If the
    source lacks one of :data:`NEEDED_AUTO_CLASSES`, all come from the imported module (slow:
    it imports torch); other tables built by code (``*list(...)``) are left out.

    Returns:
        ``{}`` when transformers is not installed.
    """
    if source is None:
        path = auto_modeling_file()
        if path is None:
            return {}
        source = path.read_text(encoding="utf-8")
    tables: dict[str, dict[str, list[str]]] = {}
    lazy: dict[str, str] = {}
    classes: dict[str, str] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            if not isinstance(value, ast.Call) or not isinstance(value.func, ast.Name):
                continue
            if name.endswith("_MAPPING_NAMES") and value.func.id == "OrderedDict" and len(value.args) == 1:
                try:
                    tables[name] = {str(k): _names(v) for k, v in ast.literal_eval(value.args[0])}
                except (ValueError, TypeError, SyntaxError):
                    continue  # built by code
            elif value.func.id == "_LazyAutoMapping" and len(value.args) == 2 and isinstance(value.args[1], ast.Name):
                lazy[name] = value.args[1].id
        elif isinstance(node, ast.ClassDef) and node.name.startswith("AutoModel"):
            mapping = _class_mapping(node)
            if mapping is not None:
                classes[node.name] = mapping
    out = {cls: tables[lazy[mapping]] for cls, mapping in classes.items()
           if mapping in lazy and lazy[mapping] in tables}
    if not all(cls in out for cls in NEEDED_AUTO_CLASSES):
        return _imported_auto_mapping_names()
    return out  # tables built by code (MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES) are left out


def _class_mapping(node: ast.ClassDef) -> str | None:
    """The name in an auto class's ``_model_mapping = X_MAPPING`` line."""
    for stmt in node.body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
                and stmt.targets[0].id == "_model_mapping" and isinstance(stmt.value, ast.Name)):
            return stmt.value.id
    return None


def _imported_auto_mapping_names() -> dict[str, dict[str, list[str]]]:
    """:func:`auto_mapping_names` from the imported auto classes themselves (imports torch)."""
    from transformers.models.auto import modeling_auto

    out: dict[str, dict[str, list[str]]] = {}
    for cls_name in dir(modeling_auto):
        cls = getattr(modeling_auto, cls_name)
        mapping = getattr(cls, "_model_mapping", None)
        names = getattr(mapping, "_model_mapping", None)  # _LazyAutoMapping keeps the NAMES table here
        if cls_name.startswith("AutoModel") and isinstance(names, dict):
            out[cls_name] = {str(k): _names(v) for k, v in names.items()}
    return out


#: Where transformers versions before ``ALL_CACHE_NAMES`` (5.x renamed ``past_key_values`` to ``cache``)
#: returned the cache; read after the names the installed version declares.
_OLDER_CACHE_NAMES = ("past_key_values", "cache_params")


def cache_output_names() -> tuple[str, ...]:
    """The output names a forward pass may return its cache under, in ``generate()``'s order of preference.

    ``transformers.generation.utils.ALL_CACHE_NAMES`` (``["cache", "state", "mems",
    "past_buckets_states"]`` in 5.24), then the pre-5.x names.
    """
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        ALL_CACHE_NAMES = []
    return tuple(dict.fromkeys([*ALL_CACHE_NAMES, *_OLDER_CACHE_NAMES]))


def cache_output(out: Any) -> Any:
    """The cache a model's forward pass returned (a ``Cache``, RWKV's list of states...), or ``None``.

    ``out`` is the ``ModelOutput`` of ``model(..., use_cache=True)``; a ``ModelOutput`` holds as keys
    only the fields that are set, so a name is looked up as a key (never through the deprecated
    ``past_key_values`` attribute, which warns).

    Example:
        >>> cache = cache_output(model(input_ids=ids, use_cache=True))  # doctest: +SKIP
    """
    if not isinstance(out, Mapping):
        return None
    for name in cache_output_names():
        if name in out and out[name] is not None:
            return out[name]
    return None
