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

import threading
from typing import Any

MAX_REPAIRS = 3


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
        new = go.FigureWidget(figure)
        new.layout.autosize = True
        new.observe(self._view_drew, names="_js2py_traceDeltas")
        old, self.figure = self.figure, new
        self.box.children = (new,)
        self.builds += 1
        if old is not None:
            old.close()
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
        if self.figure is not None:
            self.figure.close()
            self.figure = None
        self.box.close()


def synced_state(figure: Any) -> tuple[list[dict], dict]:
    """``(data, layout)`` as a front end gets them when it creates a view of ``figure`` (a
    ``FigureWidget``), a reloaded page included: the state synced at construction, not the diffs after.

    Example:
        >>> data, layout = synced_state(slot.figure)   # doctest: +SKIP
        >>> [len(d["y"]) for d in data]                 # doctest: +SKIP
        [61, 61, 61]
    """
    return list(figure._widget_data), dict(figure._widget_layout)
