"""bench/gpu_check.py stays runnable: its --dry-run exercises the same code on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_dry_run_passes(seeded_root, tmp_path):
    from workbench.store import ModelStore
    from workbench.store.importer import DEFAULT_GGUF_NAME, embedded_gguf_path, keep_gguf

    gguf_root = tmp_path / "gguf"
    keep_gguf(embedded_gguf_path(), ModelStore([gguf_root], cache_path=None), name=DEFAULT_GGUF_NAME)
    env = dict(os.environ, WORKBENCH_STORE=os.pathsep.join([str(tmp_path / "user"), str(seeded_root),
                                                            str(gguf_root)]),
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--variants", "nf4",
                           "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    statuses = {c["check"]: c["status"] for c in doc["checks"]}
    assert statuses["nf4: answers Paris"] == "PASS"
    assert statuses["fake 2x24 GiB GPUs: max_memory map"] == "PASS"
    assert statuses["llama.cpp: all layers on cpu, Paris, unload"] == "PASS"
    assert "FAIL" not in statuses.values()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda_available(), reason="this machine has a GPU: gpu_check runs for real there")
def test_gpu_check_without_cuda_says_so(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), WORKBENCH_STORE=str(tmp_path))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2
    assert "--dry-run" in proc.stdout
