"""Any transformers config class scaled down to a tiny model, by attribute names alone.

The sweep (tests/store/test_family_sweep.py) needs a tiny model of every causal-LM
family the installed transformers knows, including families nobody here has heard of.
So nothing here names a family: a config's default values are scaled by what its
attributes are called (``*hidden_size``, ``*_head_dim``, ``num_*experts``, per-layer
lists...). A family whose config the generic rules leave inconsistent simply fails to
build, and the sweep reports it as not tried, with transformers' error.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

LAYERS = 4
HIDDEN = 64
INTERMEDIATE = 128
HEADS = 4
KV_HEADS = 2
HEAD_DIM = 16
VOCAB = 512
WINDOW = 32
POSITIONS = 8192

_LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_HIDDEN = ("hidden_size", "n_embd", "d_model", "embed_dim", "dim", "model_dim", "word_embed_proj_dim")
_HEADS = ("num_attention_heads", "n_head", "num_heads", "n_heads", "encoder_attention_heads")
_KV = ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num", "n_kv_heads")
_POSITIONS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length",
              "max_target_positions", "max_seq_len")
_WINDOWS = ("sliding_window", "attention_chunk_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (does this rule name the attribute?, its tiny value from the default), first match wins.
_RULES: tuple[tuple[Callable[[str], bool], Callable[[int], int]], ...] = (
    (lambda n: n in _LAYER_COUNTS, lambda v: min(v, LAYERS)),
    (lambda n: n in _HIDDEN or (n.endswith(("hidden_size", "lru_width")) and "intermediate" not in n), lambda v: HIDDEN),
    (lambda n: "intermediate_size" in n or n in ("n_inner", "ffn_dim", "ffn_hidden_size", "moe_ffn_hidden_size"),
     lambda v: INTERMEDIATE),
    (lambda n: n.endswith(("head_dim", "head_size", "headdim")), lambda v: HEAD_DIM),
    (lambda n: n in _KV or n.endswith("key_value_heads"), lambda v: 1 if v == 1 else KV_HEADS),
    (lambda n: n in _HEADS or n.endswith(("attention_heads", "_num_heads", "_heads")), lambda v: HEADS),
    (lambda n: n == "vocab_size", lambda v: VOCAB),
    (lambda n: n.endswith("lora_rank"), lambda v: 32),
    (lambda n: n.endswith("state_size") or n in ("d_state", "mamba_d_state"), lambda v: 16),
    (lambda n: n in ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_k"),
     lambda v: min(v, 2)),
    (lambda n: "experts" in n and n.startswith(("num_", "n_", "moe_num")) and "shared" in n, lambda v: min(v, 1)),
    (lambda n: "experts" in n and n.startswith(("num_", "n_", "moe_num")) and "per_tok" not in n,
     lambda v: min(v, 4)),
    (lambda n: n in ("n_group", "topk_group"), lambda v: 1),
    (lambda n: n in _WINDOWS, lambda v: WINDOW),
    (lambda n: n in _POSITIONS, lambda v: POSITIONS),
    (lambda n: n.endswith("token_id"), lambda v: v if v < VOCAB else VOCAB - 1),
)


def _scaled(name: str, value: Any, layers: int | None, tiny_layers: int = LAYERS) -> Any:
    """The tiny value of one attribute (``value`` is the default); unchanged when no rule applies."""
    if isinstance(value, list) and layers and len(value) == layers:
        return value[:tiny_layers]  # per-layer lists (layer_types, mlp_only_layers as flags...)
    if not _is_int(value) or value <= 0:
        return value
    if name in _LAYER_COUNTS:
        return min(value, tiny_layers)
    for names, tiny in _RULES:
        if names(name):
            return tiny(value)
    return value


def tiny_config(model_type: str) -> Any:
    """The config class of ``model_type`` with every size attribute scaled down (nested configs too).

    Raises:
        Exception: whatever transformers raises for the scaled values (the family is then not tried).
    """
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    return _scale(type(default), default.to_dict())


#: The variants :func:`tiny_configs` tries after the plain scaling, in order: keep the config's
#: constraints (``"constrained"``), then the same with more layers (hybrid patterns whose first
#: attention or recurrent layer lies past the first four).
VARIANTS: tuple[tuple[str, int], ...] = (("constrained", LAYERS), ("constrained, 8 layers", 8))


def tiny_configs(model_type: str) -> Iterator[tuple[str, Callable[[], Any]]]:
    """``(label, build)`` for each way to scale ``model_type`` down, the plain one first.

    The plain scaling (:func:`tiny_config`) sets each attribute by its name alone; a family it
    leaves inconsistent gets the constrained variants: values the config derives from others
    (declared ``None`` or ``"auto"``, a number after ``to_dict()``) are left for it to derive again
    from the tiny values; heads and head sizes of one group (``mamba_n_heads``/``mamba_d_head``,
    ``num_heads``/``head_dim``) keep the default's ratio of heads x head size to the hidden size
    (Mamba-2's ``num_heads x head_dim == expand x hidden_size``), with KV heads dividing the heads;
    per-layer settings keyed by layer index keep the layers that remain, and every ``vocab_size*``
    is the tiny vocabulary. Besides:

    * sizes ``__post_init__`` derives (not declared fields: ``qk_head_dim``) are dropped, to be derived
      again; sizes still ``None`` after it (``head_dim``, ``n_routed_experts``) get their rule's value;
    * KV heads equal to the heads in the default stay equal (MLA keeps keys per head);
    * experts per token stay at most the experts kept;
    * per-layer lists (``layer_types``, ``layers_block_type``, ``mlp_layer_types``) keep the first layer
      of each kind, and layer-index lists (``attn_layer_indices``, ``hybrid_layer_ids``) their first
      index, renumbered; a list of linear/recurrent layers only, or no attention index at all, gets one
      attention layer (transformers' hybrid caches refuse a cache without one);
    * ``rotary_dim`` stays within the tiny head, ``emb_dim`` is a hidden size and ``*_ffn_dim`` an
      intermediate one, a count of layers of one kind (``num_kv_shared_layers``) keeps its share of the
      layers, ``is_decoder`` is set (a causal LM), and a ``default_X`` left ``None`` is the first of
      ``Xs`` (``default_language``).

    The sweep tries the next variant when transformers refuses a config or its forward pass fails.
    """
    from transformers import AutoConfig

    def plain() -> Any:
        return tiny_config(model_type)

    yield "plain", plain
    for label, layers in VARIANTS:
        def build(layers: int = layers) -> Any:
            default = AutoConfig.for_model(model_type)
            return _scale(type(default), default.to_dict(), layers=layers, constrained=True)

        yield label, build


def _declared_defaults(cls: Any) -> dict[str, Any]:
    """The defaults a config class declares (its dataclass fields, else its ``__init__`` signature)."""
    try:
        return {f.name: f.default for f in dataclasses.fields(cls)}
    except TypeError:
        return {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}


def _group(name: str) -> str:
    """``"mamba_n_heads"`` and ``"mamba_d_head"`` -> ``"mamba"``: heads and head sizes of one kind share a group."""
    return "_".join(w for w in name.split("_") if w not in _HEAD_WORDS)


_HEAD_WORDS = {"num", "n", "d", "attention", "heads", "head", "dim", "size", "headdim"}


def _is_heads(name: str) -> bool:
    return (name in _HEADS or name.endswith(("attention_heads", "_num_heads", "_heads"))) and "key_value" not in name


def _is_head_dim(name: str) -> bool:
    return name.endswith(("head_dim", "head_size", "_d_head", "headdim"))


def _keep_ratios(default: dict[str, Any], out: dict[str, Any]) -> None:
    """Heads x head size keep their default ratio to the hidden size, per group (see :func:`tiny_configs`)."""
    hidden = next((default[k] for k in _HIDDEN if _is_int(default.get(k))), None)
    if not hidden:
        return
    dims = {_group(k): k for k, v in default.items() if _is_head_dim(k) and _is_int(v)}
    for name, heads in default.items():
        dim = dims.get(_group(name))
        if not (_is_heads(name) and _is_int(heads) and dim and _is_int(out.get(dim))):
            continue
        tiny, rem = divmod(heads * default[dim] * HIDDEN, hidden * out[dim])
        if rem == 0 and 1 <= tiny <= 32:
            out[name] = tiny
    heads = next((out[k] for k in _HEADS if _is_int(out.get(k))), None)
    for kv in (k for k in out if k in _KV or k.endswith("key_value_heads")):
        if heads and _is_int(out[kv]) and heads % out[kv]:
            out[kv] = math.gcd(heads, out[kv])


def _layer_keyed(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        (isinstance(k, int) and not isinstance(k, bool)) or (isinstance(k, str) and k.isdigit()) for k in value)


def _is_size(name: str) -> bool:
    """A size attribute one of :data:`_RULES` scales (token ids and positions are not sizes)."""
    return not name.endswith("token_id") and name not in _POSITIONS and any(names(name) for names, _ in _RULES)


def _fields(cls: Any) -> set[str] | None:
    """The attributes a dataclass config declares (``None``: not a dataclass, its ``__init__`` takes ``**kwargs``)."""
    try:
        return {f.name for f in dataclasses.fields(cls)}
    except TypeError:
        return None


def _scale_values(values: dict[str, Any], *, layers: int, constrained: bool, cls: Any = None) -> dict[str, Any]:
    own_layers = next((values[k] for k in _LAYER_COUNTS if _is_int(values.get(k))), None)
    declared = _declared_defaults(cls) if constrained and cls is not None else {}
    fields = _fields(cls) if constrained and cls is not None else None
    keep = _kept_layers(values, own_layers, layers) if constrained else None
    out: dict[str, Any] = {}
    for name, value in values.items():
        if constrained:
            kept = _constrained(name, value, values, declared=declared, fields=fields, keep=keep,
                                own_layers=own_layers, layers=layers)
            if kept is not _UNHANDLED:
                if kept is not _DERIVED:
                    out[name] = kept
                continue
        if _layer_keyed(value):  # per-layer settings (``per_layer_config``): the layers that remain
            out[name] = {k: (_scale_values(v, layers=layers, constrained=True) if isinstance(v, dict) else v)
                         for k, v in value.items() if int(k) < layers}
        elif isinstance(value, dict) and ("model_type" in value or name.endswith("_config")):
            out[name] = _scale_values(value, layers=layers, constrained=True)
        elif name.endswith("token_id") and isinstance(value, list):
            out[name] = [v if not _is_int(v) or v < VOCAB else VOCAB - 1 for v in value]
        elif name.startswith("vocab_size") and _is_int(value):  # vocab_size_per_layer_input...
            out[name] = VOCAB
        else:
            out[name] = _scaled(name, value, own_layers, layers)
    if constrained:
        _keep_ratios(values, out)
        _keep_equal_heads(values, out)
        _keep_experts_per_token(out)
    return out


_DERIVED, _UNHANDLED = object(), object()


def _constrained(name: str, value: Any, values: dict[str, Any], *, declared: dict[str, Any], fields: set[str] | None,
                 keep: list[int] | None, own_layers: int | None, layers: int) -> Any:
    """The constrained tiny value of one attribute (see :func:`tiny_configs`): ``_DERIVED`` to leave it out
    (the config derives it), ``_UNHANDLED`` when the plain rules decide."""
    if _is_int(value) and name in declared and (declared[name] is None or isinstance(declared[name], str)):
        return _DERIVED  # derived by the config from other values: let it derive it from the tiny ones
    if fields is not None and _is_int(value) and name not in fields and _is_size(name):
        return _DERIVED  # set by __post_init__ from declared ones (``qk_head_dim = nope + rope``): derived again
    if _is_int(value) and value > 0 and (name == "emb_dim" or name.endswith("_ffn_dim")):
        return HIDDEN if name == "emb_dim" else INTERMEDIATE  # XLM's width, encoder-decoders' feed-forwards
    if _is_int(value) and own_layers and name.startswith("num_") and name.endswith("_layers") and layers <= value < own_layers:
        return value * layers // own_layers  # layers of a kind (``num_kv_shared_layers``): the same share of fewer
    if name.endswith("rotary_dim") and _is_int(value):
        return min(value, HEAD_DIM)  # rotated dimensions within the tiny head (GPT-J's 64 of 256)
    if name == "is_decoder" and value is False:
        return True  # a causal LM is a decoder (some refuse to build as an encoder)
    plural = values.get(name[len("default_"):] + "s") if name.startswith("default_") else None
    if value is None and isinstance(plural, (list, tuple)) and plural:
        return plural[0]  # default_language: the first of languages
    if keep is not None and isinstance(value, list) and own_layers and len(value) == own_layers:
        return _with_attention([value[i] for i in keep])  # per-layer lists: the layers kept
    if value is None and own_layers and "att" in name and name.endswith(_INDEX_LISTS):
        return [min(own_layers, layers) // 2]  # no attention layer at all: one (see _with_attention)
    if keep is not None and _is_layer_index_list(name, value, own_layers):
        return [keep.index(i) for i in value if i in keep] or [len(keep) // 2]
    return _UNHANDLED


def _kept_layers(values: dict[str, Any], own_layers: int | None, layers: int) -> list[int] | None:
    """Which of the default's layers a constrained tiny config keeps: the first layer of each kind in every
    per-layer list (``layer_types``, ``mlp_layer_types``...) and the first index of every layer-index list
    (``attn_layer_indices``, ``hybrid_layer_ids``), then the first layers, ``layers`` in all, in order;
    ``None`` when there are no per-layer settings to keep."""
    if not own_layers or own_layers <= layers:
        return None
    wanted: list[int] = []
    for name, value in values.items():
        if isinstance(value, list) and len(value) == own_layers:
            firsts: dict[str, int] = {}
            for i, kind in enumerate(value):
                firsts.setdefault(repr(kind), i)
            wanted += firsts.values()
        elif _is_layer_index_list(name, value, own_layers) and value:
            wanted.append(value[0])
    if not wanted:
        return None
    kept = sorted(set(wanted))[:layers]
    kept += [i for i in range(own_layers) if i not in kept][:layers - len(kept)]
    return sorted(kept)


_INDEX_LISTS = ("layer_indices", "layer_ids", "layers_idx")


def _is_layer_index_list(name: str, value: Any, own_layers: int | None) -> bool:
    """``attn_layer_indices = [4, 12, ...]``: layer indices by name (``*layer_indices``, ``*layer_ids``)."""
    return (bool(own_layers) and isinstance(value, list) and name.endswith(_INDEX_LISTS)
            and all(_is_int(i) and 0 <= i < own_layers for i in value))


#: Per-layer kinds that are not attention: a list of only these gets one attention layer (see :func:`_with_attention`).
_LINEAR_KINDS = ("linear_attention", "mamba", "linear", "recurrent")


def _with_attention(kinds: list[Any]) -> list[Any]:
    """A per-layer list of linear/recurrent kinds only gets a ``"full_attention"`` layer (at the middle): caches
    that hold no attention layer are refused by transformers (``get_seq_length``); other lists are kept."""
    if len(kinds) > 1 and all(isinstance(k, str) and k in _LINEAR_KINDS for k in kinds) and len(set(kinds)) == 1:
        return [*kinds[:len(kinds) // 2], "full_attention", *kinds[len(kinds) // 2 + 1:]]
    return kinds


def _keep_equal_heads(default: dict[str, Any], out: dict[str, Any]) -> None:
    """KV heads stay equal to the heads where the default has them equal (MLA's keys are per head)."""
    heads = next((k for k in _HEADS if _is_int(default.get(k))), None)
    if heads is None or not _is_int(out.get(heads)):
        return
    for kv in (k for k in default if k in _KV or k.endswith("key_value_heads")):
        if default[kv] == default[heads] and kv in out:
            out[kv] = out[heads]


_PER_TOKEN = ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_k")


def _keep_experts_per_token(out: dict[str, Any]) -> None:
    """Experts chosen per token stay at most the experts there are (a tiny config keeps few)."""
    experts = [v for k, v in out.items() if _is_int(v) and "experts" in k and k.startswith(("num_", "n_", "moe_num"))
               and "per_tok" not in k and "shared" not in k]
    for k in _PER_TOKEN:
        if experts and _is_int(out.get(k)):
            out[k] = min(out[k], min(experts))


def _scale(cls: Any, values: dict[str, Any], *, layers: int = LAYERS, constrained: bool = False) -> Any:
    if constrained:
        out = _scale_values(values, layers=layers, constrained=True, cls=cls)
    else:
        own_layers = next((values[k] for k in _LAYER_COUNTS if _is_int(values.get(k))), None)
        out = {}
        for name, value in values.items():
            if isinstance(value, dict) and ("model_type" in value or name.endswith("_config")):
                out[name] = {k: _scaled(k, v, next((value[c] for c in _LAYER_COUNTS if _is_int(value.get(c))), None))
                             for k, v in value.items()}
            elif name.endswith("token_id") and isinstance(value, list):
                out[name] = [v if not _is_int(v) or v < VOCAB else VOCAB - 1 for v in value]
            else:
                out[name] = _scaled(name, value, own_layers)
    for k in ("transformers_version", "_name_or_path"):
        out.pop(k, None)
    config = cls(**out)
    if not constrained:
        return config
    # A size the config leaves unset even after deriving (``head_dim=None`` read as ``head_dim ** -0.5``,
    # ``n_routed_experts=None``): the tiny value of its rule.
    unset = {n: _unset_size(n) for n in out if getattr(config, n, 0) is None and _unset_size(n) is not None}
    return cls(**{**out, **unset}) if unset else config


def _unset_size(name: str) -> int | None:
    """The tiny value of a size attribute the default leaves ``None`` (windows, positions, layer counts stay)."""
    if name in _LAYER_COUNTS or name in _WINDOWS or not _is_size(name):
        return None
    return next(tiny(1 << 20) for names, tiny in _RULES if names(name))
