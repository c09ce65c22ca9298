"""A Workbench view whose kernel session is gone says so in a real JupyterLab, and says what to run.

The app is shown and the kernel restarted with the page open: the labextension's notice
(extensions/gpu-meter/src/gone.ts) must be drawn under the dead app, worded as the Python side
words it (workbench.ui.display.gone_notice), and nowhere else. Saved and reloaded, the widget
renderer finds no model for the saved view ("model not found"): the notice is in that output. Then what the notice says to run
must work: running the cells again brings the app back there and the notice goes. Last, closing
the app with ``wb.close()`` while the page is open puts the notice where the view was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.ui.display import gone_notice

from .conftest import LabServer, save_artifact
from .test_start_here import _STATUS_IDLE, _button, _run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Every notice on the page: its text, its output's text and its cell's code.
_NOTICES = """() => [...document.querySelectorAll('.jp-WorkbenchGone')].map(n => ({
  notice: n.innerText.trim(),
  output: n.closest('.jp-OutputArea-child').innerText,
  cell: n.closest('.jp-Cell').querySelector('.jp-InputArea .cm-content').innerText}))"""
_APP_SHOWN = "() => document.querySelectorAll('.workbench-app .lm-TabBar-tab').length >= 6"
_TITLES = ["Store", "Load", "Prompt", "Telemetry", "Quantization", "Serve"]


def test_gone_view_says_what_to_run(lab_server: LabServer, chromium_page, tmp_path: Path) -> None:
    try:
        _scenario(chromium_page, lab_server, tmp_path)
    except Exception:
        shot = tmp_path / "gone-view-failure.png"
        chromium_page.screenshot(path=str(shot))
        save_artifact(shot, "gone-view-failure.png")
        raise


def _scenario(page, lab_server: LabServer, tmp_path: Path) -> None:
    expected = gone_notice("Workbench")
    page.goto(lab_server.lab_url("00-start-here.ipynb"), wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    page.wait_for_function(_STATUS_IDLE, timeout=90_000)
    _run_all(page)
    _button(page, "Load").wait_for(state="visible", timeout=180_000)
    page.wait_for_function(_STATUS_IDLE, timeout=180_000)
    assert page.evaluate(_NOTICES) == []  # a live view has none

    # The kernel restarts with the page open: the app stays drawn, dead, and the notice says so there.
    page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()")
    page.wait_for_function(f"() => ({_NOTICES})().length > 0", timeout=60_000)
    notices = page.evaluate(_NOTICES)
    assert [n["notice"] for n in notices] == [expected], notices
    assert "wb = Workbench()" in notices[0]["cell"], notices
    page.wait_for_function(_STATUS_IDLE, timeout=120_000)

    # Saved with the view's output and reloaded: the new kernel has no such widget.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !document.querySelector('.jp-mod-dirty')", timeout=60_000)
    page.reload(wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=120_000)
    page.wait_for_function(_STATUS_IDLE, timeout=120_000)
    page.wait_for_function(f"() => ({_NOTICES})().length > 0", timeout=120_000)
    shot = tmp_path / "gone-view.png"
    page.screenshot(path=str(shot))
    save_artifact(shot, "gone-view.png")
    notices = page.evaluate(_NOTICES)
    # One notice, in the output of the cell that showed `wb`, beside the renderer's error.
    assert [n["notice"] for n in notices] == [expected], notices
    assert "wb = Workbench()" in notices[0]["cell"], notices
    assert "model not found" in notices[0]["output"], notices
    assert "Run this cell again" in expected and "kernel restarted" in expected

    # What it says to run works: the cells run again, the app is back in that output, the notice gone.
    page.locator(".jp-NotebookPanel .jp-Cell .jp-InputPrompt").first.click()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_APP_SHOWN, timeout=180_000)
    titles = page.locator(".workbench-app .lm-TabBar-tab").all_inner_texts()
    assert [t.strip() for t in titles] == _TITLES
    page.wait_for_function(f"() => ({_NOTICES})().length === 0", timeout=30_000)
    page.wait_for_function(_STATUS_IDLE, timeout=180_000)

    # Closed while on show: the renderer hides the view, and the notice takes its place, no reload.
    page.locator(".jp-NotebookPanel .jp-Cell").last.locator(".jp-InputPrompt").click()
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:insert-cell-below')")
    page.keyboard.press("Enter")
    page.keyboard.type("wb.close()")
    page.keyboard.press("Shift+Enter")
    page.wait_for_function(f"() => ({_NOTICES})().length > 0", timeout=60_000)
    assert not page.evaluate(_APP_SHOWN)
    notices = page.evaluate(_NOTICES)
    assert [n["notice"] for n in notices] == [expected], notices
    assert "wb = Workbench()" in notices[0]["cell"], notices
