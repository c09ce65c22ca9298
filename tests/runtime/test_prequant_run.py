"""Running a pre-quantized checkpoint: it loads as saved, says so, and refuses a second quantization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_models import save_prequantized
from workbench.cli import main
from workbench.errors import LoadSpecError
from workbench.runtime import LoadSpec, Registry
from workbench.store import ModelStore


@pytest.fixture(scope="module")
def nf4_root(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("prequant-run")
    save_prequantized(tiny_models["llama"], root / "llama-nf4", "nf4")
    return root


@pytest.mark.slow
def test_run_reports_the_saved_quantization(nf4_root, monkeypatch, capsys):
    from workbench.config import reset_settings

    monkeypatch.setenv("WORKBENCH_STORE", str(nf4_root))
    reset_settings()
    code = main(["run", "llama-nf4", "--prompt", "Hello", "--max-new-tokens", "4", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0, doc
    assert doc["quant"] == "nf4"
    assert doc["dtype"] == "bfloat16"
    # The footprint of what really loaded, against the store's estimate for it.
    assert abs(doc["estimate_bytes"] - doc["footprint_bytes"]) <= 0.03 * doc["footprint_bytes"]


def test_quantizing_again_is_a_typed_refusal(nf4_root):
    registry = Registry(ModelStore([nf4_root], cache_path=None))
    for spec in (LoadSpec("llama-nf4", quant="int8"), LoadSpec("llama-nf4", quant="nf4", double_quant=True)):
        with pytest.raises(LoadSpecError, match=r"already quantized \(nf4"):
            registry.load(spec)
    assert registry.list() == []  # refused before anything was read
