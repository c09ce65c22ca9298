"""Live or static: how a panel decides what to put in a cell's output, and the static HTML kit.

A live front end (JupyterLab, Notebook 7, VS Code) renders ipywidgets. A report
(``jupyter nbconvert --execute --to html``, nbviewer, GitHub) does not: saved
widget state needs require.js and the widget renderer from CDNs and comes out as
an empty box offline, and anything a background thread changed after the cell
finished is missing anyway. So every panel has a *static twin* (HTML tables and
text, plus plain Plotly figures with plotly.js inlined once per page), and
:func:`display_mode` decides which one a cell shows.

Detection, in order:

1. ``WORKBENCH_DISPLAY=live`` or ``static`` forces a mode.
2. ``JPY_SESSION_NAME`` is set: jupyter_server's session manager starts the kernel
   for a notebook open in a browser (nbclient and ``nbconvert --execute`` start
   kernels themselves and do not set it).
3. ``VSCODE_PID`` is set: a VS Code notebook.
4. Otherwise static.

Example:
    >>> import os
    >>> os.environ["WORKBENCH_DISPLAY"] = "static"
    >>> display_mode()
    'static'
    >>> html_table(["name", "size"], [["<tiny>", "1 MiB"]]).count("&lt;tiny&gt;")
    1
    >>> del os.environ["WORKBENCH_DISPLAY"]
"""

from __future__ import annotations

import html
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from ..errors import ConfigError

Mode = Literal["live", "static"]
_MODES = ("live", "static")


def display_mode() -> Mode:
    """``"live"`` when a front end that renders widgets is attached, else ``"static"``.

    Read at display time (not import time), so a test or a report can switch it
    with ``WORKBENCH_DISPLAY``.

    Raises:
        ConfigError: ``WORKBENCH_DISPLAY`` holds something other than live, static or auto.

    Example:
        >>> display_mode() in ("live", "static")
        True
    """
    forced = os.environ.get("WORKBENCH_DISPLAY", "").strip().lower()
    if forced in _MODES:
        return forced  # type: ignore[return-value]
    if forced not in ("", "auto"):
        raise ConfigError(f"WORKBENCH_DISPLAY={forced!r} is not a display mode", hint="use live, static or auto")
    if os.environ.get("JPY_SESSION_NAME") or os.environ.get("VSCODE_PID"):
        return "live"
    return "static"


def is_live() -> bool:
    """Shorthand for ``display_mode() == "live"``."""
    return display_mode() == "live"


# --- HTML building blocks -------------------------------------------------------------------

# Inline styles only: nbconvert's lab template and JupyterLab both strip nothing
# from inline styles, and a report must look the same with no stylesheet of ours.
_TABLE_STYLE = "border-collapse:collapse;font-size:13px;margin:4px 0 10px 0"
_CELL_STYLE = "border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top"
_HEAD_STYLE = _CELL_STYLE + ";background:#f6f8fa;font-weight:600"

BANNER_STYLES = {
    "error": "background:#fdecea;border:1px solid #f5c2c0;color:#7a1c17",
    "warning": "background:#fff8e1;border:1px solid #f3d98b;color:#6b5000",
    "info": "background:#e8f1fb;border:1px solid #b6d1f2;color:#0b3d70",
    "ok": "background:#e9f7ef;border:1px solid #b7e1c6;color:#145a32",
}


# The mark on a live view's output: JupyterLab's workbench extension (extensions/gpu-meter, src/gone.ts)
# looks for this key in an output's bundle, and where the widget renderer cannot draw that view (its model
# is gone from the kernel: "model not found" after a reload, or a closed view) it writes ``gone`` there.
# Front ends without the extension ignore a mime type they have no renderer for; nbformat accepts any
# ``+json`` type holding an object.
VIEW_MIME = "application/vnd.llm-workbench.view+json"


def gone_notice(title: str) -> str:
    """What an output says where a live view of ``title`` cannot come back, and what to run.

    Example:
        >>> gone_notice("Workbench").startswith("This Workbench view belongs to a kernel session")
        True
    """
    return (f"This {title} view belongs to a kernel session that is gone (the kernel restarted, or the "
            f"view was closed), so it cannot come back here. Run this cell again for a live one; after a "
            f"kernel restart run the cells above it first (Run > Run All Above Selected Cell).")


def mimebundle(widget: Callable[[], Any], twin_html: Callable[[], str], static: Callable[[], Any],
               include: Any = None, exclude: Any = None, *, title: str) -> dict[str, Any]:
    """What a panel shows in a notebook: the live widget, or its static twin in a report.

    Live, the bundle also carries the twin without plots as ``text/html``, so a saved
    notebook still says something where widgets cannot render, and :data:`VIEW_MIME`
    (``{"title": title, "gone": gone_notice(title)}``), so JupyterLab says what to run
    where the view cannot come back.
    """
    if display_mode() == "live":
        bundle = dict(widget()._repr_mimebundle_(include=include, exclude=exclude) or {})
        bundle["text/html"] = twin_html()
        bundle[VIEW_MIME] = {"title": title, "gone": gone_notice(title)}
        return bundle
    return static()._repr_mimebundle_()


