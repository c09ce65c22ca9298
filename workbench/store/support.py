"""Whether the runtime runs a model, asked of the same transformers tables the loader uses.

``AutoModelForCausalLM.from_pretrained`` and ``AutoModelForImageTextToText.from_pretrained``
pick the model class from the config's ``model_type`` through transformers' auto
mappings (``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES``, ``MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES``
in ``transformers/models/auto/modeling_auto.py``). The listing's ``ok`` asks those same
tables, so it can only say ok for what a load can build, with no table of families here:

* the model type must be one an auto class the workbench runs builds, and
* the checkpoint must be that model: when ``config.json`` names ``architectures``, one of
  them is the class the auto class builds (a BERT checkpoint is ``BertForMaskedLM``;
  ``AutoModelForCausalLM`` would build ``BertLMHeadModel`` for its ``model_type``).

Vision-language classes (in the image-text-to-text table) win over the causal-LM table
when a class is in both (Gemma 3, Fuyu): they take images. Everything else is
``unsupported``, with the auto class that does load it (``AutoModelForSeq2SeqLM``),
also from transformers' tables.

Reading the tables costs tens of milliseconds (their source is parsed, see
:func:`workbench._transformers_compat.auto_mapping_names`; importing them would import
torch); with an :class:`~workbench.store.index_cache.IndexCache` they are kept keyed by
that file's size and mtime, so a listing re-reads them only after a transformers upgrade.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .._records import Record

if TYPE_CHECKING:
    from .index_cache import IndexCache

CAUSAL_LM = "AutoModelForCausalLM"
IMAGE_TEXT_TO_TEXT = "AutoModelForImageTextToText"
#: The auto classes the runtime loads with, in the order a model's class is looked up.
RUNTIME_AUTO_CLASSES = (IMAGE_TEXT_TO_TEXT, CAUSAL_LM)
#: Auto classes whose models have an encoder and a decoder (for the reason's wording only).
_ENCODER_DECODER = ("AutoModelForSeq2SeqLM", "AutoModelForSpeechSeq2Seq")
_ENCODER_ONLY = ("AutoModelForMaskedLM",)
_WHAT_RUNS = "the workbench runs decoder-only and vision-language models"

SupportStatus = Literal["ok", "unsupported"]
Tables = Mapping[str, Mapping[str, list[str]]]


@dataclass(frozen=True)
class ModelSupport(Record):
    """The loader's answer for one config.

    Attributes:
        status: ``ok`` (the runtime loads it with ``auto_class``) or ``unsupported``.
        auto_class: ``"AutoModelForCausalLM"`` or ``"AutoModelForImageTextToText"``; ``None`` when unsupported.
        model_class: the class that auto class builds (``"LlavaForConditionalGeneration"``), or the one
            that would load an unsupported checkpoint, when transformers has one.
        reason: why it is unsupported, a sentence naming the model; ``None`` when ok.
    """

    status: SupportStatus
    auto_class: str | None = None
    model_class: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def takes_images(self) -> bool:
        return self.auto_class == IMAGE_TEXT_TO_TEXT


_lock = threading.Lock()
_memo: dict[str, Any] = {}


def auto_tables(cache: IndexCache | None = None) -> dict[str, dict[str, list[str]]]:
    """transformers' auto tables (``{auto class: {model_type: [classes]}}``), read once per process.

    Args:
        cache: keeps them across processes, keyed by ``modeling_auto.py``'s size and mtime.

    Returns:
        ``{}`` when transformers is not installed.
    """
    from .._transformers_compat import auto_mapping_names, auto_modeling_file

    path = auto_modeling_file()
    if path is None:
        return {}
    key = str(path)
    with _lock:
        if key in _memo:
            return _memo[key]
    if cache is not None:
        tables = cache.get(path, lambda: {"tables": auto_mapping_names()})["tables"]
    else:
        tables = auto_mapping_names()
    with _lock:
        _memo[key] = tables
    return tables


def _runtime_class(tables: Tables, model_type: str, archs: tuple[str, ...],
                   config: Mapping[str, Any]) -> tuple[str, str] | None:
    for auto_class in RUNTIME_AUTO_CLASSES:
        built = tables.get(auto_class, {}).get(model_type)
        if not built:
            continue
        if archs:
            if any(a in built for a in archs):
                return auto_class, next(a for a in archs if a in built)
        elif not config.get("is_encoder_decoder") and (
                config.get("is_decoder") or not any(model_type in tables.get(c, {}) for c in _ENCODER_ONLY)):
            # Without architectures, an encoder family (BERT, in the masked-LM table) counts as its
            # encoder unless the config says it is a decoder.
            return auto_class, built[0]
    return None


def _loading_class(tables: Tables, model_type: str, archs: tuple[str, ...]) -> tuple[str, str] | None:
    """The auto class (and model class) transformers loads this checkpoint with, if any."""
    order = [*_ENCODER_DECODER, *_ENCODER_ONLY, *sorted(tables)]
    for auto_class in order:
        for arch in archs:
            if arch in tables.get(auto_class, {}).get(model_type, ()):
                return auto_class, arch
    if not archs:
        for auto_class in order:
            built = tables.get(auto_class, {}).get(model_type)
            if built and auto_class not in RUNTIME_AUTO_CLASSES:
                return auto_class, built[0]
    return None


def model_support(config: Mapping[str, Any], tables: Tables | None = None, *,
                  cache: IndexCache | None = None) -> ModelSupport:
    """Whether the runtime loads the model ``config`` (a parsed ``config.json``) describes, and how.

    Args:
        config: the model's ``config.json`` as a dict (as :mod:`workbench.store.scan` reads it).
        tables: transformers' auto tables (:func:`auto_tables`); read from the installed transformers
            when ``None``.
        cache: where :func:`auto_tables` keeps them between processes.

    Returns:
        A :class:`ModelSupport`; never raises for a config of any shape.

    Example:
        >>> model_support({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"],
        ...                "is_encoder_decoder": True}).reason  # doctest: +ELLIPSIS
        'T5ForConditionalGeneration is an encoder-decoder model (AutoModelForSeq2SeqLM); ...'
    """
    tables = auto_tables(cache) if tables is None else tables
    model_type = config.get("model_type")
    raw_archs = config.get("architectures")
    archs = tuple(a for a in raw_archs if isinstance(a, str)) if isinstance(raw_archs, (list, tuple)) else ()
    if not tables:
        return ModelSupport("unsupported", reason="transformers is not installed, and the workbench loads "
                                                  "models with it (pip install transformers)")
    if not isinstance(model_type, str) or not model_type:
        return ModelSupport("unsupported", reason="config.json names no model_type, so transformers cannot "
                                                  "tell which model to build")
    found = _runtime_class(tables, model_type, archs, config)
    if found is not None:
        return ModelSupport("ok", auto_class=found[0], model_class=found[1])
    label = archs[0] if archs else f"model_type {model_type!r}"
    if not any(model_type in t for t in tables.values()):
        return ModelSupport("unsupported", reason=f"the installed transformers ({_version()}) has no model for "
                                                  f"model_type {model_type!r}; a newer transformers may "
                                                  "(pip install -U transformers)")
    loading = _loading_class(tables, model_type, archs)
    if loading is None:
        runnable = sorted({c for a in RUNTIME_AUTO_CLASSES for c in tables.get(a, {}).get(model_type, ())})
        builds = f" (for model_type {model_type!r} they build {', '.join(runnable)})" if runnable else ""
        return ModelSupport("unsupported", reason=f"{label} is not a model {CAUSAL_LM} or {IMAGE_TEXT_TO_TEXT} "
                                                  f"loads{builds}; {_WHAT_RUNS}")
    auto_class, model_class = loading
    if auto_class in _ENCODER_DECODER or config.get("is_encoder_decoder"):
        what = f"is an encoder-decoder model ({auto_class})"
    elif auto_class in _ENCODER_ONLY:
        what = f"is an encoder-only model without a generation head ({auto_class})"
    else:
        what = f"loads with {auto_class}, which does not generate text"
    return ModelSupport("unsupported", model_class=model_class, reason=f"{label} {what}; {_WHAT_RUNS}")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "unknown"


#: Where transformers' configs and processors say how many tokens one image becomes.
IMAGE_TOKEN_KEYS = ("image_seq_length", "mm_tokens_per_image", "num_image_tokens")


def image_tokens(config: Mapping[str, Any], processor_docs: Sequence[Any] = ()) -> int | None:
    """Tokens one image costs in the prompt, where the model's config or processor files say it
    (``image_seq_length``: Llava, PaliGemma; ``mm_tokens_per_image``: Gemma 3; ``num_image_tokens``).

    Args:
        config: ``config.json``.
        processor_docs: the parsed ``processor_config.json`` / ``preprocessor_config.json``.

    Returns:
        ``None`` where the count depends on the image's size (Qwen2-VL's dynamic resolution) or nothing says.
    """
    for doc in (*processor_docs, config):
        if not isinstance(doc, Mapping):
            continue
        for key in IMAGE_TOKEN_KEYS:
            value = doc.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None
