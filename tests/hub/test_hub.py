"""Two users on a real JupyterHub share a store and a (fake) GPU through leases.

alice and bob each start a server; both list the team's shared store over the
workbench REST API behind the hub's proxy; alice's kernel takes a lease on the
GPU; bob sees it (REST, /metrics and the status-bar panel in a browser) and his
kernel is refused on that GPU with alice named; alice's server is stopped and
her lease is reclaimed, after which bob's kernel gets the GPU.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from browser.conftest import launch_chromium, save_artifact

from .conftest import FAKE_GPUS, PASSWORD, GiB, Hub
from .kernel import run_in_kernel

pytestmark = [pytest.mark.hub, pytest.mark.browser]

TAKE = """
from workbench.devices.leases import acquire
lease = acquire("cuda:0", 20 * 2**30, "tiny-llama")
print(lease.hub_user, lease.gpu_uuid, lease.pid)
"""

TRY = """
from workbench.devices.leases import acquire, release
from workbench.errors import InsufficientMemoryError
try:
    mine = acquire("cuda:0", 10 * 2**30, "bobs-model")
except InsufficientMemoryError as exc:
    print("REFUSED", exc)
else:
    print("GRANTED", mine.hub_user, mine.reserved_bytes)
    release(mine)
"""


def _leases(hub: Hub, user: str) -> list[dict]:
    status, doc = hub.user_get(user, "workbench/api/leases")
    assert status == 200, (status, doc)
    return doc["leases"]


def _bob_sees_the_status_bar(hub: Hub, tmp_path) -> None:
    """Log in as bob in Chromium; the meter shows the fake GPU and the panel names alice's lease."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{hub.url}/hub/login", wait_until="domcontentloaded")
            page.fill("#username_input", "bob")
            page.fill("#password_input", PASSWORD)
            page.click("#login_submit")
            page.wait_for_url(re.compile(r".*/user/bob/lab.*"), timeout=90_000)
            page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=90_000)
            # The meter fetched through /user/bob/ (the hub's base URL): the fake 24 GiB GPU at 37 %.
            try:
                page.wait_for_function(
                    "() => /^cuda:0 37% [\\d.]+\\/24\\.0 GiB$/.test("
                    "document.querySelector('#jp-WorkbenchMeter')?.textContent || '')", timeout=60_000)
            except Exception:
                page.screenshot(path=str(tmp_path / "hub-failed.png"))
                save_artifact(tmp_path / "hub-failed.png", "hub-failed.png")
                raise
            page.locator("#jp-WorkbenchMeter").click()
            page.wait_for_function(
                "() => (document.querySelector('.jp-WorkbenchPanel')?.innerText || '').includes('alice')",
                timeout=30_000)
            body = page.locator(".jp-WorkbenchPanel").inner_text()
            assert "tiny-llama" in body
            assert "20.0 GiB" in body
            shot = tmp_path / "hub-gpu-meter.png"
            page.screenshot(path=str(shot))
            save_artifact(shot, "hub-gpu-meter.png")
        finally:
            browser.close()


def test_two_users_share_the_store_and_a_leased_gpu(hub: Hub, tmp_path) -> None:
    hub.start_server("alice")
    hub.start_server("bob")

    # Both see the team's read-only shared store (and nothing of each other's own stores).
    for user in ("alice", "bob"):
        status, store = hub.user_get(user, "workbench/api/store")
        assert status == 200, (status, store, hub.log_tail())
        [entry] = store
        assert entry["name"] == "tiny-llama"
        assert entry["status"] == "ok"
        assert entry["root"] == str(hub.shared_root)
        assert entry["writable"] is False

    # The hub's authentication guards the endpoints: no token, or another user's token, gets no data.
    status, body = hub.request("GET", "/user/bob/workbench/api/leases")
    assert status in (302, 403)
    assert "lease_dir" not in json.dumps(body)
    status, body = hub.user_get("bob", "workbench/api/store", as_user="alice")
    assert status == 403
    assert "tiny-llama" not in json.dumps(body)

    # Both servers see the fake GPU.
    status, devices = hub.user_get("bob", "workbench/api/devices")
    assert status == 200
    [gpu] = [d for d in devices["devices"] if d["name"] == "cuda:0"]
    assert gpu["memory_total_bytes"] == FAKE_GPUS[0]["memory_total_bytes"]

    # alice's kernel takes a lease for 20 of the GPU's 24 GiB.
    alice_kernel, result = run_in_kernel(hub, "alice", TAKE)
    assert result["status"] == "ok", (result, hub.log_tail())
    owner, gpu_uuid, kernel_pid = result["stdout"].split()
    assert owner == "alice"
    assert gpu_uuid == gpu["uuid"]

    # bob sees it through his own server's REST endpoint and /metrics.
    [lease] = _leases(hub, "bob")
    # Every hub user here runs as the hub's own uid (the simple spawner): the owner is that uid's name and
    # the hub user a label (README, "Deploying on JupyterHub": give each user a uid of their own).
    assert (lease["hub_user"], lease["model"], lease["pid"]) == ("alice", "tiny-llama", int(kernel_pid))
    assert lease["uid"] == os.geteuid()
    assert lease["holder"] == f"{lease['owner']} (hub user alice)"
    assert lease["reserved_bytes"] == 20 * GiB
    assert lease["gpu_uuid"] == gpu["uuid"]
    status, metrics = hub.user_get("bob", "metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    [reserved] = families["workbench_gpu_lease_reserved_bytes"].samples
    assert reserved.value == 20 * GiB
    assert reserved.labels["hub_user"] == "alice"

    # ... and in JupyterLab's status bar, behind the hub's /user/bob/ base URL.
    _bob_sees_the_status_bar(hub, tmp_path)

    # bob's kernel asks for 10 GiB on the same GPU: refused, naming alice and her model.
    _, result = run_in_kernel(hub, "bob", TRY)
    assert result["status"] == "ok", result
    assert result["stdout"].startswith("REFUSED"), result
    assert "(hub user alice)" in result["stdout"]
    assert "tiny-llama" in result["stdout"]
    assert f"kernel {kernel_pid}" in result["stdout"]

    # alice's server stops (her kernel with it): the lease is released or reclaimed.
    hub.stop_server("alice")
    deadline = time.monotonic() + 60
    while _leases(hub, "bob") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _leases(hub, "bob") == []
    assert all('"hub_user": "alice"' not in p.read_text() for p in hub.lease_dir.glob("*.lease"))

    # Now bob gets the GPU.
    _, result = run_in_kernel(hub, "bob", TRY)
    assert result["stdout"].startswith("GRANTED bob"), result
