"""Mixtures of experts: parameter counts and memory estimates against real loads.

transformers 5 fuses the experts of these families into 3-D parameters that
bitsandbytes leaves in 16-bit; the right values come from the model transformers
instantiates (``numel``) and from ``get_memory_footprint()`` after a real CPU load
with bitsandbytes, never from the estimate's own rules.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tiny_models import build_from_config
from workbench.store import ModelStore, estimate

_C = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
          max_position_embeddings=256, tie_word_embeddings=False)
MOE: dict[str, tuple[str, dict]] = {
    "tiny-mixtral": ("MixtralConfig", dict(_C, num_local_experts=8, num_experts_per_tok=2)),
    "tiny-qwen2-moe": ("Qwen2MoeConfig", dict(_C, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                                              shared_expert_intermediate_size=128)),
    "tiny-qwen3-moe": ("Qwen3MoeConfig", dict(_C, num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64)),
}
PRECISIONS = (("bfloat16", "none"), ("bfloat16", "int8"), ("bfloat16", "nf4"))


@pytest.fixture(scope="module")
def moe_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("moe-models")
    for name, (cls, kwargs) in MOE.items():
        build_from_config(cls, kwargs, root / name, dtype="bfloat16")
    return root


def _load(folder: Path, quant: str):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    qc = None
    if quant == "int8":
        qc = BitsAndBytesConfig(load_in_8bit=True)
    elif quant == "nf4":
        qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map="cpu", quantization_config=qc)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MOE))
def test_total_and_active_params_match_the_instantiated_model(moe_root, name):
    model = _load(moe_root / name, "none")
    total = sum(p.numel() for p in model.parameters())
    # Routed experts are the parameters of the modules transformers names `experts`.
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in f".{n}")
    k, e = model.config.num_experts_per_tok, (getattr(model.config, "num_local_experts", None)
                                              or model.config.num_experts)
    entry = ModelStore([moe_root], cache_path=None).get(name)
    assert entry.ok
    assert entry.params == total
    assert (entry.num_experts, entry.experts_per_token) == (e, k)
    assert entry.active_params == total - experts + experts * k // e < total
    assert entry.shared_experts == (1 if name == "tiny-qwen2-moe" else 0)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MOE))
def test_estimate_matches_footprint_after_real_load(moe_root, name):
    entry = ModelStore([moe_root], cache_path=None).get(name)
    for dtype, quant in PRECISIONS:
        footprint = _load(moe_root / name, quant).get_memory_footprint()
        est = estimate(entry, dtype, quant).weights_bytes
        assert abs(est - footprint) <= 0.03 * footprint, (name, quant, est, footprint)


@pytest.mark.slow
def test_header_fallback_keeps_experts_and_router_unquantized(moe_root, monkeypatch):
    """Without the model skeleton (no torch, say), the header rule still lands within 3%."""
    import workbench.store.layout as layout

    footprints = {q: _load(moe_root / "tiny-mixtral", q).get_memory_footprint() for _, q in PRECISIONS}
    monkeypatch.setattr(layout, "model_layout", lambda *a, **k: None)
    entry = ModelStore([moe_root], cache_path=None).get("tiny-mixtral")
    for dtype, quant in PRECISIONS:
        est = estimate(entry, dtype, quant).weights_bytes
        assert abs(est - footprints[quant]) <= 0.03 * footprints[quant], (quant, est, footprints[quant])


def test_dense_entries_report_active_equal_total(tiny_root):
    entry = ModelStore([tiny_root], cache_path=None).get("tiny-llama")
    assert entry.num_experts is None
    assert entry.active_params == entry.params


def test_inspect_prints_expert_lines_for_a_mixture_of_experts(moe_root, capsys, monkeypatch):
    import argparse

    from workbench.cli.store import cmd_store_inspect

    monkeypatch.setenv("WORKBENCH_STORE", str(moe_root))
    assert cmd_store_inspect(argparse.Namespace(name="tiny-qwen2-moe", json=False)) == 0
    out = capsys.readouterr().out
    assert ("Shared experts:" in out, "Active params:" in out) == (True, True)
