"""The Load panel offers a pre-quantized checkpoint only as saved."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tiny_models import save_prequantized
from workbench.errors import LoadSpecError
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
    panel.controls.model.value = "tiny-llama"
    panel.controls.quant.value = "int8"
    panel.controls.model.value = "llama-nf4"
    assert tuple(panel.controls.quant.options) == ("none",)
    assert panel.controls.quant.disabled
    assert panel.spec().quant == "none"
    assert "nf4" in panel.controls.quant.description
    assert "in nf4 needs about" in panel.outputs.check.value
    with pytest.raises(LoadSpecError, match="loads with its own quantization"):
        panel.select(quant="int8")  # the trait refuses a second quantization, as the runtime would
    assert (panel.quant, panel.controls.quant.value) == ("none", "none")
    panel.controls.model.value = "tiny-llama"
    assert "int8" in panel.controls.quant.options
    assert not panel.controls.quant.disabled
