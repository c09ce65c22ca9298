"""The Workbench app in a real JupyterLab and Chromium: it fits its cell, and a study draws its points.

Widths are read where a user sees them, with JupyterLab's file browser open, at 1280 and 1600 px:
the app, the tab on show and every widget label in it have ``scrollWidth <= clientWidth`` (a label is not cut); an element that would draw a
horizontal scrollbar is a table's own container (``.workbench-table-scroll``), at most one a tab;
no plot is wider than its box (a cut plot). The Quantization tab shows no plot before a study, and its figures are read after the smallest
finished study (traces and points in each ``.js-plotly-plot``'s ``data``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import LabServer, save_artifact
from .test_app_in_browser import _plots, _tab
from .test_start_here import _STATUS_IDLE, _button, _run_all

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TABS = ("Store", "Load", "Prompt", "Telemetry", "Quantization", "Serve")
WIDTHS_PX = (1280, 1600)

# What does not fit in the tab on show: a list of sentences (empty when everything fits).
_LAYOUT = """() => {
  const app = document.querySelector('.workbench-app');
  const over = el => el.scrollWidth - el.clientWidth;
  const name = el => el.tagName.toLowerCase() + [...el.classList].map(c => '.' + c).join('')
                     + (el.innerText ? ` "${el.innerText.trim().slice(0, 40)}"` : '');
  const out = [];
  if (over(app) > 0) out.push(`the app overflows by ${over(app)} px`);
  const cell = app.closest('.jp-OutputArea-output');
  if (cell && over(cell) > 0) out.push(`the app's output area overflows by ${over(cell)} px`);
  const panel = [...app.querySelectorAll('.workbench-panel')].find(p => p.offsetParent !== null);
  if (!panel) return ['no tab on show'];
  if (over(panel) > 0) out.push(`the tab overflows by ${over(panel)} px`);
  const visible = el => el.offsetParent !== null || el === panel;
  const scrollers = [app, ...app.querySelectorAll('*')].filter(el => visible(el) && over(el) > 0
      && ['auto', 'scroll'].includes(getComputedStyle(el).overflowX));
  const tables = scrollers.filter(el => el.classList.contains('workbench-table-scroll'));
  scrollers.filter(el => !tables.includes(el))
      .forEach(el => out.push(`${name(el)} scrolls sideways by ${over(el)} px`));
  if (tables.length > 1) out.push(`${tables.length} tables scroll sideways`);
  // A label cut by its widget (ipywidgets clips with an ellipsis: the Serve tab's checkbox read "...the ker...").
  panel.querySelectorAll('.widget-label, .widget-label-basic').forEach(l => {
    if (l.offsetParent !== null && l.clientWidth > 0 && l.scrollWidth > l.clientWidth)
      out.push(`label "${l.innerText.trim().slice(0, 40)}" is cut by ${l.scrollWidth - l.clientWidth} px`);
  });
  const right = panel.getBoundingClientRect().right;
  panel.querySelectorAll('.js-plotly-plot').forEach(g => {
    const box = g.closest('.workbench-figure') || g.parentElement;
    const w = g.getBoundingClientRect().width, room = box.clientWidth;
    if (w > room + 1) out.push(`plot "${(g.layout?.title?.text || '').slice(0, 30)}" is ${Math.round(w - room)} px wider than its box`);
    if (g.getBoundingClientRect().right > right + 1) out.push(`plot "${(g.layout?.title?.text || '').slice(0, 30)}" runs past the tab`);
  });
  return out;
}"""


def _layout_problems(page) -> list[str]:
    problems = []
    for width in WIDTHS_PX:
        page.set_viewport_size({"width": width, "height": 1500})
        for title in TABS:
            _tab(page, title)
            page.wait_for_timeout(700)  # plots relayout to the new width
            problems += [f"{width} px, {title}: {p}" for p in page.evaluate(_LAYOUT)]
    return problems


def _open_app(page, lab_server: LabServer) -> None:
    page.goto(lab_server.lab_url("00-start-here.ipynb"), wait_until="domcontentloaded")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
    page.wait_for_function(_STATUS_IDLE, timeout=90_000)
    # The file browser open beside the notebook, as a user has it.
    page.evaluate("() => window.jupyterapp.shell.activateById('filebrowser')")
    page.locator(".jp-FileBrowser").first.wait_for(state="visible", timeout=30_000)


def _study(page) -> None:
    """The smallest study (one variant, float32: the quickest on a CPU; the fewest evaluation tokens)
    from the Quantization tab. (bfloat16's scoring took over 10 minutes beside other work on 2 cores.)"""
    _tab(page, "Quantization")
    panel = page.locator(".workbench-panel:visible").first
    for box in panel.locator(".widget-checkbox").all():
        label = box.inner_text().strip()
        want = label == "float32"
        checkbox = box.locator("input[type=checkbox]")
        if checkbox.is_checked() != want:
            checkbox.click()
    tokens = panel.locator(".widget-text", has=page.locator("label", has_text="eval tokens")).locator("input")
    tokens.fill("32")
    tokens.press("Enter")
    _button(page, "Run study").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.workbench-panel')].some(p => p.offsetParent !== null"
        " && /Recommendation/.test(p.innerText))", timeout=600_000)


def test_app_fits_its_cell_and_draws_a_finished_study(
        lab_server: LabServer, chromium_page, tmp_path: Path) -> None:
    page = chromium_page
    try:
        _scenario(page, lab_server)
    except Exception:
        shot = tmp_path / "layout-failure.png"
        page.screenshot(path=str(shot))
        save_artifact(shot, "layout-failure.png")
        raise


def _scenario(page, lab_server: LabServer) -> None:
    _open_app(page, lab_server)
    _run_all(page)
    _button(page, "Load").wait_for(state="visible", timeout=180_000)
    page.wait_for_function(_STATUS_IDLE, timeout=180_000)

    # Before a study: what to do, and no empty plots.
    _tab(page, "Quantization")
    shown = page.locator(".workbench-app .workbench-panel:visible").first
    assert "No study yet: choose precisions and Run" in shown.inner_text()
    assert shown.locator(".js-plotly-plot:visible").count() == 0
    # A finished study: both figures draw its point (one variant: one point, one bar).
    _study(page)
    quality = _plots(page, "Memory vs quality")
    speed = _plots(page, "Decode speed")
    assert ([p["points"] for p in quality], [p["points"] for p in speed]) == ([[1]], [[1]])

    # A load, so that the Load tab shows its placement and footprint tables.
    _tab(page, "Load")
    _button(page, "Load").click()
    _button(page, "Next: chat with it in Prompt").wait_for(state="visible", timeout=240_000)

    problems = _layout_problems(page)
    assert problems == [], "\n".join(problems)
