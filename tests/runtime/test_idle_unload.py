"""Idle unload: the watcher's check, driven with explicit times (no sleeping), on a real tiny model."""

from __future__ import annotations

import threading

import pytest

from workbench.errors import ModelNotLoadedError
from workbench.runtime import GenerationParams, LoadSpec, generate
from workbench.runtime.idle import EVENT_KIND, IdleWatcher, ensure_watcher, idle_notices

IDLE_S = 1800.0


def test_unloads_after_the_limit_and_not_before(registry, events):
    m = registry.load(LoadSpec("tiny-llama"))
    watcher = registry.idle_watcher = IdleWatcher(registry, IDLE_S)
    t0 = m.last_used
    assert watcher.check(now=t0 + IDLE_S - 1) == []
    assert m.loaded
    generate(m, "Hello", GenerationParams(max_new_tokens=2, temperature=0))  # use resets the clock
    t1 = m.last_used
    assert t1 >= t0
    assert watcher.check(now=t1 + IDLE_S - 1) == []
    [done] = watcher.check(now=t1 + IDLE_S + 1)
    assert done.name == m.name
    assert done.idle_s == pytest.approx(IDLE_S + 1)
    assert done.freed_bytes == m.footprint_bytes
    assert not m.loaded
    assert registry.list() == []
    assert done.message == "tiny-llama unloaded after 30 min idle: load again to continue"
    [event] = events.of(EVENT_KIND)
    assert event.model == m.name
    assert event.message == done.message
    assert event.data["limit_s"] == IDLE_S
    assert events.of("unload")  # the ordinary unload mark as well
    with pytest.raises(ModelNotLoadedError, match="unloaded after 30 min idle: load again to continue"):
        generate(m, "Hello")
    assert idle_notices(registry) == [done]
    assert idle_notices(registry, since_s=done.time_s) == []


def test_a_generating_model_is_busy_not_idle(registry):
    m = registry.load(LoadSpec("tiny-llama"))
    watcher = IdleWatcher(registry, IDLE_S)
    holding, done = threading.Event(), threading.Event()

    def generating() -> None:  # what a long generation does: hold the model's lock
        with m.lock:
            holding.set()
            done.wait(timeout=60)

    t = threading.Thread(target=generating)
    t.start()
    assert holding.wait(timeout=60)
    busy_at = m.last_used + 5 * IDLE_S
    try:
        assert watcher.check(now=busy_at) == []
        assert m.loaded
    finally:
        done.set()
        t.join(timeout=60)
    # Idle counts from when it was last seen busy, not from the generation's start.
    assert watcher.check(now=busy_at + IDLE_S - 1) == []
    assert m.loaded
    assert [u.name for u in watcher.check(now=busy_at + IDLE_S + 1)] == [m.name]


def test_the_setting_starts_a_watcher_on_load(registry, monkeypatch):
    from workbench.config import reset_settings

    assert ensure_watcher(registry) is None  # off by default
    monkeypatch.setenv("WORKBENCH_IDLE_UNLOAD_S", str(IDLE_S))
    reset_settings()
    registry.load(LoadSpec("tiny-llama"))
    watcher = registry.idle_watcher
    try:
        assert watcher.running
        assert watcher.idle_s == IDLE_S
        assert watcher.interval_s == 60.0
        assert ensure_watcher(registry) is watcher
    finally:
        watcher.stop()
    assert not watcher.running


def test_idle_unload_releases_the_gpu_lease(fake_nvml, clean_devices, registry, monkeypatch):
    from fakes.fake_pynvml import FakeGpu
    from workbench.devices.leases import list_leases
    from workbench.runtime import loader

    fake_nvml([FakeGpu(memory_total_bytes=24 * 2**30)], torch=True)
    real_load = loader.load

    def weights_on_the_fake_gpu(entry, spec, **kw):
        out = real_load(entry, spec.with_(devices=("cpu",)), device_map="cpu", max_memory=None)
        out.placement = {"cuda:0": out.footprint_bytes}
        return out

    monkeypatch.setattr(loader, "load", weights_on_the_fake_gpu)
    m = registry.load(LoadSpec("tiny-llama", devices=("cuda:0",)))
    assert [x.model for x in list_leases()] == ["tiny-llama"]
    IdleWatcher(registry, 60).check(now=m.last_used + 61)
    assert list_leases() == []
