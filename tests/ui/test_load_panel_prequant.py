"""The Load panel offers a pre-quantized checkpoint only as saved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import save_prequantized
from workbench.ui import LoadPanel


@pytest.fixture
def prequant_store(monkeypatch: pytest.MonkeyPatch, isolated_store: Path, tiny_root: Path, tiny_models, tmp_path):
    from workbench.config import reset_settings

    save_prequantized(tiny_models["llama"], tmp_path / "pq" / "llama-nf4", "nf4")
    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(tmp_path / "pq"), str(tiny_root)]))
    reset_settings()


@pytest.mark.slow
def test_prequantized_model_offers_no_quantization(prequant_store) -> None:
    from workbench.runtime import Registry
    from workbench.store import ModelStore

    panel = LoadPanel(registry=Registry(ModelStore()))
    _ = panel.widget
    panel._model_w.value = "tiny-llama"
    panel._quant_w.value = "int8"
    panel._model_w.value = "llama-nf4"
    assert tuple(panel._quant_w.options) == ("none",) and panel._quant_w.disabled
    assert panel.spec().quant == "none" and "nf4" in panel._quant_w.description
    assert "in nf4 needs about" in panel._check_w.value
    panel._model_w.value = "tiny-llama"
    assert "int8" in panel._quant_w.options and not panel._quant_w.disabled
