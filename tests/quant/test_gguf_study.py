"""GGUF rows in the quantization study: a tiny llama written as an F16 GGUF (gguf's writer),
quantized by llama.cpp itself, measured by llama.cpp beside the transformers baseline."""

from __future__ import annotations

import math
import os

import pytest

from workbench.quant import compare
from workbench.quant.gguf_variants import base_name, quantize, same_model
from workbench.quant.gguf_write import write_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of `make setup`")


@pytest.fixture
def gguf_store_env(monkeypatch, isolated_store, tiny_root, tiny_models):
    """The tiny llama (shared root) and, in the user store, its F16 GGUF as an entry ``tiny-llama-GGUF``."""
    from workbench.config import reset_settings

    folder = isolated_store / "tiny-llama-GGUF"
    folder.mkdir(parents=True)
    write_gguf(tiny_models["llama"], folder / "tiny-llama-F16.gguf")
    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(tiny_root)]))
    reset_settings()
    return folder / "tiny-llama-F16.gguf"


def _llamacpp_size(path) -> int:
    """Bytes of the tensors as llama.cpp reports them for the file (``llama_model_size``)."""
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=64, verbose=False)
    try:
        return int(llama_cpp.llama_model_size(llama.model))
    finally:
        llama.close()


def test_same_model_by_name(gguf_store_env):
    from workbench.runtime import get_registry

    store = get_registry().store
    base, gguf_entry = store.get("tiny-llama"), store.get("tiny-llama-GGUF")
    assert (same_model(gguf_entry, base), same_model(base, base)) == (True, False)
    assert base_name("SmolLM2-135M-Instruct.Q4_K_M") == base_name("SmolLM2-135M-Instruct-GGUF") == "smollm2135minstruct"
    assert base_name("Qwen2-0.5B") != base_name("Qwen2-1.5B-GGUF")


def test_gguf_rows_beside_the_transformers_baseline(gguf_store_env, tmp_path):
    from workbench.runtime import get_registry

    work = tmp_path / "work"
    work.mkdir()
    study = compare("tiny-llama", ["float32", "nf4", "gguf", "llamacpp:Q8_0", "llamacpp:Q4_K_M"], "cpu",
                    max_eval_tokens=128, kl_tokens=32, new_tokens=6, prompts=("Hello world",), window=64,
                    work_dir=work)
    rows = {r.variant.label: r for r in study.rows}
    assert list(rows) == ["float32", "nf4", "gguf:tiny-llama-GGUF", "llamacpp:Q8_0", "llamacpp:Q4_K_M"]
    assert all(r.ok for r in rows.values()), [r.error for r in rows.values()]
    for r in rows.values():
        assert math.isfinite(r.perplexity), r
        assert r.perplexity > 1, r
        assert r.tokens_per_s > 0
        assert r.ttft_s > 0
        assert r.load_s > 0
    f16, q8, q4 = rows["gguf:tiny-llama-GGUF"], rows["llamacpp:Q8_0"], rows["llamacpp:Q4_K_M"]
    assert rows["float32"].kl_divergence == 0.0
    # The F16 GGUF is the same model as the float32 baseline, scored on the same token ids by llama.cpp:
    # its distributions agree to F16 rounding, so the positions line up; quantizing moves them more.
    assert f16.kl_divergence < 1e-3
    assert abs(f16.perplexity / rows["float32"].perplexity - 1) < 0.01
    assert q8.kl_divergence > f16.kl_divergence
    assert q4.kl_divergence > f16.kl_divergence
    # Memory is what llama.cpp reports for the file; llama.cpp's quantizer is deterministic.
    assert f16.footprint_bytes == _llamacpp_size(gguf_store_env)
    again = quantize(gguf_store_env, tmp_path / "q8.gguf", "Q8_0")
    assert q8.footprint_bytes == _llamacpp_size(again)
    assert f16.footprint_bytes > q8.footprint_bytes > q4.footprint_bytes
    assert get_registry().list() == []
    assert os.listdir(work) == []  # unloaded, temporary files removed
    assert "llamacpp:Q4_K_M" in study.format_table()


def test_llamacpp_variants_without_a_gguf_write_one_from_the_safetensors(monkeypatch, isolated_store, tiny_root,
                                                                         tmp_path):
    from workbench.config import reset_settings

    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(tiny_root)]))
    reset_settings()
    study = compare("tiny-llama", ["float32", "llamacpp:F16"], "cpu", max_eval_tokens=64, kl_tokens=16,
                    new_tokens=4, prompts=("Hello",), window=64, work_dir=tmp_path)
    base, f16 = study.rows
    assert f16.ok, f16.error
    assert f16.kl_divergence < 1e-3
    assert f16.token_match_rate == 1.0  # EOS barred alike on both engines
