"""The pre-load fit check, refusals with numbers and suggestions, and max_memory maps, via the fakes.

GPUs are faked at the NVML / torch.cuda seams (tests/fakes): two 24 GiB boards,
3 GiB of the first held by another user's process. Nothing here loads weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.fake_pynvml import FakeGpu, FakeProcess
from workbench.errors import InsufficientMemoryError, LoadSpecError, UnknownNeedError
from workbench.runtime import LoadSpec, Registry, check_fit, placement_plan
from workbench.runtime.fit import CUDA_CONTEXT_BYTES, require_fit
from workbench.store import ModelEntry, WeightStats, estimate, format_bytes

GiB = 2**30
MiB = 2**20


def big_entry(params: int = 16_000_000_000, folder: Path | None = None) -> ModelEntry:
    """A 16B-parameter bfloat16 model as the store would describe it (no files needed).

    With ``folder``, a Llama ``config.json`` of its shape is written there, so its KV cache
    can be measured (the weights estimate then follows that config: 11.3B parameters).
    """
    linear = int(params * 0.9)
    if folder is not None:
        from transformers import LlamaConfig

        LlamaConfig(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                    num_key_value_heads=8, vocab_size=32000).save_pretrained(folder)
    return ModelEntry(
        name="big-16b", path=folder or Path("/nonexistent/big-16b"), root=Path("/nonexistent"), writable=False,
        format="safetensors", params=params, dtype="bfloat16", num_layers=40, num_kv_heads=8, head_dim=128,
        weights=WeightStats(params=params, linear_params=linear, linear_rows=linear // 5120, linear_count=280,
                            bytes_by_dtype={"BF16": params * 2}),
    )


@pytest.fixture
def two_gpus(fake_nvml, clean_devices):
    """Two 24 GiB GPUs; another process holds 3 GiB of cuda:0."""
    return fake_nvml([FakeGpu(memory_total_bytes=24 * GiB, processes=[FakeProcess(4242, 3 * GiB)]),
                      FakeGpu(memory_total_bytes=24 * GiB)], torch=True)


def test_fit_uses_nvml_free_memory_per_gpu(two_gpus, tmp_path):
    entry = big_entry(folder=tmp_path / "big-16b")
    chk = check_fit(entry, LoadSpec(entry, devices=("cuda:0", "cuda:1")).validate())
    budgets = {b.device: b for b in chk.budgets}
    assert budgets["cuda:0"].free_bytes == 21 * GiB
    assert budgets["cuda:1"].free_bytes == 24 * GiB
    assert chk.fits is True  # 22.6 GB of weights (the config's 11.3B parameters) over 44 GiB of free memory
    assert chk.needed_bytes > estimate(entry, "bfloat16").total_bytes + 2 * CUDA_CONTEXT_BYTES - 1


def test_refusal_on_one_gpu_names_numbers_and_suggests(two_gpus):
    entry = big_entry()
    spec = LoadSpec(entry, devices=("cuda:0",))
    with pytest.raises(InsufficientMemoryError) as err:
        require_fit(entry, spec.validate())
    e = err.value
    text = str(e)
    assert "big-16b in bfloat16 needs about" in text
    assert "cuda:0 has 21.0 GiB free" in text
    assert "does not fit" in text
    # Suggestions: a smaller quantization that fits here, and the second GPU.
    assert "quant='nf4'" in text or "quant='int8'" in text
    assert "add cuda:1" in text
    assert e.needed_bytes > 30 * GiB
    assert e.free_bytes == {"cuda:0": 21 * GiB}
    assert isinstance(e, MemoryError)


def test_registry_refuses_before_any_work(two_gpus, events):
    entry = big_entry(40_000_000_000)  # 80 GB in bfloat16: too big even for both GPUs
    reg = Registry()
    with pytest.raises(InsufficientMemoryError) as err:
        reg.load(LoadSpec(entry, devices=("cuda:0", "cuda:1")))
    # 80 GB does not fit in 45 GiB; int8 (about 42 GiB) does, across both GPUs.
    assert "does not fit. Try quant='int8'" in str(err.value)
    assert reg.list() == []
    assert [e.kind for e in events.of("error")] == ["error"]
    assert not events.of("load_started")


def test_max_memory_map_for_two_gpus(two_gpus, tmp_path):
    entry = big_entry(folder=tmp_path / "big-16b")
    spec = LoadSpec(entry, devices=("cuda:0", "cuda:1"), max_memory={"cuda:1": 20 * GiB}).validate()
    chk = check_fit(entry, spec)
    device_map, mm = placement_plan(spec, chk)
    assert device_map == "auto"
    kv_share = chk.budgets[0].reserve_bytes - CUDA_CONTEXT_BYTES
    assert kv_share > 0  # each GPU keeps room for its share of the KV cache
    assert mm == {0: 21 * GiB - CUDA_CONTEXT_BYTES - kv_share, 1: 20 * GiB}
    assert chk.fits is True


def test_max_memory_cap_can_make_it_not_fit(two_gpus):
    entry = big_entry()
    spec = LoadSpec(entry, devices=("cuda:0", "cuda:1"), max_memory={"cuda:0": 8 * GiB, "cuda:1": 8 * GiB})
    with pytest.raises(InsufficientMemoryError, match="capped at 8.0 GiB") as err:
        require_fit(entry, spec.validate())
    assert "raise max_memory" in str(err.value)


def test_single_device_maps():
    assert placement_plan(LoadSpec("m", devices=("cpu",))) == ("cpu", None)
    assert placement_plan(LoadSpec("m", devices=("cuda:1",))) == ({"": "cuda:1"}, None)


def test_unknown_free_memory_needs_a_cap(two_gpus):
    spec = LoadSpec("m", devices=("cuda:0", "cuda:1"))
    with pytest.raises(LoadSpecError, match="max_memory"):
        placement_plan(spec, None, fallback=lambda d: None)
    assert placement_plan(spec, None, fallback=lambda d: 5 * GiB) == ("auto", {0: 5 * GiB, 1: 5 * GiB})


def test_unknown_gpu_is_a_spec_error(two_gpus):
    entry = big_entry()
    with pytest.raises(LoadSpecError, match="cuda:2"):
        Registry().load(LoadSpec(entry, devices=("cuda:2",)))


def test_no_gpu_at_all_is_a_spec_error(fake_nvml, clean_devices, shared_store):
    fake_nvml([], library_missing=True)
    with pytest.raises(LoadSpecError, match="cuda:0"):
        Registry(shared_store).load(LoadSpec("tiny-llama", devices=("cuda:0",)))


def test_cpu_refusal_with_little_ram(monkeypatch, shared_store):
    from workbench import devices

    entry = shared_store.get("SmolLM2-135M-Instruct")
    monkeypatch.setattr(devices, "memory_free_bytes", lambda d: 400 * MiB if d == "cpu" else None)
    reg = Registry(shared_store)
    with pytest.raises(InsufficientMemoryError) as err:
        reg.load(LoadSpec(entry, dtype="float32"))
    text = str(err.value)
    assert "cpu has 400.0 MiB free" in text
    assert "float32" in text
    assert "dtype='bfloat16'" in text  # 269 MB in bfloat16 fits in 400 MiB
    assert reg.list() == []


def test_cpu_quantized_refusal_counts_the_load_peak(monkeypatch, shared_store):
    """nf4's footprint (110 MB) fits in 300 MiB, but the CPU load peak (full precision first) does not."""
    from workbench import devices

    entry = shared_store.get("SmolLM2-135M-Instruct")
    est = estimate(entry, "bfloat16", "nf4", device_type="cpu")
    assert est.total_bytes < 300 * MiB < est.load_peak_bytes
    monkeypatch.setattr(devices, "memory_free_bytes", lambda d: 300 * MiB)
    with pytest.raises(InsufficientMemoryError) as err:
        Registry(shared_store).load(LoadSpec(entry, quant="nf4"))
    assert f"load peak {format_bytes(est.load_peak_bytes)}" in str(err.value)


