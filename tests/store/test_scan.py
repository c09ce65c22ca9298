"""The store's header-only scan: exact counts, metadata, broken and unsafe entries."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest

from tiny_models import ARCHS, expected_params
from workbench.errors import ModelNotFoundError, ReadOnlyStoreError, UnsafeNameError
from workbench.store import ModelStore


def _copy(src: Path, root: Path, name: str | None = None) -> Path:
    dest = root / (name or src.name)
    shutil.copytree(src, dest)
    return dest


@pytest.mark.parametrize("arch", [*ARCHS, "llama-sharded"])
def test_param_count_is_exact(store_of, tiny_models, tiny_root, arch):
    entry = store_of(tiny_root).get(f"tiny-{arch}")
    assert entry.status == "ok", entry.problem
    assert entry.params == expected_params(tiny_models[arch])
    assert entry.format == "safetensors"
    assert entry.dtype == "float32"


def test_sharded_entry_lists_every_shard(store_of, tiny_root):
    entry = store_of(tiny_root).get("tiny-llama-sharded")
    assert len(entry.weight_files) > 1
    assert all(f.endswith(".safetensors") for f in entry.weight_files)


def test_metadata_from_config_and_tokenizer(store_of, tiny_root):
    entry = store_of(tiny_root).get("tiny-llama")
    assert (entry.model_type, entry.architectures) == ("llama", ("LlamaForCausalLM",))
    assert (entry.num_layers, entry.hidden_size, entry.num_attention_heads, entry.num_kv_heads) == (2, 64, 4, 2)
    assert entry.head_dim == 16
    assert entry.context_length == 256
    assert entry.vocab_size == 384
    assert entry.has_tokenizer
    assert entry.has_chat_template
    gpt2 = store_of(tiny_root).get("tiny-gpt2")
    assert (gpt2.model_type, gpt2.num_layers, gpt2.hidden_size, gpt2.context_length) == ("gpt2", 2, 64, 256)


def test_license_from_model_card_and_prequantized_config(store_of, tiny_models, tmp_path):
    root = tmp_path / "root"
    m = _copy(tiny_models["llama"], root, "carded")
    (m / "README.md").write_text("---\nlanguage: en\nlicense: apache-2.0\n---\n# card\n")
    cfg = json.loads((m / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    (m / "config.json").write_text(json.dumps(cfg))
    entry = store_of(root).get("carded")
    assert entry.license == "apache-2.0"
    assert entry.quantization == "nf4"
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (m / "config.json").write_text(json.dumps(cfg))
    assert store_of(root).get("carded").quantization == "gptq-4bit"


def test_tied_head_is_counted_once(store_of, tiny_models, tmp_path):
    """A checkpoint that stores a tied lm_head anyway still counts as transformers loads it."""
    from safetensors.torch import load_file, save_file

    root = tmp_path / "root"
    m = _copy(tiny_models["llama"], root, "tied-both")
    tensors = load_file(m / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    save_file(tensors, m / "model.safetensors")
    entry = store_of(root).get("tied-both")
    assert entry.params == expected_params(tiny_models["llama"])
    assert entry.weights.tied_params == tensors["lm_head.weight"].numel()


# -- broken entries ----------------------------------------------------------------------------


def _broken_store(tiny_models: dict[str, Path], root: Path) -> dict[str, str]:
    """Build one entry per kind of damage; returns name -> file that should be named in the problem."""
    src = tiny_models["llama"]
    cases = {}
    m = _copy(src, root, "bad-header")
    (m / "model.safetensors").write_bytes(struct.pack("<Q", 20) + b"{not json at all!!}" + b"\0" * 10)
    cases["bad-header"] = "model.safetensors"
    m = _copy(src, root, "truncated")
    data = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(data[: len(data) // 2])
    cases["truncated"] = "model.safetensors"
    m = _copy(src, root, "bad-config")
    (m / "config.json").write_text("{ this is not json")
    cases["bad-config"] = "config.json"
    m = _copy(tiny_models["llama-sharded"], root, "missing-shard")
    shard = sorted(m.glob("model-*.safetensors"))[1]
    shard.unlink()
    cases["missing-shard"] = shard.name
    m = _copy(src, root, "no-weights")
    (m / "model.safetensors").unlink()
    cases["no-weights"] = "no weight files"
    m = _copy(src, root, "no-config")
    (m / "config.json").unlink()
    cases["no-config"] = "config.json"
    (root / "empty.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    cases["empty"] = "empty.gguf"
    (root / "notgguf.gguf").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    cases["notgguf"] = "notgguf.gguf"
    return cases


def test_broken_entries_are_listed_with_reasons(store_of, tiny_models, tiny_root, tmp_path):
    root = tmp_path / "root"
    cases = _broken_store(tiny_models, root)
    _copy(tiny_models["qwen2"], root, "healthy")
    entries = {e.name: e for e in store_of(root).list()}
    assert entries["healthy"].status == "ok"
    for name, needle in cases.items():
        assert entries[name].status == "broken", (name, entries[name])
        assert needle in entries[name].problem, (name, entries[name].problem)
    assert "truncated" in entries["truncated"].problem


def test_unreadable_file_is_broken_not_fatal(store_of, tiny_models, tmp_path, monkeypatch):
    """Root ignores file modes, so simulate EACCES at the open the header reader makes."""
    from workbench.store import safetensors_header

    root = tmp_path / "root"
    m = _copy(tiny_models["llama"], root, "locked")
    _copy(tiny_models["gpt2"], root, "fine")
    real_open = safetensors_header.open_regular

    def guarded(path, *a, **kw):
        if Path(path) == m / "model.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **kw)

    monkeypatch.setattr(safetensors_header, "open_regular", guarded)
    entries = {e.name: e for e in store_of(root).list()}
    assert entries["locked"].status == "broken"
    assert "model.safetensors" in entries["locked"].problem
    assert "Permission denied" in entries["locked"].problem
    assert entries["fine"].status == "ok"


# -- unsafe entries ----------------------------------------------------------------------------


class _Exploit:
    """Unpickling this writes a file: proof that something was unpickled."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def test_pickle_only_folder_is_unsafe_and_never_unpickled(store_of, tiny_models, tmp_path):
    root = tmp_path / "root"
    m = _copy(tiny_models["llama"], root, "pickled")
    (m / "model.safetensors").unlink()
    marker = tmp_path / "marker.txt"
    (m / "pytorch_model.bin").write_bytes(pickle.dumps(_Exploit(str(marker))))
    store = store_of(root)
    entry = store.get("pickled")
    assert entry.status == "unsafe"
    assert entry.format == "pickle"
    assert "pytorch_model.bin" in entry.problem
    assert "allow_pickle" in entry.problem
    store.list()
    assert not marker.exists()