def esc(value: Any) -> str:
    """``html.escape(str(value))``; ``None`` becomes an em dash. Use on anything from a model folder."""
    if value is None:
        return "&mdash;"
    return html.escape(str(value), quote=True)


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_columns: Iterable[int] = (),
               caption: str | None = None) -> str:
    """A small HTML table; every cell is escaped unless its column index is in ``raw_columns``.

    Args:
        headers: column titles (escaped).
        rows: cell values; ``None`` shows as an em dash.
        raw_columns: columns whose cells are already-safe HTML (built by this module).
        caption: a title above the table (escaped).

    Example:
        >>> "<td" in html_table(["a"], [[1]])
        True
    """
    raw = set(raw_columns)
    # Its own scrolling container: a table wider than the tab scrolls here, not the tab (ui/style.py).
    out = ['<div class="workbench-table-scroll" style="max-width:100%;overflow-x:auto">',
           f'<table style="{_TABLE_STYLE}">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:600;padding:2px 0">{esc(caption)}</caption>')
    out.append("<thead><tr>" + "".join(f'<th style="{_HEAD_STYLE}">{esc(h)}</th>' for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = "".join(
            f'<td style="{_CELL_STYLE}">{cell if i in raw and cell is not None else esc(cell)}</td>'
            for i, cell in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def banner_html(message: str, kind: str = "error") -> str:
    """A coloured one-message box (the message is escaped). ``kind``: error, warning, info, ok."""
    style = BANNER_STYLES.get(kind, BANNER_STYLES["info"])
    return f'<div style="{style};padding:6px 10px;border-radius:4px;margin:4px 0">{esc(message)}</div>'


def section_html(title: str, body: str, level: int = 3) -> str:
    """A heading (escaped) followed by already-built HTML."""
    return f'<div class="workbench-static"><h{level} style="margin:8px 0 4px 0">{esc(title)}</h{level}>{body}</div>'


def pre_html(text: str) -> str:
    """Preformatted, wrapped, escaped text: generated answers, prompts."""
    return (f'<pre style="white-space:pre-wrap;word-break:break-word;background:#f6f8fa;padding:6px 8px;'
            f'border-radius:4px;margin:2px 0 8px 0">{esc(text)}</pre>')


# --- Plotly, offline --------------------------------------------------------------------------

_plotlyjs_lock = threading.Lock()
_plotlyjs_done = False
_fig_ids = itertools.count(1)


def reset_plotlyjs() -> None:
    """Make the next static figure embed plotly.js again (a new page, or its first cell was cleared)."""
    global _plotlyjs_done
    with _plotlyjs_lock:
        _plotlyjs_done = False


def figure_html(fig: Any, *, height: int | None = None) -> str:
    """A Plotly figure as HTML that renders with no kernel and no network.

    The first figure of the kernel's life carries plotly.js inline (about 4.8 MB,
    no CDN); later ones only call ``Plotly.newPlot``, because the page already
    has it. Plotly's ``notebook_connected`` renderer would point at a CDN and its
    default mimetype output is dropped by nbconvert's HTML exporter, hence this.

    Args:
        fig: a ``plotly.graph_objects.Figure`` (a ``FigureWidget`` is copied to one).
        height: pixels; default the figure's own.

    Example:
        >>> import plotly.graph_objects as go
        >>> "Plotly.newPlot" in figure_html(go.Figure())
        True
    """
    import plotly.graph_objects as go

    global _plotlyjs_done
    if not isinstance(fig, go.Figure) or isinstance(fig, go.FigureWidget):
        fig = go.Figure(fig)
    with _plotlyjs_lock:
        include = not _plotlyjs_done
        _plotlyjs_done = True
    return fig.to_html(
        include_plotlyjs=include,
        full_html=False,
        div_id=f"workbench-fig-{os.getpid()}-{next(_fig_ids)}",
        default_height=height or "100%",
        config={"displaylogo": False, "responsive": True},
    )


class StaticHTML:
    """HTML that shows itself in a notebook output (``_repr_html_``) and as text elsewhere.

    Example:
        >>> StaticHTML("<b>hi</b>", text="hi")._repr_html_()
        '<b>hi</b>'
    """

    def __init__(self, html_text: str, text: str = "") -> None:
        self.html = html_text
        self.text = text

    def _repr_html_(self) -> str:
        return self.html

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return {"text/html": self.html, "text/plain": self.text or "<static workbench view>"}

    def __repr__(self) -> str:
        return self.text or "<static workbench view>"
