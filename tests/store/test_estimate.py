"""Memory estimates from headers (the footprint check against real loads lives in tests/runtime)."""

from __future__ import annotations

import pytest

from workbench.errors import ConfigError
from workbench.store import ModelStore, estimate, estimate_table, kv_cache_bytes


@pytest.fixture
def entry(seeded_root):
    return ModelStore([seeded_root], cache_path=None).get("SmolLM2-135M-Instruct")


def test_table_orders_precisions(entry):
    t = estimate_table(entry)
    assert list(t) == ["float32", "bfloat16", "int8", "nf4"]
    # Parameters double from bfloat16 to float32; buffers that are float32 anyway (rotary
    # inv_freq: 32 values) do not: 2 x bf16 - fp32 is exactly those fixed bytes.
    assert 0 < 2 * t["bfloat16"].total_bytes - t["float32"].total_bytes <= 4 * 64
    assert t["bfloat16"].total_bytes > t["int8"].total_bytes > t["nf4"].total_bytes
    # The tied embeddings (49152 x 576 of 134.5M parameters) stay in bfloat16, so nf4 is far from a quarter.
    assert t["nf4"].weights_bytes > 49152 * 576 * 2 + (entry.params - 49152 * 576) // 2


def test_double_quant_shrinks_state_only(entry):
    plain = estimate(entry, "bfloat16", "nf4")
    dq = estimate(entry, "bfloat16", "nf4", double_quant=True)
    assert dq.weights_bytes == plain.weights_bytes
    assert dq.quant_state_bytes < plain.quant_state_bytes / 3


def test_cpu_quantized_load_peak_includes_full_precision(entry):
    gpu = estimate(entry, "bfloat16", "nf4", device_type="cuda")
    cpu = estimate(entry, "bfloat16", "nf4", device_type="cpu")
    assert cpu.load_peak_bytes >= entry.params * 2 + gpu.weights_bytes
    assert gpu.load_peak_bytes == gpu.total_bytes


def test_kv_cache_formula(entry):
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 dims; keys and values in bfloat16.
    assert kv_cache_bytes(entry, 1000) == 2 * 30 * 3 * 64 * 2 * 1000
    assert kv_cache_bytes(entry, 1000, "float32", batch=2) == 4 * kv_cache_bytes(entry, 1000)


def test_bad_arguments_are_config_errors(entry):
    with pytest.raises(ConfigError, match="int3"):
        estimate(entry, "bfloat16", "int3")
    with pytest.raises(ConfigError, match="float8"):
        estimate(entry, "float8", "none")
    assert estimate(entry, "auto").dtype == "bfloat16"


def test_an_entry_without_readable_headers_is_a_store_error(tiny_models, tmp_path):
    """The entry is at fault, not an argument: BrokenModelError naming it (still a ValueError)."""
    import shutil

    from workbench.errors import BrokenModelError, StoreError

    folder = shutil.copytree(tiny_models["llama"], tmp_path / "root" / "cut")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    cut = ModelStore([tmp_path / "root"], cache_path=None).get("cut")
    assert cut.status == "broken"
    assert cut.params is None
    with pytest.raises(BrokenModelError, match="cut has no readable weight headers") as err:
        estimate(cut)
    assert isinstance(err.value, StoreError)
    assert isinstance(err.value, ValueError)
    assert err.value.path == cut.path
