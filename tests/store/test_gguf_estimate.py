"""A GGUF entry stays GGUF, and its estimate is what llama.cpp itself reports when it loads.

The truth is llama.cpp's own load log (``llama_log_set``): ``CPU_Mapped model buffer size``,
``CPU KV buffer size``, ``CPU output buffer size`` and ``CPU compute buffer size``, and
``llama_model_size``; the estimate comes from the GGUF header alone.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
from pathlib import Path

import pytest

from workbench.store import ModelStore
from workbench.store.gguf_estimate import estimate_llamacpp, llamacpp_parts, runs_on_llamacpp
from workbench.store.gguf_header import read_gguf_header
from workbench.store.importer import (
    DEFAULT_GGUF_NAME,
    DEFAULT_MODEL_NAME,
    embedded_gguf_path,
    import_path,
    seed,
)

MiB = 2**20
_SIZE = re.compile(r"(CPU_Mapped model|CPU KV|CPU +output|CPU compute) buffer size = +([0-9.]+) MiB")


def llamacpp_reported(path: Path, n_ctx: int, **kwargs) -> tuple[dict[str, float], int]:
    """llama.cpp's own sizes (MiB, as its log prints them with two decimals) and ``llama_model_size``."""
    import llama_cpp

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def on_log(level, text, user):  # noqa: ARG001
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=1, verbose=True, **kwargs)
        size = int(llama_cpp.llama_model_size(llm.model))
        llm.close()
    finally:
        llama_cpp.llama_log_set(ctypes.cast(None, llama_cpp.llama_log_callback), ctypes.c_void_p(0))
    found = {m.group(1).split()[-1]: float(m.group(2)) for m in _SIZE.finditer("".join(lines))}
    return found, size


@pytest.mark.parametrize(("n_ctx", "type_k", "kwargs"), [(1024, "f16", {}), (2048, "q8_0", {"type_k": 8})])
def test_estimate_matches_what_llamacpp_reports(n_ctx, type_k, kwargs):
    path = embedded_gguf_path()
    reported, model_size = llamacpp_reported(path, n_ctx, **kwargs)
    est = estimate_llamacpp(read_gguf_header(path), n_ctx, type_k=type_k)
    assert est.weights_bytes == model_size
    assert abs(est.weights_bytes / MiB - reported["model"]) < 0.01
    assert abs(est.kv_cache_bytes / MiB - reported["KV"]) < 0.01
    assert abs(est.output_bytes / MiB - reported["output"]) < 0.01
    # The compute buffer is ggml's allocation for the graph: held within 5% (the logits dominate).
    assert abs(est.compute_bytes / MiB - reported["compute"]) <= 0.05 * reported["compute"]


def test_a_gguf_import_keeps_the_file_and_the_fit_counts_llamacpp(tmp_path):
    user = tmp_path / "user"
    store = ModelStore([user], cache_path=None)
    entry = import_path(embedded_gguf_path(), store, name="smol-q4")
    assert entry.format == "gguf"
    assert entry.quantization == "Q4_1"
    assert entry.ok
    kept = entry.folder / entry.gguf_file
    assert kept.stat().st_size == embedded_gguf_path().stat().st_size  # as it is: no conversion
    assert runs_on_llamacpp(entry)
    assert not runs_on_llamacpp(entry, "bfloat16")
    assert not runs_on_llamacpp(entry, quant="nf4")
    from workbench.runtime.fit import check_fit
    from workbench.runtime.spec import LoadSpec

    chk = check_fit(entry, LoadSpec(entry), context_tokens=1024, free=lambda d: 64 * 2**30)
    parts = llamacpp_parts(entry, 1024)
    assert chk.estimate.label == "Q4_1"
    assert chk.estimate.weights_bytes == estimate_llamacpp(entry, 1024).weights_bytes
    assert chk.parts["kv_cache"] == parts["kv_cache"] == 23_592_960  # 22.50 MiB, as llama.cpp says
    assert chk.parts["compute_buffer"] == parts["compute_buffer"]
    assert "torch_import" not in chk.parts  # llama.cpp needs no torch
    # A broken file is refused before anything is written.
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(embedded_gguf_path().read_bytes()[:4096])
    with pytest.raises(Exception, match="bad.gguf"):
        import_path(bad, store)
    assert sorted(p.name for p in user.iterdir()) == ["smol-q4"]


def test_seed_adds_the_embedded_gguf_beside_the_bfloat16_folder_once(seeded_model, tmp_path, monkeypatch):
    root = tmp_path / "user"
    root.mkdir()

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(seeded_model, root / DEFAULT_MODEL_NAME, copy_function=link)
    store = ModelStore([root], cache_path=None)
    assert seed(store).name == DEFAULT_MODEL_NAME
    gguf = store.get(DEFAULT_GGUF_NAME)
    assert gguf.format == "gguf"
    assert gguf.quantization == "Q4_1"
    assert gguf.writable
    assert sorted(p.name for p in root.iterdir()) == [DEFAULT_MODEL_NAME, DEFAULT_GGUF_NAME]

    def boom(*a, **k):
        raise AssertionError("seed imported again")

    monkeypatch.setattr("workbench.store.importer.keep_gguf", boom)
    monkeypatch.setattr("workbench.store.importer.import_gguf", boom)
    seed(store)
    assert sorted(p.name for p in root.iterdir()) == [DEFAULT_MODEL_NAME, DEFAULT_GGUF_NAME]
