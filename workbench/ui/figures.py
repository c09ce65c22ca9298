"""Live Plotly figures that show their data in every view: built whole, swapped whole.

Why this is our own code: plotly's ``FigureWidget`` syncs its whole state (``_widget_data``,
``_widget_layout``) only when it is constructed; every later change travels as a diff message
(addTraces, restyle, relayout) that a front end applies only if its model is listening when the
message arrives. On a busy machine the widget bundle (about 5 MB per figure) loads late, a
WebSocket misses pings and reconnects, a hidden tab's view is created later, or the page is
reloaded: the diffs are gone, and the view shows what the constructor had (with traces added
afterwards, an empty canvas with axes -1..6). Plotly has no "send everything again" message.

So a figure here is always constructed complete (traces and layout passed to the constructor);
updates in place only restyle or relayout traces that already exist, each carrying whole ``x``
and ``y`` arrays (the next update repairs a lost one); and :meth:`FigureSlot.resend` builds a fresh
``FigureWidget`` from the current state and swaps it into the slot's box: the panels call it when
their tab is shown, when the plotted window changes and when the set of traces changes.

Even a complete new widget was seen, on a busy machine, to render as an empty canvas now and then
(its view drew before the state was there). Every plotly view reports back what it drew once it has
rendered (``_js2py_traceDeltas``: one entry per trace of the view), so a view that drew fewer
traces than the figure has is answered with the whole figure again, up to :data:`MAX_REPAIRS`
times in a row.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from .closing import close_tree

MAX_REPAIRS = 3
BUNDLE_REQUEST = "workbench:plotly-bundle"  # the custom message a figure's front end asks with
_LOADER = Path(__file__).with_name("static") / "plotly_widget_loader.js"


def _plotly_bundle_path() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "widgetbundle.js"


@functools.cache
def _plotly_bundle() -> bytes:
    """plotly's FigureWidget front end (about 5 MB of JavaScript), read once per kernel."""
    return _plotly_bundle_path().read_bytes()


@functools.cache
def _light_figure_widget_class() -> type:
    """``go.FigureWidget`` whose widget state carries a 3 kB loader instead of plotly's 5 MB front end.

    Why: plotly's ``FigureWidget`` is an anywidget whose ``_esm`` trait is the whole widget bundle, so
    every figure's state holds 5 MB of JavaScript. After a page reload JupyterLab asks the kernel for
    the state of every live widget in one reply (ipywidgets' ``request_states``) and waits 4 s for it
    (``CONTROL_COMM_TIMEOUT``); with the app's three figures that reply was 15 MB, which a busy machine
    does not serialize, relay and parse in 4 s, and then every view said "Error displaying widget: model
    not found". Each new figure (every whole resend) also re-sent and re-parsed the 5 MB. With this
    class the front end asks the kernel for the bundle once per page, by a custom widget message
    (``workbench/ui/static/plotly_widget_loader.js``), and figures cost only their data.
    """
    import plotly
    import plotly.graph_objects as go

    key = f"plotly-{plotly.__version__}-{_plotly_bundle_path().stat().st_size}"
    loader = _LOADER.read_text(encoding="utf-8").replace("__BUNDLE_KEY__", key)

    class LightFigureWidget(go.FigureWidget):
        _esm = loader

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.on_msg(self._send_bundle)

        def _send_bundle(self, _widget: Any, content: Any, _buffers: Any) -> None:
            if not isinstance(content, dict) or content.get("request") != BUNDLE_REQUEST:
                return
            try:
                bundle = _plotly_bundle()
            except OSError as exc:  # plotly installed without its package data: say so in the plot
                self.send({"reply": BUNDLE_REQUEST, "error": f"cannot read {_plotly_bundle_path()}: {exc}"})
                return
            self.send({"reply": BUNDLE_REQUEST, "key": key}, buffers=[bundle])

    LightFigureWidget.__module__ = __name__
    LightFigureWidget.__qualname__ = "LightFigureWidget"
    return LightFigureWidget


