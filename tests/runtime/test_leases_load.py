"""Loads take GPU leases, fit them to the placement, and give them back on unload or failure.

The GPU is a fake at the NVML seam. This machine's torch has no CUDA, so a real load
onto cuda:0 fails inside transformers (the failure path is real); the success path
replaces ``loader.load`` (where weights would move to the GPU) with a CPU-loaded tiny
model that reports a cuda:0 placement, and runs the registry's real bookkeeping.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

from fakes.fake_pynvml import FakeGpu
from workbench.devices.leases import LeaseBook, get_lease_book, list_leases
from workbench.errors import InsufficientMemoryError, LoadError
from workbench.runtime import LoadSpec, loader
from workbench.runtime.fit import check_fit
from workbench.runtime.leasing import lease_amounts

GiB = 2**30


@pytest.fixture
def gpu(fake_nvml, clean_devices):
    fake = fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    return fake.gpus[0]


def test_a_failed_gpu_load_holds_its_lease_while_loading_and_gives_it_back(gpu, registry, events):
    seen = []

    def progress(p):
        if p.phase == "tokenizer":
            seen.extend(list_leases())

    with pytest.raises(LoadError):
        registry.load(LoadSpec("tiny-llama", devices=("cuda:0",)), progress=progress)
    [lease] = seen
    assert (lease.model, lease.device, lease.pid, lease.gpu_uuid) == ("tiny-llama", "cuda:0", os.getpid(), gpu.uuid)
    chk = check_fit(registry.store.get("tiny-llama"), LoadSpec("tiny-llama", devices=("cuda:0",)).validate())
    assert lease.reserved_bytes == chk.needed_bytes  # the whole estimate, reserves included, on its one GPU
    assert list_leases() == []


def test_a_load_refused_by_another_users_lease_names_them(gpu, registry, events):
    LeaseBook(hub_user="alice", heartbeat_s=None).acquire("cuda:0", int(23.9 * GiB), "Mixtral-8x7B", hold=False)
    with pytest.raises(InsufficientMemoryError, match=r"leased by .*hub user alice\) \(Mixtral-8x7B, kernel"):
        registry.load(LoadSpec("tiny-llama", devices=("cuda:0",)))
    assert [x.hub_user for x in list_leases()] == ["alice"]
    assert events.of("error")
    assert not events.of("load_started")


def test_a_load_that_cannot_take_its_lease_is_refused(gpu, registry, events, tmp_path, monkeypatch):
    """Fail closed (before: loaded with no lease, silently): the reason and the way out are named."""
    from workbench.config import reset_settings
    from workbench.errors import LeaseFolderError

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "leases-link").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("WORKBENCH_LEASE_DIR", str(tmp_path / "leases-link"))
    reset_settings()
    with pytest.raises(LeaseFolderError) as err:
        registry.load(LoadSpec("tiny-llama", devices=("cuda:0",)))
    assert "tiny-llama cannot take its GPU lease on cuda:0" in str(err.value)
    assert "leases-link is a symbolic link" in str(err.value)
    assert "leases_enabled = False" in str(err.value)
    assert events.of("error")
    assert not events.of("load_started")
    assert registry.list() == []
    assert list((tmp_path / "elsewhere").iterdir()) == []


def _weights_on_the_fake_gpu(monkeypatch) -> None:
    """Loads run on the CPU and report their weights as placed on the fake cuda:0."""
    real_load = loader.load

    def weights_on_the_fake_gpu(entry, spec, **kw):
        cpu = real_load(entry, spec.with_(devices=("cpu",)), device_map="cpu", max_memory=None)
        cpu.placement = {"cuda:0": cpu.footprint_bytes}
        cpu.module_devices = {"": "cuda:0"}
        return cpu

    monkeypatch.setattr(loader, "load", weights_on_the_fake_gpu)


def test_load_and_unload_take_settle_and_release(gpu, registry, monkeypatch, shared_store):
    _weights_on_the_fake_gpu(monkeypatch)
    m = registry.load(LoadSpec("tiny-llama", devices=("cuda:0",), dtype="float32"))
    [lease] = list_leases()
    reserve = m.fit.budgets[0].reserve_bytes
    # Settled to the measured placement plus the GPU's reserve (CUDA context, KV cache share).
    assert lease.reserved_bytes == m.footprint_bytes + reserve
    assert [x.lease_id for x in m.leases] == [lease.lease_id]
    registry.unload(m.name)
    assert list_leases() == []
    assert m.leases == ()


def test_lease_amounts_fill_gpus_in_order(fake_nvml, clean_devices, shared_store):
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB), FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    entry = shared_store.get("tiny-llama")
    chk = check_fit(entry, LoadSpec(entry, devices=("cuda:0", "cuda:1")).validate())
    weights = max(chk.estimate.total_bytes, chk.estimate.load_peak_bytes)
    cap = weights // 3  # accelerate puts a third on cuda:0 (its max_memory), the rest on cuda:1
    spec = LoadSpec(entry, devices=("cuda:0", "cuda:1"), max_memory={"cuda:0": cap}).validate()
    chk = check_fit(entry, spec)
    b0, b1 = chk.budgets
    assert lease_amounts(spec, chk) == {"cuda:0": cap + b0.reserve_bytes, "cuda:1": weights - cap + b1.reserve_bytes}
    assert lease_amounts(LoadSpec(entry).validate(), check_fit(entry, LoadSpec(entry).validate())) == {}


def _counting(monkeypatch, cls, name: str, counter: Counter) -> None:
    real = getattr(cls, name)

    def counted(self, *args, **kwargs):
        counter[name] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)


def test_a_gpu_load_reads_nvml_memory_once_and_lists_the_lease_folder_twice_by_one_function(
        fake_nvml, clean_devices, registry, monkeypatch):
    """One reading of the GPU (NVML's free memory and the leases, together) sizes the claim and is
    what the claim is checked against. The folder is listed a second time after the claim is written,
    and must be: every claimant writes before it lists, so that of two concurrent claimants the later
    writer sees the other (LeaseBook.acquire); a listing made before our claim was written cannot.
    Both listings are the one reading function's."""
    from workbench.devices.leases import LeaseFolder

    fake = fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    _weights_on_the_fake_gpu(monkeypatch)
    # Another user's lease: the folder exists and has a lease to count (its holder's memory is matched too).
    LeaseBook(hub_user="alice", heartbeat_s=None).acquire("cuda:0", GiB, "Mixtral-8x7B", hold=False)
    get_lease_book()  # built (and NVML started) before counting: the book is the process's, not the load's
    calls: Counter = Counter()
    _counting(monkeypatch, LeaseFolder, "list", calls)
    _counting(monkeypatch, LeaseBook, "_read_gpu", calls)
    fake.calls.clear()
    m = registry.load(LoadSpec("tiny-llama", devices=("cuda:0",), dtype="float32"))
    assert (fake.calls["memory"], calls["list"], calls["_read_gpu"]) == (1, 2, 2)
    assert sorted(x.hub_user or "" for x in list_leases()) == sorted(["alice", m.leases[0].hub_user or ""])


def test_a_claim_written_after_the_fits_reading_is_seen_by_the_claims_own_check(fake_nvml, clean_devices):
    """The reading a load carries to its acquire is NVML's only: the folder is listed again after the
    claim is written, so a lease taken between the fit and the claim refuses the claim."""
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True)
    me = LeaseBook(heartbeat_s=None)
    reading = me.share("cuda:0")  # the fit's: nothing leased yet, 24 GiB free
    assert (reading.free_bytes, reading.leases) == (24 * GiB, ())
    LeaseBook(hub_user="alice", heartbeat_s=None).acquire("cuda:0", 20 * GiB, "Mixtral-8x7B", hold=False)
    with pytest.raises(InsufficientMemoryError, match=r"leased by .*hub user alice\) \(Mixtral-8x7B"):
        me.acquire("cuda:0", 8 * GiB, "tiny-llama", reading=reading, hold=False)
    assert [x.hub_user for x in list_leases()] == ["alice"]


def test_a_gpu_load_refused_for_memory_reads_each_gpus_memory_once_suggestion_included(
        fake_nvml, clean_devices, registry):
    """The refusal's suggestion (other precisions, the other GPU, the CPU) is tried against the fit's
    own reading of cuda:0 and one reading of cuda:1, not NVML afresh for every alternative: NVML's
    memory is read once per GPU (the fake counts the queries)."""
    mib = 2**20
    # 256 MiB each, 200 MiB of it used by others: not even torch's CUDA context fits (512 MiB).
    fake = fake_nvml([FakeGpu(memory_total_bytes=256 * mib, memory_used_bytes=200 * mib)] * 2, torch=True)
    get_lease_book()  # built (and NVML started) before counting, as above
    fake.calls.clear()
    with pytest.raises(InsufficientMemoryError) as err:
        registry.load(LoadSpec("tiny-llama", devices=("cuda:0",), dtype="float32"))
    assert "load on cpu instead" in err.value.hint.lower()  # the suggestion was made, the CPU among the ideas
    assert fake.calls["memory"] == 2