def test_fit_table_is_the_load_check_per_device_and_precision(seeded_root):
    """The Store tab's and `store inspect`'s fits: each row is check_fit of that load, reserves included."""
    from workbench.runtime import fit_table
    from workbench.store import ModelStore

    entry = ModelStore([seeded_root], cache_path=None).get("SmolLM2-135M-Instruct")
    int8 = check_fit(entry, LoadSpec(entry, devices=("cuda:0",), dtype="bfloat16", quant="int8"),
                     free=lambda d: 10 * GiB, leased=lambda d: None)
    room = int8.needed_bytes + MiB  # int8 fits on cuda:0 with its CUDA context and KV cache; bfloat16 does not
    free = {"cuda:0": room, "cuda:1": 10 * GiB, "cpu": None}
    table = fit_table(entry, ["cuda:0", "cuda:1", "cpu"], free=free.get, leased=lambda d: None)
    fits = {(c.spec.devices[0], c.estimate.label): c.fits for c in table}
    assert fits[("cuda:0", "nf4")]
    assert fits[("cuda:0", "int8")]
    assert fits[("cuda:0", "bfloat16")] is False
    assert all(fits[("cuda:1", p)] for p in ("float32", "bfloat16", "int8", "nf4"))
    assert {v for (d, _), v in fits.items() if d == "cpu"} == {None}  # unknown free memory: unknown, not "fits"
    row = next(c for c in table if c.spec.devices == ("cuda:0",) and c.estimate.label == "int8")
    assert row.needed_bytes == int8.needed_bytes
    assert row.parts == int8.parts
    assert set(row.parts) == {"weights", "kv_cache", "cuda_context"}
    assert row.parts["cuda_context"] == CUDA_CONTEXT_BYTES
    # Without the CUDA context the weights and KV cache alone would have fitted in much less.
    assert row.needed_bytes - CUDA_CONTEXT_BYTES < room // 2