def test_remote_code_config_is_unsafe(store_of, tiny_models, tmp_path):
    root = tmp_path / "root"
    m = _copy(tiny_models["llama"], root, "remote")
    cfg = json.loads((m / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (m / "config.json").write_text(json.dumps(cfg))
    (m / "modeling_evil.py").write_text(f"open({str(tmp_path / 'ran.txt')!r}, 'w').write('ran')\n")
    entry = store_of(root).get("remote")
    assert entry.status == "unsafe"
    assert "remote code" in entry.problem
    assert "modeling_evil.EvilForCausalLM" in entry.problem
    assert not (tmp_path / "ran.txt").exists()


# -- names and roots ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", "../etc", "/etc/passwd", "a/b", "..\\x", "", ".hidden"])
def test_names_never_leave_the_root(store_of, tiny_root, name):
    with pytest.raises(UnsafeNameError):
        store_of(tiny_root).get(name)


def test_symlink_out_of_the_root_is_refused(store_of, tiny_models, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tiny_models["llama"], root / "escape")
    with pytest.raises(UnsafeNameError, match="outside its store root"):
        store_of(root).get("escape")
    (listed,) = store_of(root).list()
    assert listed.status == "unsafe"
    assert "outside its store root" in listed.problem


def test_unknown_name_lists_what_exists(store_of, tiny_root):
    with pytest.raises(ModelNotFoundError, match="tiny-llama"):
        store_of(tiny_root).get("nope")


def test_user_store_wins_and_shared_roots_are_read_only(store_of, tiny_models, tiny_root, tmp_path):
    user = tmp_path / "user"
    _copy(tiny_models["gpt2"], user, "tiny-llama")  # same name as a shared model, different weights
    store = store_of(user, tiny_root)
    entry = store.get("tiny-llama")
    assert entry.writable
    assert entry.model_type == "gpt2"
    listed = [e for e in store.list() if e.name == "tiny-llama"]
    assert [(e.writable, e.shadowed) for e in listed] == [(True, False), (False, True)]
    with pytest.raises(ReadOnlyStoreError):
        store.plan_delete("tiny-qwen2")
    plan = store.plan_delete("tiny-llama")
    assert plan.frees_bytes > 0
    assert "tiny-llama" in plan.describe()
    assert (user / "tiny-llama").exists()  # a plan deletes nothing
    store.execute(plan)
    assert store.get("tiny-llama").model_type == "llama"  # the shared one shows through


def test_missing_root_is_an_empty_listing(store_of, tmp_path):
    assert store_of(tmp_path / "does-not-exist").list() == []


# -- the header index cache -------------------------------------------------------------------


def test_index_cache_reuses_and_refreshes(store_of, tiny_models, tmp_path):
    root = tmp_path / "root"
    m = _copy(tiny_models["llama"], root, "cached")
    cache = tmp_path / "cache" / "index.json"
    first = ModelStore([root], cache_path=cache)
    (before,) = first.list()
    assert first.cache.misses == 1
    assert cache.is_file()
    second = ModelStore([root], cache_path=cache)
    second.list()
    assert (second.cache.hits, second.cache.misses) == (1, 0)
    # Replace the weights with another model's: size and mtime change, so the header is re-read.
    shutil.copy(tiny_models["gpt2"] / "model.safetensors", m / "model.safetensors")
    third = ModelStore([root], cache_path=cache)
    (entry,) = third.list()
    assert third.cache.misses == 1
    assert entry.weights != before.weights
    assert entry.params == store_of(tiny_models["gpt2"].parent).get("tiny-gpt2").params


def test_corrupt_cache_file_is_ignored(tiny_root, tmp_path):
    cache = tmp_path / "index.json"
    cache.write_text("{garbage")
    assert any(e.name == "tiny-llama" for e in ModelStore([tiny_root], cache_path=cache).list())
