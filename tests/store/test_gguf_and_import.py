"""GGUF headers, the embedded model, seed and import."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from workbench.errors import BrokenModelError, ModelImportError, StoreError
from workbench.store.gguf_header import read_gguf_header
from workbench.store.importer import (
    DEFAULT_MODEL_NAME,
    check_answer,
    embedded_gguf_path,
    import_gguf,
    import_path,
    seed,
)


def write_tiny_gguf(path: Path, *, tie: bool = True) -> int:
    """A tiny llama-shaped GGUF written with the ``gguf`` package; returns its parameter count."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_file_type(0)
    w.add_license("mit")
    w.add_token_list([f"t{i}".encode() for i in range(100)])
    w.add_chat_template("{{ messages }}")
    shapes = {"token_embd.weight": (100, 64), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (32, 64),
              "blk.0.attn_norm.weight": (64,), "output_norm.weight": (64,)}
    if not tie:
        shapes["output.weight"] = (100, 64)
    for name, shape in shapes.items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sum(int(np.prod(s)) for s in shapes.values())


def test_gguf_entry_from_headers(store_of, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    params = write_tiny_gguf(root / "tiny.gguf")
    entry = store_of(root).get("tiny")
    assert entry.status == "ok"
    assert entry.format == "gguf"
    assert entry.params == params
    assert (entry.model_type, entry.context_length, entry.num_layers, entry.hidden_size) == ("llama", 128, 1, 64)
    assert (entry.num_kv_heads, entry.head_dim, entry.vocab_size) == (2, 16, 100)
    assert entry.quantization == "F32"
    assert entry.license == "mit"
    assert entry.has_chat_template
    assert entry.dtype == "float32"  # a torch dtype name, as for safetensors entries
    assert entry.weights.linear_params == 64 * 64 + 32 * 64  # embeddings and norms are not linear


def test_truncated_gguf_is_broken(store_of, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    write_tiny_gguf(tmp_path / "full.gguf", tie=False)
    data = (tmp_path / "full.gguf").read_bytes()
    (root / "cut.gguf").write_bytes(data[: len(data) - 4000])
    (root / "headless.gguf").write_bytes(data[:200])
    entries = {e.name: e for e in store_of(root).list()}
    assert entries["cut"].status == "broken"
    assert "truncated" in entries["cut"].problem
    assert entries["headless"].status == "broken"
    assert "headless.gguf" in entries["headless"].problem
    with pytest.raises(BrokenModelError, match="cut.gguf"):
        read_gguf_header(root / "cut.gguf")


def test_gguf_header_problems_are_named_once(tmp_path):
    """Each rule broken gives one sentence naming the file, not one wrapped in "malformed header (...)"."""
    write_tiny_gguf(tmp_path / "full.gguf", tie=False)
    data = (tmp_path / "full.gguf").read_bytes()
    (tmp_path / "magic.gguf").write_bytes(b"NOPE" + data[4:])
    (tmp_path / "v9.gguf").write_bytes(data[:4] + (9).to_bytes(4, "little") + data[8:])
    for name, problem in (("magic.gguf", "not a GGUF file (bad magic bytes)"),
                          ("v9.gguf", "GGUF version 9 is not supported (2 and 3 are)")):
        with pytest.raises(BrokenModelError) as err:
            read_gguf_header(tmp_path / name)
        assert err.value.message == f"{name}: {problem}"


def test_embedded_gguf_header_matches_seeded_model(store_of, seeded_model, tmp_path):
    gguf = embedded_gguf_path()
    hdr = read_gguf_header(gguf)
    assert hdr.architecture == "llama"
    assert hdr.file_type_name == "Q4_1"
    # The embedded file, hard-linked into a store root, lists with exact counts and no conversion.
    root = tmp_path / "root"
    root.mkdir()
    os.link(gguf, root / gguf.name)
    entry = store_of(root).get(gguf.stem)
    seeded = store_of(seeded_model.parent).get(DEFAULT_MODEL_NAME)
    assert entry.params == seeded.params == 134_515_008
    assert entry.context_length == seeded.context_length == 8192
    # ggml's quantized type is the quantization; dtype holds torch dtype names only.
    assert entry.quantization == "Q4_1"
    assert entry.dtype is None


@pytest.mark.slow
def test_seeded_model_is_clean_and_answers_paris(store_of, seeded_model):
    entry = store_of(seeded_model.parent).get(DEFAULT_MODEL_NAME)
    assert entry.status == "ok"
    assert entry.dtype == "bfloat16"
    assert entry.format == "safetensors"
    assert entry.has_chat_template
    assert entry.has_tokenizer
    assert entry.license == "apache-2.0"
    import json

    config = json.loads((seeded_model / "config.json").read_text())
    assert "quantization_config" not in config
    assert (seeded_model / "generation_config.json").is_file()
    assert "Paris" in check_answer(seeded_model)


def test_seed_is_idempotent(store_of, seeded_model, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("seed converted again")

    monkeypatch.setattr("workbench.store.importer.import_gguf", boom)
    store = store_of(seeded_model.parent)
    assert seed(store).path == seeded_model


def test_import_folder_copies_and_refuses_bad_input(store_of, tiny_models, tmp_path):
    user = tmp_path / "user"
    store = store_of(user)
    entry = import_path(tiny_models["qwen2"], store, name="my-qwen")
    assert entry.ok
    assert entry.writable
    assert entry.path == user / "my-qwen"
    assert not (user / "my-qwen").is_symlink()
    with pytest.raises(ModelImportError, match="already exists"):
        import_path(tiny_models["qwen2"], store, name="my-qwen")
    # A broken folder is refused before anything is copied.
    bad = tmp_path / "bad"
    shutil.copytree(tiny_models["llama"], bad)
    (bad / "config.json").write_text("{")
    with pytest.raises(BrokenModelError, match="config.json"):
        import_path(bad, store)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(StoreError, match="pickle"):
        import_path(pickled, store)
    assert sorted(p.name for p in user.iterdir()) == ["my-qwen"]  # no half-written .import-* folders


def test_failed_gguf_import_leaves_nothing(store_of, tmp_path):
    user = tmp_path / "user"
    src = tmp_path / "src"
    src.mkdir()
    write_tiny_gguf(src / "model.gguf")
    data = (src / "model.gguf").read_bytes()
    (src / "model.gguf").write_bytes(data[:300])
    with pytest.raises(BrokenModelError, match="model.gguf"):
        import_gguf(src / "model.gguf", store_of(user))
    assert not user.exists() or list(user.iterdir()) == []


def test_an_unsafe_import_is_refused_with_advice_that_fits_it(store_of, tiny_models, tmp_path):
    import json

    store = store_of(tmp_path / "user")
    remote = tmp_path / "remote"
    shutil.copytree(tiny_models["llama"], remote)
    config = json.loads((remote / "config.json").read_text())
    (remote / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "m.X"}}))
    with pytest.raises(StoreError) as info:
        import_path(remote, store)
    # The weights are safetensors already: "convert it to safetensors" would be no help.
    assert "remote code" in str(info.value)
    assert "convert" not in str(info.value)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_models["llama"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(StoreError, match="convert the weights first"):
        import_path(pickled, store)
