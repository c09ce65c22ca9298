"""A shard index and its shards must name the same tensors: either way round, the entry is broken.

Fixtures are real sharded checkpoints saved by transformers, altered with safetensors'
own reader and writer: a shard re-saved without one tensor the index still names (a stale
index: the load would leave that weight at random initialisation), and a tensor the index
does not list (never loaded, yet counted in ``params``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from workbench.store import ModelStore

INDEX = "model.safetensors.index.json"


def _copy(tiny_models, tmp_path: Path) -> Path:
    dest = tmp_path / "root" / "sharded"
    shutil.copytree(tiny_models["llama-sharded"], dest)
    return dest


def _entry(folder: Path):
    return ModelStore([folder.parent], cache_path=None).get(folder.name)


def test_the_sharded_fixture_is_ok(tiny_models, tmp_path):
    assert _entry(_copy(tiny_models, tmp_path)).status == "ok"


def test_a_shard_lacking_a_tensor_its_index_names_is_broken(tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(tiny_models, tmp_path)
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
    name, shard = next((n, s) for n, s in sorted(weight_map.items()) if "layers.1.mlp" in n)
    tensors = load_file(folder / shard)
    del tensors[name]
    save_file(tensors, folder / shard, metadata={"format": "pt"})
    entry = _entry(folder)
    assert entry.status == "broken"
    assert name in entry.problem
    assert "stale" in entry.problem


def test_a_tensor_the_index_does_not_list_is_broken(tiny_models, tmp_path):
    folder = _copy(tiny_models, tmp_path)
    index = json.loads((folder / INDEX).read_text())
    name = sorted(index["weight_map"])[-1]
    del index["weight_map"][name]
    (folder / INDEX).write_text(json.dumps(index))
    entry = _entry(folder)
    assert entry.status == "broken"
    assert name in entry.problem
    assert "does not list" in entry.problem
