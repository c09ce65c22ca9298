"""Mixture-of-experts models: experts from the config, expert weights from the headers.

Checkpoints store routed experts either one matrix per expert
(``model.layers.0.block_sparse_moe.experts.3.w1.weight``, Mixtral's and Qwen-MoE's
published layout, which transformers 5 still writes) or fused 3-D tensors
(``...mlp.experts.gate_up_proj``, shape ``[experts, 2 x intermediate, hidden]``).
Either way they sit under an ``experts`` module; shared experts
(``shared_expert``, ``shared_experts``) run for every token and count as dense.

transformers 5 loads the routed experts of every family it fuses (Mixtral,
Qwen2/3-MoE, DeepSeek, OLMoE...) as fused 3-D ``nn.Parameter`` tensors and the
router as a plain parameter of a router module; neither is an ``nn.Linear``, so
bitsandbytes leaves both in the compute dtype. The estimate reads this from the
model transformers builds (``workbench/store/layout.py``); the rule here is the
fallback from headers alone when that model cannot be built.

Nothing here imports torch.
"""

from __future__ import annotations

import re
from typing import Any

# `.experts.` as a module in the path (not `shared_experts.`), and fused tensors under it.
# GGUF (llama.cpp) names them `blk.N.ffn_gate_exps.weight`, the router `blk.N.ffn_gate_inp.weight`.
_ROUTED = re.compile(r"(^|\.)experts\.|_exps\.weight$")
# Routers: a MoE block's `gate` (Mixtral, Qwen-MoE, DeepSeek) or `router` holding one weight.
_ROUTER = re.compile(r"(^|\.)(block_sparse_moe|mlp|moe|feed_forward)\.(gate|router)\.weight$|ffn_gate_inp\.weight$")


def is_routed_expert(name: str) -> bool:
    """Whether tensor ``name`` belongs to a routed expert (per-expert or fused)."""
    return bool(_ROUTED.search(name))


def is_router(name: str) -> bool:
    """Whether tensor ``name`` is a MoE router's weight."""
    return bool(_ROUTER.search(name))


def _int(cfg: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def moe_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """``num_experts``, ``experts_per_token`` and ``shared_experts`` from a (text) config.

    Names by family: Mixtral ``num_local_experts``; Qwen-MoE, OLMoE ``num_experts``;
    DeepSeek ``n_routed_experts`` and ``n_shared_experts``; DBRX keeps them under
    ``ffn_config`` (``moe_num_experts``, ``moe_top_k``). Qwen2-MoE has one shared
    expert when ``shared_expert_intermediate_size`` is set.
    """
    ffn = cfg.get("ffn_config") if isinstance(cfg.get("ffn_config"), dict) else {}
    experts = _int(cfg, "num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts") \
        or _int(ffn, "moe_num_experts")
    if not experts or experts < 2:
        return {"num_experts": None, "experts_per_token": None, "shared_experts": 0}
    per_token = _int(cfg, "num_experts_per_tok", "num_experts_per_token", "moe_top_k", "top_k", "num_selected_experts") \
        or _int(ffn, "moe_top_k")
    shared = _int(cfg, "n_shared_experts", "num_shared_experts") or (1 if _int(cfg, "shared_expert_intermediate_size") else 0)
    return {"num_experts": experts, "experts_per_token": per_token, "shared_experts": shared}


def active_params(params: int | None, expert_params: int, num_experts: int | None,
                  experts_per_token: int | None) -> int | None:
    """Parameters one token goes through: all but the routed experts, plus ``experts_per_token`` of them.

    Returns ``params`` for a dense model, ``None`` when the count is unknown.
    """
    if params is None:
        return None
    if not (num_experts and experts_per_token and expert_params):
        return params
    return params - expert_params + expert_params * min(experts_per_token, num_experts) // num_experts
