"""The lab extension in a real JupyterLab: the status-bar meter on a machine without GPUs, and its panel.

The extension and the server extension are the installed ones (``make setup``
builds the labextension and installs both with the package), as a user gets them.
"""

from __future__ import annotations

import os
import re
import sys
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


def test_status_bar_meter_shows_cpu_and_ram_and_opens_its_panel(
        lab_server: LabServer, chromium_page, tmp_path: Path) -> None:
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
    for heading in ("Devices", "Loaded models", "Leases", "Processes holding GPU memory"):
        assert heading in body
    assert "CPU / RAM" in body and "No GPU:" in body and "No model holds a GPU lease." in body
    shot = tmp_path / "gpu-meter.png"
    page.screenshot(path=str(shot))
    save_artifact(shot, "gpu-meter.png")
