"""vLLM's command line, built against the fit check on fake GPUs, run through a fake ``vllm`` executable.

The right numbers come from outside the code under test: the weights' bytes from
``safetensors.safe_open`` shapes, the KV cache per token from ``config.json``
(2 x layers x KV heads x head size x 2 bytes), the GPUs' free memory from the NVML fake.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import psutil
import pytest

from fakes.fake_pynvml import FakeGpu
from workbench.devices.leases import acquire, list_leases, release
from workbench.errors import EngineNotFoundError, InsufficientMemoryError, LoadSpecError
from workbench.runtime.fit import check_fit
from workbench.runtime.spec import LoadSpec
from workbench.serve import EndpointClient, EndpointRegistry, plan_serve, process, start, stop
from workbench.serve.vllm_memory import ENGINE_OVERHEAD_BYTES, SAFETY_BYTES
from workbench.store import ModelStore

GiB = 2**30
MiB = 2**20
SMOL = "SmolLM2-135M-Instruct"


def _truth(folder: Path) -> tuple[int, int, int]:
    """(bfloat16 weight bytes, KV bytes per token, context length) read from the files themselves."""
    from safetensors import safe_open

    numel = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                n = 1
                for d in sf.get_slice(k).get_shape():
                    n *= d
                numel += n
    cfg = json.loads((folder / "config.json").read_text())
    head = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head * 2
    return numel * 2, kv, cfg["max_position_embeddings"]


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.fixture
def gpus(fake_nvml, clean_devices):
    def install(*free_bytes: int, total: int = 8 * GiB):
        return fake_nvml([FakeGpu(memory_total_bytes=total, memory_used_bytes=total - f) for f in free_bytes],
                         torch=True)
    return install


def test_three_gpus_get_tensor_parallel_and_only_what_the_model_needs(seeded_store, fake_vllm, gpus) -> None:
    # SmolLM2 has 9 attention heads: vLLM splits them over 1, 3 or 9 GPUs (see test_vllm_rules.py).
    weights, kv_token, context = _truth(seeded_store)
    fake = gpus(3 * GiB, 3 * GiB, 3 * GiB)
    plan = plan_serve(SMOL, engine="auto", devices="cuda:0,cuda:1,cuda:2".split(","), dtype="bfloat16")
    assert plan.engine == "vllm"
    argv = list(plan.argv)
    assert argv[1:3] == ["serve", str(seeded_store)]
    assert _flag(argv, "--tensor-parallel-size") == "3"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--served-model-name") == SMOL
    util = float(_flag(argv, "--gpu-memory-utilization"))
    max_len = int(_flag(argv, "--max-model-len"))
    assert max_len == context  # the whole context fits beside a third of the weights
    taken = util * 8 * GiB
    # Never more than the GPU has free (vLLM refuses to start otherwise) nor vLLM's 0.9 of a shared GPU...
    assert taken <= 3 * GiB
    assert util < 0.9
    # ...and at least each GPU's third of the weights plus one full-length sequence's KV cache.
    assert taken >= weights / 3 + kv_token / 3 * max_len
    # The load's own fit check agrees that the model fits on these GPUs.
    entry = ModelStore().get(SMOL)
    assert check_fit(entry, LoadSpec(entry, devices=("cuda:0", "cuda:1", "cuda:2"), dtype="bfloat16")).fits

    ep = start(plan, ready_timeout_s=60)
    recorded = json.loads(fake_vllm.read_text())
    assert recorded["argv"] == argv[1:]
    assert recorded["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(g.uuid for g in fake.gpus)
    assert recorded["env"]["HF_HUB_OFFLINE"] == "1"
    assert "Paris" in EndpointClient(ep).chat("What is the capital of France?").text
    # Other users see the engine's memory as leased, for the engine's own PID, what vLLM will take.
    held = list_leases()
    assert sorted(x.device for x in held) == ["cuda:0", "cuda:1", "cuda:2"]
    assert {x.pid for x in held} == {ep.pid}
    assert {x.reserved_bytes for x in held} == {int(taken)}
    assert stop(ep.name).was_running
    assert list_leases() == []


def test_a_serve_plan_and_its_start_read_nvmls_memory_once(seeded_store, fake_vllm, gpus) -> None:
    """The fit check's reading of the GPU sizes vLLM's share of it and is what the engine's lease is
    checked against (the lease folder is listed again after the claim; NVML is not read again)."""
    from workbench.devices.leases import get_lease_book

    fake = gpus(3 * GiB)
    get_lease_book()  # the process's book, built (and NVML started) before counting
    fake.calls.clear()
    ep = start(plan_serve(SMOL, engine="vllm", devices=["cuda:0"], dtype="bfloat16"), ready_timeout_s=60)
    try:
        assert fake.calls["memory"] == 1
        assert [x.pid for x in list_leases()] == [ep.pid]
    finally:
        stop(ep.name)


def test_a_gpu_leased_to_someone_else_refuses_the_engine(seeded_store, fake_vllm, gpus) -> None:
    gpus(3 * GiB)
    plan = plan_serve(SMOL, engine="vllm", devices=["cuda:0"], dtype="bfloat16")
    other = acquire("cuda:0", 2 * GiB, "someone-elses-model")
    try:
        with pytest.raises(InsufficientMemoryError, match="promised to leases"):
            start(plan, ready_timeout_s=60)
        # The engine had started (the lease is for its PID): nothing of it is left.
        assert not [p for p in psutil.process_iter(["cmdline"]) if plan.argv[0] in " ".join(p.info["cmdline"] or [])]
        assert [x.lease_id for x in list_leases()] == [other.lease_id]
        assert not process.port_open("127.0.0.1", plan.port)
        assert EndpointRegistry().list() == []
    finally:
        release(other)


def test_an_engine_that_cannot_take_its_lease_is_not_started(seeded_store, fake_vllm, gpus, tmp_path,
                                                             monkeypatch) -> None:
    """The policy loads follow (devices/leases/policy.py): no lease, no engine; the reason is named."""
    from workbench.config import reset_settings
    from workbench.errors import LeaseFolderError

    gpus(3 * GiB)
    plan = plan_serve(SMOL, engine="vllm", devices=["cuda:0"], dtype="bfloat16")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "leases-link").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("WORKBENCH_LEASE_DIR", str(tmp_path / "leases-link"))
    reset_settings()
    with pytest.raises(LeaseFolderError, match="leases-link is a symbolic link"):
        start(plan, ready_timeout_s=60)
    assert not [p for p in psutil.process_iter(["cmdline"]) if plan.argv[0] in " ".join(p.info["cmdline"] or [])]
    assert not process.port_open("127.0.0.1", plan.port)
    assert EndpointRegistry().list() == []
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_tight_gpu_gets_the_context_whose_kv_cache_fits(seeded_store, fake_vllm, gpus) -> None:
    weights, kv_token, context = _truth(seeded_store)
    free = weights + 1280 * MiB + kv_token * 3000
    gpus(free)
    argv = list(plan_serve(SMOL, engine="vllm", devices=["cuda:0"], dtype="bfloat16").argv)
    util = float(_flag(argv, "--gpu-memory-utilization"))
    max_len = int(_flag(argv, "--max-model-len"))
    # With the engine's own overhead (CUDA context, activations) and the margin left to others,
    # the full context cannot fit here.
    assert weights + ENGINE_OVERHEAD_BYTES + SAFETY_BYTES + kv_token * context > free
    assert 256 <= max_len < context
    assert max_len % 16 == 0
    assert weights + kv_token * max_len <= util * 8 * GiB <= free

    with pytest.raises(InsufficientMemoryError, match="--max-model-len") as info:
        plan_serve(SMOL, engine="vllm", devices=["cuda:0"], dtype="bfloat16", max_model_len=context)
    assert info.value.devices == ["cuda:0"]


def test_a_gpu_too_small_is_refused_before_anything_starts(seeded_store, fake_vllm, gpus) -> None:
    gpus(600 * MiB)
    with pytest.raises(InsufficientMemoryError, match="cuda:0"):
        plan_serve(SMOL, engine="vllm", devices=["cuda:0"], dtype="bfloat16")
    assert not fake_vllm.exists()


def test_quantization_and_multi_node_flags(seeded_store, fake_vllm, gpus) -> None:
    gpus(3 * GiB, 3 * GiB, 3 * GiB)
    argv = list(plan_serve(SMOL, engine="vllm", devices=["cuda:0", "cuda:1", "cuda:2"], quant="nf4", nodes=2).argv)
    assert _flag(argv, "--quantization") == "bitsandbytes"
    assert _flag(argv, "--pipeline-parallel-size") == "2"
    assert _flag(argv, "--distributed-executor-backend") == "ray"
    with pytest.raises(LoadSpecError, match="nf4 only"):
        plan_serve(SMOL, engine="vllm", devices=["cuda:0"], quant="int8")


def test_auto_falls_back_to_transformers(seeded_store, gpus) -> None:
    gpus(3 * GiB)
    # conftest points vllm_command at a missing file: no vLLM here.
    assert plan_serve(SMOL, engine="auto", devices=["cuda:0"]).engine == "transformers"
    assert plan_serve(SMOL, engine="auto", devices=["cpu"]).engine == "transformers"
    with pytest.raises(EngineNotFoundError, match="vllm_command"):
        plan_serve(SMOL, engine="vllm", devices=["cuda:0"])
    with pytest.raises(LoadSpecError, match="GPUs only"):
        plan_serve(SMOL, engine="vllm", devices=["cpu"])


def test_transformers_command_line(seeded_store) -> None:
    plan = plan_serve(SMOL, engine="transformers", devices=["cpu"], quant="nf4", port=8123)
    argv = list(plan.argv)
    # transformers' own CLI, behind the engine's key (workbench/serve/tf_launcher.py).
    assert argv[:6] == [sys.executable, "-P", "-m", "workbench.serve.tf_launcher", "serve", str(seeded_store)]
    assert _flag(argv, "--port") == "8123"
    assert _flag(argv, "--host") == "127.0.0.1"
    assert _flag(argv, "--quantization") == "bnb-4bit"
    assert "--continuous-batching" in argv
    assert plan.env["HF_HUB_OFFLINE"] == "1"
    assert Path(plan.env["HF_HOME"]).is_dir()
