"""vLLM's start-up rules applied when the command is built: refused before anything starts, and the
fake ``vllm`` command refuses the same flags with vLLM's own messages (so the two agree)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fakes.fake_pynvml import FakeGpu
from serve.conftest import FAKE_SERVER
from workbench.errors import LoadSpecError
from workbench.serve import plan_serve
from workbench.serve.engines import VllmArgs, vllm_argv
from workbench.serve.vllm_rules import allowed_tensor_parallel_sizes, check_vllm_args
from workbench.store import ModelStore

GiB = 2**30
SMOL = "SmolLM2-135M-Instruct"


def _fake_vllm_refusal(model_dir, args: VllmArgs) -> str:
    """Run the fake ``vllm serve`` on these flags; what it printed when it refused (exit 1)."""
    argv = vllm_argv([sys.executable, str(FAKE_SERVER)], model_dir, SMOL, args, port=1)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    return out.stderr


@pytest.fixture
def gpus(fake_nvml, clean_devices):
    return lambda n: fake_nvml([FakeGpu(memory_total_bytes=8 * GiB, memory_used_bytes=1 * GiB)] * n, torch=True)


def test_two_gpus_for_nine_heads_are_refused_before_anything_starts(seeded_store, fake_vllm, gpus) -> None:
    heads = json.loads((seeded_store / "config.json").read_text())["num_attention_heads"]
    assert heads == 9
    gpus(2)
    with pytest.raises(LoadSpecError) as info:
        plan_serve(SMOL, engine="vllm", devices=["cuda:0", "cuda:1"])
    msg = str(info.value)
    assert "9 attention heads" in msg
    assert "divisible by 2" in msg
    assert "verify_with_parallel_config" in msg
    assert "allows on these 2 GPUs are 1" in msg
    assert "--device cuda:0" in msg
    assert not fake_vllm.exists()  # the engine was never started
    # What vLLM itself (the fake, enforcing its rule) says for the same flags.
    assert "Total number of attention heads (9) must be divisible by tensor parallel size (2)" in \
        _fake_vllm_refusal(seeded_store, VllmArgs(2, 0.5, 2048))
    entry = ModelStore().get(SMOL)
    assert allowed_tensor_parallel_sizes(entry, 9) == [1, 3, 9]


def test_max_model_len_beyond_the_models_is_refused(seeded_store, fake_vllm, gpus) -> None:
    derived = json.loads((seeded_store / "config.json").read_text())["max_position_embeddings"]
    gpus(1)
    with pytest.raises(LoadSpecError, match=f"greater than the derived max_model_len \\({derived}"):
        plan_serve(SMOL, engine="vllm", devices=["cuda:0"], max_model_len=derived * 2)
    assert "is greater than the derived max_model_len" in \
        _fake_vllm_refusal(seeded_store, VllmArgs(1, 0.5, derived * 2))


def test_more_pipeline_stages_than_layers_are_refused(seeded_store, fake_vllm, gpus) -> None:
    layers = json.loads((seeded_store / "config.json").read_text())["num_hidden_layers"]
    gpus(1)
    with pytest.raises(LoadSpecError, match=f"it has {layers}"):
        plan_serve(SMOL, engine="vllm", devices=["cuda:0"], nodes=layers + 1)
    assert "leaves stages without layers" in \
        _fake_vllm_refusal(seeded_store, VllmArgs(1, 0.5, 2048, pipeline_parallel_size=layers + 1))


def test_utilization_and_quantization_outside_vllms_rules(seeded_store) -> None:
    entry = ModelStore([seeded_store.parent], cache_path=None).get(SMOL)
    for bad in (0.0, 1.2):
        with pytest.raises(LoadSpecError, match="outside \\(0, 1\\]"):
            check_vllm_args(entry, VllmArgs(1, bad, 2048))
        assert "gpu_memory_utilization" in _fake_vllm_refusal(seeded_store, VllmArgs(1, bad, 2048))
    with pytest.raises(LoadSpecError, match="no quantization method 'int8'"):
        check_vllm_args(entry, VllmArgs(1, 0.5, 2048, quantization="int8"))
    assert "Unknown quantization method: int8" in \
        _fake_vllm_refusal(seeded_store, VllmArgs(1, 0.5, 2048, quantization="int8"))
    check_vllm_args(entry, VllmArgs(3, 0.5, 2048, quantization="bitsandbytes"))  # within every rule
