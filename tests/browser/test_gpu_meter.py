"""The lab extension in a real JupyterLab: the status-bar meter on a machine without GPUs, and its panel
(which still draws what answered when one endpoint fails).

The extension and the server extension are the installed ones (``make setup``
builds the labextension and installs both with the package), as a user gets them.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from .conftest import LabServer, save_artifact

pytestmark = [pytest.mark.browser]

NAME = "llm-workbench-gpu-meter"


def _installed_labextension() -> Path | None:
    from jupyter_core.paths import jupyter_path

    for folder in jupyter_path("labextensions"):
        if (Path(folder) / NAME / "package.json").is_file():
            return Path(folder) / NAME
    return None


def test_the_labextension_is_installed() -> None:
    found = _installed_labextension()
    assert found is not None, f"{NAME} is not installed: `make setup` builds and installs it"
    assert list((found / "static").glob("remoteEntry.*.js"))
    # The same place `pip install` puts the wheel's shared data (not a per-user copy).
    assert str(found).startswith(sys.prefix) or "JUPYTER_PATH" in os.environ


def _kernel_holding_a_cpu_model(lab_server: LabServer) -> str:
    """Start a kernel through the server's REST API and load the seeded model on the CPU in it; its id."""
    from jupyter_client import BlockingKernelClient

    req = urllib.request.Request(f"{lab_server.url}/api/kernels?token={lab_server.token}", method="POST",
                                 data=json.dumps({"name": "python3"}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        kernel_id = json.load(r)["id"]
    # The server's runtime folder (conftest.lab_server: JUPYTER_RUNTIME_DIR under the test's home).
    connection = lab_server.root.parent / "home" / "runtime" / f"kernel-{kernel_id}.json"
    client = BlockingKernelClient()
    client.load_connection_file(str(connection))
    # jupyter_client calls a kernel dead when one heartbeat goes unanswered for 1 s: a kernel still
    # starting on a busy machine (load average 12 here) is not dead.
    client.hb_channel.time_to_dead = 30.0
    client.start_channels()
    try:
        client.wait_for_ready(timeout=120)
        reply = client.execute_interactive(
            "from workbench.runtime import LoadSpec, get_registry\n"
            "from workbench.store.importer import DEFAULT_MODEL_NAME\n"
            "get_registry().load(LoadSpec(DEFAULT_MODEL_NAME, devices=('cpu',)))", timeout=240)
        assert reply["content"]["status"] == "ok", reply["content"]
    finally:
        client.stop_channels()
    return kernel_id


def test_status_bar_meter_shows_cpu_and_ram_and_opens_its_panel(
        lab_server: LabServer, chromium_page, tmp_path: Path) -> None:
    from workbench.store.importer import DEFAULT_MODEL_NAME

    kernel_id = _kernel_holding_a_cpu_model(lab_server)
    page = chromium_page
    page.goto(f"{lab_server.url}/lab?reset&token={lab_server.token}", wait_until="domcontentloaded")
    page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=60_000)
    meter = page.locator("#jp-main-statusbar #jp-WorkbenchMeter")
    meter.wait_for(state="visible", timeout=30_000)
    # No GPU on this machine: CPU use and RAM used/total, from the server's sampler.
    page.wait_for_function(
        "() => /^CPU \\d+% RAM [\\d.]+\\/[\\d.]+ GiB$/.test("
        "document.querySelector('#jp-WorkbenchMeter')?.textContent || '')", timeout=30_000)
    text = meter.inner_text()
    total_gib = float(re.search(r"/([\d.]+) GiB", text).group(1))
    assert total_gib == round(psutil.virtual_memory().total / 2**30, 1)
    used_gib = float(re.search(r"RAM ([\d.]+)/", text).group(1))
    assert 0 < used_gib < total_gib

    meter.click()
    panel = page.locator(".jp-WorkbenchPanel")
    panel.wait_for(state="visible", timeout=15_000)
    page.wait_for_function(
        "() => (document.querySelector('.jp-WorkbenchPanel')?.innerText || '').includes('Processes holding GPU memory')",
        timeout=15_000)
    body = panel.inner_text()
    for heading in ("Devices", "Your kernels", "Loaded models", "Leases", "Processes holding GPU memory"):
        assert heading in body
    assert "No GPU:" in body
    assert "CPU / RAM" not in body
    # CPU use and RAM on rows of their own.
    rows = [r.inner_text() for r in panel.locator("tr").all()]
    assert any(r.startswith("CPU\t") and "%" in r for r in rows), rows
    assert any(r.startswith("RAM\t") and "GiB" in r for r in rows), rows
    # The kernel's CPU model is listed, with its kernel, on the CPU.
    model_rows = [r for r in rows if r.startswith(DEFAULT_MODEL_NAME)]
    assert len(model_rows) == 1, rows
    assert "\tcpu\t" in model_rows[0], rows
    assert kernel_id[:8] in model_rows[0], rows
    assert "No model is loaded" not in body
    assert panel.locator(".jp-WorkbenchPanel-error").count() == 0
    shot = tmp_path / "gpu-meter.png"
    page.screenshot(path=str(shot))
    save_artifact(shot, "gpu-meter.png")

    # /kernels fails (a 500 from the server): the panel still draws what the other endpoints answered,
    # and one line names the endpoint that did not.
    page.keyboard.press("Escape")
    if panel.count():
        page.locator("#jp-main-dock-panel").click(position={"x": 20, "y": 20})
    panel.wait_for(state="detached", timeout=15_000)
    page.route("**/workbench/api/kernels*", lambda route: route.fulfill(status=500, body="kernels failed"))
    meter.click()
    panel.wait_for(state="visible", timeout=15_000)
    page.wait_for_function(
        "() => (document.querySelector('.jp-WorkbenchPanel')?.innerText || '').includes('Processes holding GPU memory')",
        timeout=15_000)
    body = panel.inner_text()
    errors = [e.inner_text() for e in panel.locator(".jp-WorkbenchPanel-error").all()]
    assert len(errors) == 1, errors
    assert errors[0].startswith("/workbench/api/kernels did not answer: 500"), errors
    rows = [r.inner_text() for r in panel.locator("tr").all()]
    assert any(r.startswith("CPU\t") and "%" in r for r in rows), rows  # the devices part, from /telemetry
    for heading in ("Devices", "Leases", "Processes holding GPU memory"):
        assert heading in body
    assert "Your kernels" not in body
    assert "Loaded models" not in body
