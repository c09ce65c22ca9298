"""FigureSlot against plotly's own front-end protocol: what a plotly.js view reports after it rendered.

A view sends ``_js2py_traceDeltas`` once ``Plotly.newPlot`` resolves, one delta per trace it drew
(plotly's widgetbundle.js, ``_sendTraceDeltas``). Here the test plays that view: a view that drew
nothing (the empty canvas seen on a busy machine) gets the whole figure again, boundedly.
"""

from __future__ import annotations

import plotly.graph_objects as go

from workbench.ui.figures import MAX_REPAIRS, FigureSlot, synced_state


def _view_reports(fig: go.FigureWidget, drawn: int) -> None:
    """Send what plotly.js sends after rendering ``drawn`` of the figure's traces."""
    deltas = [{"uid": fig.data[i].uid} for i in range(drawn)]
    fig._js2py_traceDeltas = {"trace_deltas": deltas, "trace_edit_id": fig._last_trace_edit_id}


def _figure() -> go.Figure:
    return go.Figure([go.Scatter(y=[1, 2, 3], name="a"), go.Scatter(y=[3, 2, 1], name="b")],
                     layout={"title": {"text": "two lines"}})


def test_a_new_widget_carries_every_trace_and_the_layout_in_its_first_state() -> None:
    slot = FigureSlot(_figure())
    data, layout = synced_state(slot.figure)
    assert [len(d["y"]) for d in data] == [3, 3]
    assert layout["title"]["text"] == "two lines"
    first = slot.figure
    assert slot.resend() is not first
    assert slot.builds == 2
    assert first.comm is None  # the old one is closed
    slot.close()


def test_a_view_that_drew_fewer_traces_gets_the_whole_figure_again_boundedly() -> None:
    slot = FigureSlot(_figure())
    fig = slot.figure
    _view_reports(fig, drawn=0)
    assert slot.figure is not fig
    assert slot.repairs == 1
    assert [len(d["y"]) for d in synced_state(slot.figure)[0]] == [3, 3]
    # A view that drew every trace is left alone.
    fig = slot.figure
    _view_reports(fig, drawn=2)
    assert slot.figure is fig
    assert slot.repairs == 1
    # A view that keeps drawing nothing is answered MAX_REPAIRS times in a row, then left.
    for _ in range(MAX_REPAIRS + 2):
        _view_reports(slot.figure, drawn=0)
    assert slot.repairs == 1 + MAX_REPAIRS
    slot.close()