def test_unknown_cache_is_unknown_not_zero(two_gpus):
    """No config.json: transformers cannot build the model, so its KV cache is unknown. The check names
    that part with the store's reason and answers ``None`` (never "fits" on weights alone)."""
    from workbench.store.estimate import cache_problem

    entry = big_entry()
    chk = check_fit(entry, LoadSpec(entry, devices=("cuda:0", "cuda:1")).validate())
    reason = cache_problem(entry)
    assert reason is not None
    assert reason.startswith("estimate unavailable:")
    assert (chk.fits, chk.unknown_parts, "kv_cache" in chk.parts) == (None, {"kv_cache": reason}, False)
    assert f"KV cache unknown ({reason})" in chk.message


def test_unknown_cache_refused_with_an_opt_out(two_gpus, caplog):
    entry = big_entry()
    spec = LoadSpec(entry, devices=("cuda:0", "cuda:1")).validate()
    with pytest.raises(UnknownNeedError) as err:
        require_fit(entry, spec)
    text = str(err.value)
    assert "cannot check that big-16b fits: KV cache unknown (estimate unavailable:" in text
    assert "allow_unknown_cache=True" in text
    assert "--allow-unknown-cache" in text
    assert (err.value.context["name"], list(err.value.context["unknown_parts"])) == ("big-16b", ["kv_cache"])
    with caplog.at_level("WARNING", logger="workbench.runtime.fit"):
        chk = require_fit(entry, spec.with_(allow_unknown_cache=True))
    assert chk.fits is None
    assert "loading without a cache estimate" in caplog.text


def test_unknown_cache_does_not_hide_a_refusal(two_gpus):
    """What is known already does not fit on one GPU: refused for memory, whatever the cache."""
    entry = big_entry()
    with pytest.raises(InsufficientMemoryError):
        require_fit(entry, LoadSpec(entry, devices=("cuda:0",), allow_unknown_cache=True).validate())


def test_registry_refuses_an_unknown_cache_before_any_work(two_gpus, events):
    entry = big_entry()
    reg = Registry()
    with pytest.raises(UnknownNeedError):
        reg.load(LoadSpec(entry, devices=("cuda:0", "cuda:1")))
    assert reg.list() == []
    assert not events.of("load_started")
