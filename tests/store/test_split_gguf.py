"""A GGUF split by gguf-split (``name-0000N-of-0000M.gguf``) is one entry over all its parts.

Truth comes from the ``gguf`` package: the files are written by ``GGUFWriter`` with
``split_max_tensors`` (its own part naming) and counted back with ``GGUFReader``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workbench.cli import main
from workbench.errors import BrokenModelError, ModelImportError
from workbench.runtime import LoadSpec
from workbench.runtime.registry import Registry
from workbench.store import ModelStore
from workbench.store.importer import import_path

SHAPES = {"token_embd.weight": (100, 64), "blk.0.attn_q.weight": (64, 64), "blk.0.attn_k.weight": (32, 64),
          "blk.0.attn_v.weight": (32, 64), "blk.0.attn_norm.weight": (64,), "output_norm.weight": (64,),
          "output.weight": (100, 64)}


# A llama.cpp MoE block's routed experts (fused, ``*_exps``) and router (``ffn_gate_inp``).
MOE_SHAPES = {**SHAPES, "blk.0.ffn_gate_inp.weight": (4, 64), "blk.0.ffn_gate_exps.weight": (4, 96, 64),
              "blk.0.ffn_up_exps.weight": (4, 96, 64), "blk.0.ffn_down_exps.weight": (4, 64, 96)}


def write_split(folder: Path, base: str, per_part: int = 3, shapes: dict[str, tuple[int, ...]] = SHAPES) -> list[Path]:
    """A tiny llama GGUF split into parts of ``per_part`` tensors (0: one file); returns the paths gguf wrote."""
    import gguf

    folder.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(folder / f"{base}.gguf"), "llama", split_max_tensors=per_part)
    w.add_context_length(128)
    w.add_block_count(1)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_file_type(0)
    w.add_token_list([f"t{i}".encode() for i in range(100)])
    for name, shape in shapes.items():
        w.add_tensor(name, np.ones(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return sorted(folder.glob(f"{base}-*-of-*.gguf")) or [folder / f"{base}.gguf"]


def reader_params(parts: list[Path]) -> int:
    import gguf

    return sum(int(t.n_elements) for p in parts for t in gguf.GGUFReader(str(p)).tensors)


def test_split_gguf_is_one_entry_with_summed_params_and_size(tmp_path):
    root = tmp_path / "root"
    parts = write_split(root, "tiny split")
    assert [p.name for p in parts] == [f"tiny split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    entries = ModelStore([root], cache_path=None).list()
    assert [e.name for e in entries] == ["tiny split"]  # loose parts are not entries
    e = entries[0]
    assert e.format == "gguf"
    assert e.params == reader_params(parts) == sum(int(np.prod(s)) for s in SHAPES.values())
    assert e.size_bytes == sum(p.stat().st_size for p in parts)
    assert e.weight_files == tuple(p.name for p in parts)
    assert e.model_type == "llama"
    assert e.has_tokenizer
    # transformers loads single-file GGUF only, so the entry is not "ok": the problem says what to do.
    assert e.status == "broken"
    assert "llama-gguf-split --merge" in e.problem
    assert parts[0].name in e.problem


def test_split_gguf_weights_count_as_the_same_file_unsplit(tmp_path):
    # The split path adds its parts with the same rule as any entry's files: routed experts included.
    import gguf

    parts = write_split(tmp_path / "split", "moe", shapes=MOE_SHAPES)
    [whole] = write_split(tmp_path / "whole", "moe", per_part=0, shapes=MOE_SHAPES)
    split = ModelStore([tmp_path / "split"], cache_path=None).get("moe")
    single = ModelStore([tmp_path / "whole"], cache_path=None).get("moe")
    experts = sum(int(t.n_elements) for p in parts for t in gguf.GGUFReader(str(p)).tensors if t.name.endswith("_exps.weight"))
    assert (len(parts), split.weights.expert_params) == (4, experts)
    assert split.weights == single.weights
    assert (split.params, split.active_params) == (single.params, single.active_params)


def test_split_gguf_in_a_folder(tmp_path):
    root = tmp_path / "root"
    parts = write_split(root / "My Split", "model", per_part=2)
    entries = ModelStore([root], cache_path=None).list()
    assert [e.name for e in entries] == ["My Split"]
    assert entries[0].params == reader_params(parts)
    assert len(entries[0].weight_files) == len(parts) == 4


@pytest.mark.parametrize("drop", [0, 1, 2])
def test_a_missing_part_is_broken_and_named(tmp_path, drop):
    root = tmp_path / "root"
    parts = write_split(root, "m")
    parts[drop].unlink()
    entries = ModelStore([root], cache_path=None).list()
    assert [e.name for e in entries] == ["m"]
    assert entries[0].status == "broken"
    assert f"part {parts[drop].name}" in entries[0].problem


def test_loading_or_importing_a_split_gguf_says_to_merge(tmp_path, capsys, monkeypatch):
    root = tmp_path / "root"
    parts = write_split(root, "m")
    store = ModelStore([root], cache_path=None)
    with pytest.raises(BrokenModelError, match="llama-gguf-split --merge") as info:
        Registry(store).load(LoadSpec("m", devices=("cpu",)))
    assert parts[0].name in str(info.value)
    with pytest.raises(ModelImportError, match=parts[1].name):
        import_path(parts[1], store)
    monkeypatch.setenv("WORKBENCH_STORE", str(root))
    from workbench.config import reset_settings

    reset_settings()
    assert main(["store", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["name"], d["status"], d["params"]) for d in doc] == [("m", "broken", reader_params(parts))]


def test_transformers_reads_only_the_part_it_is_given(tmp_path):
    """Why a split entry is not ok: given the first part, transformers silently initialises the rest at random."""
    from transformers import AutoModelForCausalLM

    parts = write_split(tmp_path / "root", "m")
    _model, info = AutoModelForCausalLM.from_pretrained(parts[0].parent, gguf_file=parts[0].name,
                                                        output_loading_info=True)
    # output_norm.weight (-> model.norm.weight) is written to a later part.
    assert "model.norm.weight" in info["missing_keys"]


def test_a_folder_with_one_part_is_a_broken_gguf_and_load_names_the_part(tmp_path):
    from workbench.errors import MissingTokenizerError
    from workbench.store.safety import check_entry

    root = tmp_path / "root"
    parts = write_split(root / "m", "m")
    for p in parts[1:]:
        p.unlink()
    entry = ModelStore([root], cache_path=None).get("m")
    assert (entry.format, entry.status) == ("gguf", "broken")
    with pytest.raises(BrokenModelError) as err:
        check_entry(entry)
    assert not isinstance(err.value, MissingTokenizerError)
    assert parts[1].name in str(err.value)
