"""Skeleton results kept across processes: a second `store inspect` asks neither torch nor transformers.

The right values are the first process's (which built the skeleton and ran it on the meta
device); the second must give the same numbers without importing torch, and a changed
``config.json`` must be measured again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

_PROBE = """
import json, sys
from workbench.store import ModelStore, estimate_table, kv_cache_bytes
entry = ModelStore([sys.argv[1]]).get(sys.argv[2])
table = {k: v.to_dict() for k, v in estimate_table(entry).items()}
print(json.dumps({"table": table, "kv": kv_cache_bytes(entry, 4096), "torch": "torch" in sys.modules}))
"""


def _inspect(root: Path, name: str, cache: Path) -> dict:
    env = dict(os.environ, WORKBENCH_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(root), name], env=env, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_inspect_answers_from_the_cache(tiny_models, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny_models["llama"], root / "tiny-llama")
    cache = tmp_path / "cache"
    cold = _inspect(root, "tiny-llama", cache)
    assert cold["torch"]
    assert cold["kv"]  # the first one built the skeleton
    warm = _inspect(root, "tiny-llama", cache)
    assert not warm["torch"]
    assert (warm["table"], warm["kv"]) == (cold["table"], cold["kv"])

    cfg_path = root / "tiny-llama" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_hidden_layers"] = 1  # a different model: its skeleton is built again
    cfg_path.write_text(json.dumps(cfg))
    changed = _inspect(root, "tiny-llama", cache)
    assert changed["torch"]
    assert changed["kv"] == cold["kv"] // 2
