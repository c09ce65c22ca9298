"""The quantization study on tiny models and the embedded model, on the CPU."""

from __future__ import annotations

import math
import threading

import pytest

from workbench.errors import ConfigError
from workbench.quant import QuantStudy, Variant, VariantResult, compare
from workbench.quant.metrics import default_eval_text


@pytest.fixture
def tiny_store_env(monkeypatch, isolated_store, tiny_root):
    import os

    from workbench.config import reset_settings

    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(tiny_root)]))
    reset_settings()


def test_variant_labels():
    assert Variant.parse("nf4+dq") == Variant("nf4+dq", quant="nf4", double_quant=True)
    assert Variant.parse("float32").dtype == "float32"
    for bad in ("int8+dq", "int4", "nf4+xx"):
        with pytest.raises(ConfigError):
            Variant.parse(bad)


def test_eval_text_is_a_few_thousand_tokens_of_prose():
    text = default_eval_text()
    assert text.startswith("Chapter 1")
    assert "It is a truth universally acknowledged" in text
    assert 2000 < len(text.split()) < 5000


def test_tiny_study_orders_memory_and_agrees_with_itself(tiny_store_env):
    from workbench.runtime import get_registry

    study = compare("tiny-llama", ["float32", "bfloat16", "int8", "nf4", "nf4+dq"], "cpu",
                    max_eval_tokens=128, kl_tokens=32, new_tokens=6, prompts=("Hello world",))
    rows = {r.variant.label: r for r in study.rows}
    assert all(r.ok for r in rows.values()), [r.error for r in rows.values()]
    mem = [rows[k].footprint_bytes for k in ("float32", "bfloat16", "int8", "nf4", "nf4+dq")]
    assert mem[0] > mem[1] > mem[2] > mem[3] >= mem[4]
    for r in rows.values():
        assert abs(r.estimate_error) <= 0.03, (r.variant.label, r.estimate_error)
        assert math.isfinite(r.perplexity)
        assert r.perplexity > 1
        assert r.tokens_per_s > 0
        assert r.ttft_s > 0
    base = rows["float32"]
    assert base.kl_divergence == 0.0
    assert base.token_match_rate == 1.0
    assert rows["nf4"].kl_divergence > 0
    assert get_registry().list() == []  # every variant was unloaded
    table = study.format_table()
    assert "nf4+dq" in table
    assert "ppl" in table


def test_unsupported_variant_is_a_row_error(tiny_store_env, no_fp4_backend):
    """A backend without FP4 (the no_fp4_backend fake): that row is an error, the other rows complete."""
    study = compare("tiny-llama", ["bfloat16", "fp4", "nf4"], "cpu", max_eval_tokens=64, kl_tokens=16,
                    new_tokens=4, prompts=("Hello",))
    rows = {r.variant.label: r for r in study.rows}
    assert rows["fp4"].error
    assert "FP4" in rows["fp4"].error
    assert rows["bfloat16"].ok
    assert rows["nf4"].ok
    from workbench.runtime import get_registry

    assert get_registry().list() == []


def test_a_model_whose_cache_is_unknown_is_studied_only_when_allowed(isolated_store):
    """recurrent_gemma keeps its states on its modules, not in a returned cache: the store cannot measure its
    cache, so each variant is refused (a row error naming the opt-in) until ``allow_unknown_cache=True``."""
    from tiny_models import build_unknown_cache_model
    from workbench.runtime import get_registry

    build_unknown_cache_model(isolated_store / "tiny-recurrent")
    args = dict(max_eval_tokens=32, kl_tokens=8, new_tokens=4, prompts=("Hello",))
    (refused,) = compare("tiny-recurrent", ["bfloat16"], "cpu", **args).rows
    assert not refused.ok
    assert "KV cache unknown" in refused.error and "allow_unknown_cache" in refused.error
    (row,) = compare("tiny-recurrent", ["bfloat16"], "cpu", allow_unknown_cache=True, **args).rows
    assert row.ok, row.error
    assert math.isfinite(row.perplexity) and row.perplexity > 1
    assert get_registry().list() == []


def test_cancel_leaves_nothing_loaded(tiny_store_env):
    from workbench.runtime import get_registry

    cancel = threading.Event()

    def progress(message: str, fraction: float) -> None:
        if message.startswith("int8"):
            cancel.set()

    study = compare("tiny-llama", ["bfloat16", "int8", "nf4"], "cpu", max_eval_tokens=64, kl_tokens=16,
                    new_tokens=4, prompts=("Hello",), progress=progress, cancel=cancel)
    assert study.cancelled
    assert [r.variant.label for r in study.rows] == ["bfloat16"]
    assert get_registry().list() == []


def _row(label, mem, ppl, tps, kl=0.01, quant="none"):
    return VariantResult(Variant(label, quant=quant), footprint_bytes=mem, estimate_bytes=mem, load_s=1.0,
                         ttft_s=0.1, tokens_per_s=tps, perplexity=ppl, kl_divergence=kl, token_match_rate=0.3)


def test_recommendation_states_its_reason():
    study = QuantStudy("m", "cpu", (
        _row("bfloat16", 1000, 10.0, 20.0),
        _row("int8", 600, 10.1, 10.0, quant="int8"),
        _row("nf4", 410, 10.31, 18.0, quant="nf4"),
        _row("fp4", 400, 12.0, 18.0, quant="fp4"),  # too much perplexity lost
        _row("nf4+dq", 405, 10.2, 18.0, kl=0.4, quant="nf4"),  # next-token distributions too far off
    ), eval_tokens=100, eval_source="t")
    rec = study.recommendation()
    assert rec.label == "nf4"
    assert rec.reason == "nf4: 41% of the memory, perplexity +3.1%, 0.9x speed on cpu"
    strict = study.recommendation(max_perplexity_increase=0.001)
    assert strict.label == "bfloat16"
    assert "no quantized variant" in strict.reason
    assert study.recommendation(max_kl=0.5).label == "nf4+dq"


@pytest.mark.slow
def test_embedded_model_study_returns_memory_between_variants(monkeypatch, isolated_store, seeded_root):
    import os

    from workbench.config import reset_settings
    from workbench.runtime import get_registry

    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(seeded_root)]))
    reset_settings()
    study = compare("SmolLM2-135M-Instruct", ["bfloat16", "int8", "nf4"], "cpu", max_eval_tokens=64,
                    kl_tokens=16, new_tokens=4, prompts=("What is the capital of France?",))
    rows = {r.variant.label: r for r in study.rows}
    assert all(r.ok for r in rows.values()), [r.error for r in rows.values()]
    assert rows["bfloat16"].footprint_bytes > rows["int8"].footprint_bytes > rows["nf4"].footprint_bytes
    assert all(abs(r.estimate_error) <= 0.03 for r in rows.values())
    assert rows["bfloat16"].kl_divergence == 0.0
    assert rows["bfloat16"].token_match_rate == 1.0
    # After each unload the process is back near where the first unload left it (glibc trimmed).
    first = rows["bfloat16"].rss_after_unload_bytes
    for r in rows.values():
        assert r.rss_after_unload_bytes - first < 64 * 2**20, (r.variant.label, r.rss_after_unload_bytes - first)
    assert get_registry().list() == []
