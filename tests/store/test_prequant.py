"""Pre-quantized checkpoints: listed with their original parameter count, their quantization, and
an estimate of what reloading them really takes.

The checkpoints are made as people make them: tiny-llama loaded with bitsandbytes
(nf4, int8) on the CPU and saved with ``save_pretrained``. Right values: ``numel``
of the original instantiated model, and ``get_memory_footprint()`` after reloading
the saved folder.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from tiny_models import save_prequantized
from workbench.errors import ConfigError
from workbench.store import ModelStore, estimate, estimate_table


@pytest.fixture(scope="session")
def prequant_root(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("prequant")
    for quant in ("nf4", "int8"):
        save_prequantized(tiny_models["llama"], root / f"llama-{quant}", quant)
    return root


def _numel(folder: Path) -> int:
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(folder).parameters())


def _reloaded_footprint(folder: Path) -> int:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, device_map="cpu").get_memory_footprint()


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_bnb_checkpoint_listed_as_the_original_model(prequant_root, tiny_models, quant):
    entry = ModelStore([prequant_root], cache_path=None).get(f"llama-{quant}")
    assert entry.ok, entry.problem
    assert entry.params == _numel(tiny_models["llama"])  # not the packed bytes
    assert (entry.quantization, entry.quant_method, entry.dtype) == (quant, "bitsandbytes", "bfloat16")
    assert entry.weights.quant_state_bytes > 0
    assert entry.missing_package is None


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["nf4", "int8"])
def test_estimate_is_the_reloaded_footprint_and_only_as_saved(prequant_root, quant):
    entry = ModelStore([prequant_root], cache_path=None).get(f"llama-{quant}")
    table = estimate_table(entry)
    assert list(table) == [quant]
    footprint = _reloaded_footprint(prequant_root / f"llama-{quant}")
    est = table[quant]
    assert abs(est.weights_bytes - footprint) <= 0.03 * footprint, (est.weights_bytes, footprint)
    assert estimate(entry, "auto", "none") == est
    other = "int8" if quant == "nf4" else "nf4"
    with pytest.raises(ConfigError, match="already quantized"):
        estimate(entry, "bfloat16", other)


def test_missing_loader_package_is_named(tmp_path, tiny_models):
    """A GPTQ config on a machine without its packages: the listing names the package, not a bad file."""
    folder = shutil.copytree(tiny_models["llama"], tmp_path / "root" / "llama-gptq")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    (folder / "config.json").write_text(json.dumps(cfg))
    entry = ModelStore([tmp_path / "root"], cache_path=None).get("llama-gptq")
    expected = next((m for m in ("optimum", "gptqmodel") if importlib.util.find_spec(m) is None), None)
    assert entry.quantization == "gptq-4bit"
    assert entry.missing_package == expected
    if expected:
        assert entry.status == "broken"
        assert f"pip install {expected}" in entry.problem
        assert "header" not in entry.problem


def test_gptq_packed_weights_count_unpacked(tmp_path, tiny_models):
    """GPTQ stores int32 qweight [in x bits/32, out]: the listing counts in x out, from g_idx's length."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "root" / "gptq-made"
    shutil.copytree(tiny_models["llama"], folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    (folder / "config.json").write_text(json.dumps(cfg))
    in_f, out_f, group = 128, 64, 32  # one 4-bit layer of 128 inputs and 64 outputs
    tensors = {
        "model.layers.0.mlp.down_proj.qweight": torch.zeros(in_f * 4 // 32, out_f, dtype=torch.int32),
        "model.layers.0.mlp.down_proj.qzeros": torch.zeros(in_f // group, out_f * 4 // 32, dtype=torch.int32),
        "model.layers.0.mlp.down_proj.scales": torch.zeros(in_f // group, out_f, dtype=torch.float16),
        "model.layers.0.mlp.down_proj.g_idx": torch.zeros(in_f, dtype=torch.int32),
        "model.norm.weight": torch.ones(64, dtype=torch.float16),
    }
    (folder / "model.safetensors").unlink()
    save_file(tensors, folder / "model.safetensors")
    entry = ModelStore([tmp_path / "root"], cache_path=None).get("gptq-made")
    assert entry.params == in_f * out_f + 64
    assert entry.weights.linear_params == in_f * out_f
    assert entry.weights.linear_rows == out_f
