"""The Load panel shows each GPU's leases and the processes holding its memory, and an idle-unload banner."""

from __future__ import annotations

import os
import pwd

import pytest

from fakes.fake_pynvml import FakeGpu, FakeProcess
from workbench.devices.leases import LeaseBook
from workbench.runtime import LoadSpec, Registry
from workbench.runtime.idle import IdleWatcher
from workbench.ui import LoadPanel

GiB = 2**30


@pytest.fixture
def registry(tiny_store):
    reg = Registry()
    yield reg
    reg.unload_all()


def test_gpu_rows_show_leases_and_processes(tiny_store, fake_nvml, clean_devices, static_mode):
    fake_nvml([FakeGpu(memory_total_bytes=24 * GiB, processes=[FakeProcess(os.getpid(), 3 * GiB)])], torch=True)
    LeaseBook(hub_user="alice", heartbeat_s=None).acquire("cuda:0", 10 * GiB, "Mixtral-8x7B", hold=False)
    panel = LoadPanel(registry=Registry())
    html = panel.static_html()
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert f"cuda:0: 10.0 GiB leased by {me} (hub user alice) (Mixtral-8x7B, kernel {os.getpid()}, idle 0 s)" in html
    assert f"pid {os.getpid()}" in html
    assert "3.0 GiB" in html
    label = panel.device_html(next(d for d in panel.device_records if d.name == "cuda:0"))
    assert f"leases: cuda:0: 10.0 GiB leased by {me} (hub user alice)" in label
    assert "held by:" in label


def test_idle_unload_banner(registry):
    panel = LoadPanel(registry=registry)
    _ = panel.widget
    m = registry.load(LoadSpec("tiny-llama"))
    assert panel.check_idle_unloads() == []
    registry.idle_watcher = IdleWatcher(registry, 1800)
    registry.idle_watcher.check(now=m.last_used + 1801)
    [notice] = panel.check_idle_unloads()
    assert panel.message == ("tiny-llama unloaded after 30 min idle: load again to continue", "warning")
    assert "unloaded after 30 min idle: load again to continue" in panel.outputs.banner.value
    assert "No model loaded" in panel.outputs.loaded.value
    assert panel.check_idle_unloads() == []  # shown once
    panel.close()