def figure_widget(figure: Any = None) -> Any:
    """A live plotly figure (a ``go.FigureWidget``) whose widget state is its data, not plotly's front end.

    Example:
        >>> import plotly.graph_objects as go
        >>> fig = figure_widget(go.Figure(go.Scatter(y=[1, 2])))
        >>> isinstance(fig, go.FigureWidget), len(fig._esm) < 10_000
        (True, True)
    """
    return _light_figure_widget_class()(figure)


class FigureSlot:
    """A box holding one ``FigureWidget`` that is replaced whole, never filled by diffs.

    Args:
        figure: the first figure (a ``go.Figure``, a ``FigureWidget`` or a figure dict); default empty.
        height: the box's CSS height in pixels, kept while a figure is swapped (no jump in the page).
        lock: held while a repair swaps the figure (the panel's drawing lock, so a redraw on another
            thread never updates a half-swapped slot); default a lock of the slot's own.
        min_width_px: the narrowest the box (and so the autosized figure) gets; default none. A figure
            laid out in pixels (the Telemetry panel's event labels) states the width it was laid out for.

    Example:
        >>> import plotly.graph_objects as go
        >>> slot = FigureSlot(go.Figure(go.Scatter(y=[1, 2, 3])))
        >>> len(slot.figure.data[0].y), slot.builds
        (3, 1)
        >>> slot.resend().data[0].y == slot.figure.data[0].y
        True
    """

    def __init__(self, figure: Any = None, height: int | None = None, lock: Any = None,
                 min_width_px: int | None = None) -> None:
        import ipywidgets as widgets

        self.lock = lock if lock is not None else threading.RLock()
        self.repairs = 0  # whole figures sent again because a view drew fewer traces than the figure has
        self._repairs_in_a_row = 0

        layout = widgets.Layout(width="100%", min_width=f"{min_width_px}px" if min_width_px else "0",
                                overflow="hidden")
        if height:
            layout.min_height = f"{height}px"
        self.box = widgets.Box(layout=layout)
        self.box.add_class("workbench-figure")
        self.figure: Any = None
        self.builds = 0
        self.show(figure if figure is not None else {})

    def show(self, figure: Any) -> Any:
        """Swap in a new ``FigureWidget`` constructed from ``figure`` (complete from its first message).

        Returns:
            The new ``FigureWidget`` (update it in place with restyles; :meth:`resend` after structure changes).
        """
        import plotly.graph_objects as go

        if isinstance(figure, go.FigureWidget):
            figure = figure.to_dict()
        new = figure_widget(figure)
        new.layout.autosize = True
        new.observe(self._view_drew, names="_js2py_traceDeltas")
        old, self.figure = self.figure, new
        self.box.children = (new,)
        self.builds += 1
        if old is not None:
            close_tree(old)
        return new

    def resend(self) -> Any:
        """Send the whole current figure again, as a new widget (the old one is closed)."""
        self._repairs_in_a_row = 0
        return self.show(self.figure)

    def _view_drew(self, change: dict[str, Any]) -> None:
        """A view rendered and said how many traces it drew: fewer than the figure has, send it whole."""
        report = change.get("new")
        fig = change.get("owner")
        if not report or fig is not self.figure:
            return
        drawn = len(report.get("trace_deltas") or ())
        if drawn >= len(fig.data) or self._repairs_in_a_row >= MAX_REPAIRS:
            self._repairs_in_a_row = 0 if drawn >= len(fig.data) else self._repairs_in_a_row
            return
        with self.lock:
            self._repairs_in_a_row += 1
            self.repairs += 1
            self.show(self.figure)

    def close(self) -> None:
        """Close the figure widget and the box."""
        close_tree(self.box)  # the box, its figure and their layouts, unless a live widget still shows them
        self.figure = None


def synced_state(figure: Any) -> tuple[list[dict], dict]:
    """``(data, layout)`` as a front end gets them when it creates a view of ``figure`` (a
    ``FigureWidget``), a reloaded page included: the state synced at construction, not the diffs after.

    Example:
        >>> data, layout = synced_state(slot.figure)   # doctest: +SKIP
        >>> [len(d["y"]) for d in data]                 # doctest: +SKIP
        [61, 61, 61]
    """
    return list(figure._widget_data), dict(figure._widget_layout)
