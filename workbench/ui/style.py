"""The panels' one stylesheet: how they fit the width of their cell, whatever that width is.

ipywidgets lays boxes out with flexbox and gives each box ``overflow: auto``, so anything a few
pixels too wide draws a scrollbar on the box, and on every box above it (the issue measured two to
four nested scrollbars under each tab, from 4 px: a ``width: 100%`` widget plus ipywidgets' 2 px
margin on each side). The rules, scoped to the workbench's own classes:

- a widget never grows past its column (``max-width``, margins counted), and a flex child may shrink
  below its content's width (``min-width: 0``: flex items default to their content's minimum);
- rows of controls wrap onto the next line instead of running past the tab;
- a table that really is wider scrolls in its own container (:func:`workbench.ui.display.html_table`
  wraps each table in ``.workbench-table-scroll``), never the tab;
- a ``width: 100%`` widget has no side margins (100% plus ipywidgets' margins is the 4 px);
- a plot's view is as wide as its box (``.workbench-figure``): plotly sizes a figure to its element,
  and an element sized by its content is 0 px wide when the view first draws, so plotly fell back to
  its default 700 px and the box cut it (the "Decode speed" chart cut at the right).

It travels inside each panel as a hidden HTML widget (:func:`style_widget`): a ``<style>`` element
applies to the page wherever it sits, so a panel shown alone (notebook 04's Telemetry) fits too.
"""

from __future__ import annotations

from typing import Any

#: Every rule is scoped to the panel's root (``.workbench-panel``) or the app's (``.workbench-app``).
CSS = """
.workbench-app, .workbench-panel { max-width: 100%; min-width: 0; }
.workbench-app .widget-box, .workbench-panel .widget-box { min-width: 0; max-width: 100%; }
.workbench-panel .jupyter-widgets:not(.widget-box) { min-width: 0; max-width: calc(100% - 2 * var(--jp-widgets-margin, 2px)); }
.workbench-panel .widget-hbox { flex-wrap: wrap; }
.workbench-panel .widget-html-content { min-width: 0; max-width: 100%; }
.workbench-table-scroll { max-width: 100%; overflow-x: auto; }
.workbench-app [style*="width: 100%"], .workbench-panel [style*="width: 100%"] { margin-left: 0 !important; margin-right: 0 !important; }
.workbench-figure > * { width: 100%; min-width: 0; max-width: 100%; }
"""


def style_widget() -> Any:
    """A hidden ``widgets.HTML`` holding :data:`CSS` (add it to a panel's root box)."""
    import ipywidgets as widgets

    w = widgets.HTML(f"<style>{CSS}</style>", layout=widgets.Layout(display="none"))
    w.add_class("workbench-style")
    return w
