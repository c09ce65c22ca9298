"""The KV cache a model holds for a context, from its ``config.json`` alone.

What transformers 5 keeps (``DynamicCache``, one layer object per decoder layer),
measured against the cache a real forward pass leaves (tests/store/test_kv_cache.py):

* keys and values of ``num_key_value_heads`` heads of ``head_dim`` per token and layer;
* ``multi_query: true`` (Falcon, GPTBigCode/StarCoder) means one KV head, except
  Falcon's ``new_decoder_architecture``, whose attention caches keys and values
  already repeated to every attention head (``modeling_falcon.py``: ``num_kv_heads =
  self.num_heads if self.new_decoder_architecture``);
* a sliding-window layer (``DynamicSlidingWindowLayer``) keeps at most
  ``sliding_window - 1`` tokens; which layers slide is the config's ``layer_types``
  when it has one (transformers 5 writes it for Gemma 2/3, Qwen2, Cohere2...), or
  the rule its config class applies to configs written before it (Mistral/Mixtral:
  every layer once ``sliding_window`` is set; Qwen2/Qwen3 families: layers from
  ``max_window_layers`` on, if ``use_sliding_window``; Gemma 2: every other layer;
  Gemma 3/Cohere 2: all but every ``sliding_window_pattern``-th layer).

Nothing here imports torch: ``workbench store list`` stays fast.
"""

from __future__ import annotations

from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"
CHUNKED = "chunked_attention"
# Layer types whose cache keeps at most `sliding_window - 1` tokens (cache_utils.get_layer_types_and_kwargs).
_SLIDING_TYPES = {SLIDING, "hybrid_sliding", "reference_sliding_attention"}
# Layer types that hold no keys and values (KV sharing, attention-free layers).
_EMPTY_TYPES = {"dummy", "moe", "mlp", "linear_attention", "conv", "mamba"}
# Families whose configs slide layers from `max_window_layers` on, and only when `use_sliding_window`.
_QWEN = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "qwen2_vl", "qwen2_5_vl")


def kv_heads(cfg: dict[str, Any], heads: int | None) -> int | None:
    """Heads the cache holds per layer, by each family's rule (see the module docstring)."""
    if cfg.get("model_type") in ("falcon", "RefinedWeb", "RefinedWebModel") or "new_decoder_architecture" in cfg:
        if cfg.get("new_decoder_architecture"):
            return heads
        if cfg.get("multi_query", True):
            return 1
        return cfg.get("num_kv_heads") or heads
    explicit = cfg.get("num_key_value_heads") or cfg.get("n_head_kv") or cfg.get("multi_query_group_num")
    if explicit:
        return int(explicit)
    if cfg.get("multi_query"):
        return 1
    return cfg.get("num_kv_heads") or heads


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def layer_types(cfg: dict[str, Any], num_layers: int | None) -> tuple[str, ...]:
    """Each decoder layer's attention type as transformers 5 builds its cache; ``()`` when all are full."""
    mtype = str(cfg.get("model_type") or "")
    window = _positive(cfg.get("sliding_window"))
    if mtype.startswith(_QWEN) and not cfg.get("use_sliding_window"):
        window = None  # their configs drop the window unless use_sliding_window (configuration_qwen2.py)
    declared = cfg.get("layer_types")
    if isinstance(declared, list) and declared and all(isinstance(t, str) for t in declared):
        types = [FULL if (t in _SLIDING_TYPES and window is None) else t for t in declared]
    else:
        if not num_layers:
            return ()
        n = int(num_layers)
        pattern = _positive(cfg.get("sliding_window_pattern")) or _positive(cfg.get("_sliding_window_pattern"))
        if window is None:
            types = [CHUNKED if _positive(cfg.get("attention_chunk_size")) else FULL] * n
        elif mtype.startswith(_QWEN):
            start = cfg.get("max_window_layers")
            start = n if start is None else int(start)
            types = [SLIDING if i >= start else FULL for i in range(n)]
        elif mtype == "gemma2":
            types = [SLIDING if (i + 1) % 2 else FULL for i in range(n)]
        elif mtype.startswith(("gemma3", "cohere2")) or pattern:
            pattern = pattern or 6
            types = [SLIDING if (i + 1) % pattern else FULL for i in range(n)]
        else:  # any other config with a window: every layer slides (cache_utils.get_layer_types_and_kwargs)
            types = [SLIDING] * n
    return () if all(t == FULL for t in types) else tuple(types)


def kv_fields(cfg: dict[str, Any], heads: int | None, num_layers: int | None) -> dict[str, Any]:
    """Entry fields for the cache: ``num_kv_heads``, ``layer_types``, ``sliding_window``, ``attention_chunk_size``."""
    types = layer_types(cfg, num_layers)
    return {
        "num_kv_heads": kv_heads(cfg, heads),
        "layer_types": types,
        "sliding_window": _positive(cfg.get("sliding_window")) if any(t in _SLIDING_TYPES for t in types) else None,
        "attention_chunk_size": _positive(cfg.get("attention_chunk_size")) if CHUNKED in types else None,
    }


def cached_tokens(layer_type: str, tokens: int, sliding_window: int | None = None,
                  attention_chunk_size: int | None = None) -> int:
    """Tokens one layer of ``layer_type`` holds after ``tokens`` of context."""
    if layer_type in _EMPTY_TYPES:
        return 0
    if layer_type in _SLIDING_TYPES and sliding_window:
        return min(tokens, sliding_window - 1)
    if layer_type == CHUNKED and attention_chunk_size:
        return min(tokens, attention_chunk_size - 1)
    return tokens


def kv_cache_bytes_for(*, num_layers: int, kv_heads: int, head_dim: int, width: int, tokens: int, batch: int = 1,
                       layer_types: tuple[str, ...] = (), sliding_window: int | None = None,
                       attention_chunk_size: int | None = None) -> int:
    """Keys and values: ``2 x (tokens each layer holds, summed) x KV heads x head dim x bytes x batch``."""
    held = sum(cached_tokens(t, tokens, sliding_window, attention_chunk_size) for t in layer_types[:num_layers])
    held += tokens * max(0, num_layers - len(layer_types))
    return 2 * held * kv_heads * head_dim * width * batch
