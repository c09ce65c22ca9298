"""Live/static detection and the static HTML kit."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.errors import ConfigError
from workbench.ui import display


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WORKBENCH_DISPLAY", "JPY_SESSION_NAME", "VSCODE_PID"):
        monkeypatch.delenv(var, raising=False)


def test_static_without_a_front_end() -> None:
    assert display.display_mode() == "static"


@pytest.mark.parametrize("var", ["JPY_SESSION_NAME", "VSCODE_PID"])
def test_live_under_a_jupyter_session_or_vscode(monkeypatch: pytest.MonkeyPatch, var: str) -> None:
    monkeypatch.setenv(var, "x")
    assert display.display_mode() == "live"


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JPY_SESSION_NAME", "nb.ipynb")
    monkeypatch.setenv("WORKBENCH_DISPLAY", "static")
    assert display.display_mode() == "static"
    monkeypatch.setenv("WORKBENCH_DISPLAY", "bogus")
    with pytest.raises(ConfigError, match="bogus"):
        display.display_mode()


def test_html_table_escapes_cells_and_headers() -> None:
    html = display.html_table(["<h>"], [["<script>alert(1)</script>"], [None]])
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "&lt;h&gt;" in html
    assert "&mdash;" in html


def test_plotlyjs_is_inlined_once_per_page() -> None:
    import plotly.graph_objects as go

    display.reset_plotlyjs()
    first = display.figure_html(go.Figure(go.Scatter(y=[1, 2])))
    widget = go.FigureWidget(go.Scatter(y=[3, 4]))
    second = display.figure_html(widget)
    widget.close()  # a live widget stays in the kernel's reload reply
    assert "plotly.js v" in first
    assert len(first) > 1_000_000
    assert "plotly.js v" not in second
    assert "Plotly.newPlot" in second
    assert len(second) < 50_000
    assert "cdn.plot.ly" not in second
    display.reset_plotlyjs()


def test_the_labextension_looks_for_the_mark_live_bundles_carry() -> None:
    # The notice where a view cannot come back (tests/browser/test_gone_view.py draws it) keys on
    # this mime type in both languages; a rename on one side only would silently drop the notice.
    source = (Path(__file__).resolve().parents[2] / "extensions" / "gpu-meter" / "src" / "gone.ts").read_text()
    assert f"export const VIEW_MIME = '{display.VIEW_MIME}';" in source
