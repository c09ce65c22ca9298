"""Any transformers config class scaled down to a tiny model, by attribute names alone.

The sweep (tests/store/test_family_sweep.py) needs a tiny model of every causal-LM
family the installed transformers knows, including families nobody here has heard of.
So nothing here names a family: a config's default values are scaled by what its
attributes are called (``*hidden_size``, ``*_head_dim``, ``num_*experts``, per-layer
lists...). A family whose config the generic rules leave inconsistent simply fails to
build, and the sweep reports it as not tried, with transformers' error.
"""

from __future__ import annotations

from collections.abc import Callable
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
_POSITIONS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "max_sequence_length")
_WINDOWS = ("sliding_window", "attention_chunk_size")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# (does this rule name the attribute?, its tiny value from the default), first match wins.
_RULES: tuple[tuple[Callable[[str], bool], Callable[[int], int]], ...] = (
    (lambda n: n in _LAYER_COUNTS, lambda v: min(v, LAYERS)),
    (lambda n: n in _HIDDEN or (n.endswith("hidden_size") and "intermediate" not in n), lambda v: HIDDEN),
    (lambda n: "intermediate_size" in n or n in ("n_inner", "ffn_dim", "ffn_hidden_size", "moe_ffn_hidden_size"),
     lambda v: INTERMEDIATE),
    (lambda n: n.endswith(("head_dim", "head_size")), lambda v: HEAD_DIM),
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


def _scaled(name: str, value: Any, layers: int | None) -> Any:
    """The tiny value of one attribute (``value`` is the default); unchanged when no rule applies."""
    if isinstance(value, list) and layers and len(value) == layers:
        return value[:LAYERS]  # per-layer lists (layer_types, mlp_only_layers as flags...)
    if not _is_int(value) or value <= 0:
        return value
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


def _scale(cls: Any, values: dict[str, Any]) -> Any:
    layers = next((values[k] for k in _LAYER_COUNTS if _is_int(values.get(k))), None)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict) and ("model_type" in value or name.endswith("_config")):
            out[name] = {k: _scaled(k, v, next((value[c] for c in _LAYER_COUNTS if _is_int(value.get(c))), None))
                         for k, v in value.items()}
        elif name.endswith("token_id") and isinstance(value, list):
            out[name] = [v if not _is_int(v) or v < VOCAB else VOCAB - 1 for v in value]
        else:
            out[name] = _scaled(name, value, layers)
    for k in ("transformers_version", "_name_or_path"):
        out.pop(k, None)
    return cls(**out)
