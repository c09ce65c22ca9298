"""What a reloaded page gets from the kernel: ipywidgets' own ``request_states`` reply, kept small and whole.

After a reload JupyterLab's widget manager sends ``request_states`` on the ``jupyter.widget.control``
comm and waits 4 s (``CONTROL_COMM_TIMEOUT`` in @jupyter-widgets/base) for one reply holding every
live widget's state; when the reply is late or never comes, every view says "Error displaying widget:
model not found". Here ipywidgets' real handler answers (``Widget._handle_control_comm_msg``) into a
recording comm, and the tests check what a busy machine has to move in those 4 s: the app's reply
is well under a megabyte (plotly's FigureWidget alone carried its 5 MB front end in each figure's
state: 15 MB for the app's three), the number of widgets stays flat however the app is used, and
closing the app leaves no widget behind and none that names a closed one (the reply would raise).

The reply is taken as a page takes it: the control comm opened through ``Widget.handle_control_comm_opened``
(what the kernel's comm manager calls) and the request passed to the comm's ``handle_msg``, so ipywidgets'
own handler builds it; its size is counted over the widgets the app made (the test session's other
widgets are not the app's, and a kernel running only the app has none of them).
"""

from __future__ import annotations

import json
from pathlib import Path

import plotly
import plotly.graph_objects as go
import pytest
from comm.base_comm import BaseComm
from ipywidgets.widgets.widget import __control_protocol_version__ as CONTROL_PROTOCOL_VERSION

from workbench.ui import Workbench
from workbench.ui.closing import close_tree
from workbench.ui.figures import BUNDLE_REQUEST, figure_widget

REPLY_LIMIT_BYTES = 1_000_000


class _RecordingComm(BaseComm):
    """A kernel-side comm whose messages to the front end are kept (the last one) instead of published."""

    def __init__(self) -> None:
        super().__init__(target_name="jupyter.widget.control", primary=False)
        self.last: tuple[dict, list] | None = None

    def publish_msg(self, msg_type: str, data: dict | None = None, metadata: dict | None = None,
                    buffers: list | None = None, **keys: object) -> None:
        self.last = (data or {}, list(buffers or []))


def reload_reply(own: set[str] | None = None) -> tuple[int, dict]:
    """``(bytes, states)`` of ipywidgets' answer to a reloaded page's ``request_states``.

    ``own``: the model ids to count (``None``: every live widget's state is counted).
    """
    from ipywidgets.widgets.widget import Widget

    comm = _RecordingComm()
    Widget.handle_control_comm_opened(comm, {"metadata": {"version": CONTROL_PROTOCOL_VERSION}})
    comm.handle_msg({"content": {"data": {"method": "request_states"}}})
    assert comm.last is not None
    data, buffers = comm.last
    assert data["method"] == "update_states"
    states = {k: v for k, v in data["states"].items() if own is None or k in own}
    by_path = {tuple(path): b for path, b in zip(data["buffer_paths"], buffers)}
    size = len(json.dumps(states)) + sum(len(b) for path, b in by_path.items() if own is None or path[0] in own)
    return size, states


def _live() -> set[str]:
    from ipywidgets.widgets.widget import _instances

    return set(_instances)


def _describe(ids: set[str]) -> list[str]:
    from ipywidgets.widgets.widget import _instances

    return sorted(f"{type(_instances[i]).__name__}({getattr(_instances[i], 'description', '')!r})" for i in ids)


def _use(wb: Workbench) -> None:
    """One round of what a user does: look at tabs, change the window, re-list models."""
    for title in ("Telemetry", "Quantization", "Load", "Telemetry"):
        wb.select_tab(title)
    wb.telemetry.set_window(60)
    wb.telemetry.set_window(300)
    wb.load.refresh_models()
    wb.prompt.refresh_models()
    wb.quantization.refresh_models()


def test_the_apps_reload_reply_is_small_flat_with_use_and_gone_after_close(
        tiny_store: Path, registry, sampler) -> None:
    before = _live()
    wb = Workbench(registry=registry, sampler=sampler)
    _ = wb.widget
    size, states = reload_reply(_live() - before)
    assert size < REPLY_LIMIT_BYTES, f"the reload reply is {size} bytes"
    figures = [s for s in states.values() if s["model_name"] == "AnyModel"]
    assert len(figures) == 3  # Telemetry's CPU and RAM, Quantization's two plots
    assert all(len(s["state"]["_esm"]) < 10_000 for s in figures)

    _use(wb)
    wb.load.load_model("tiny-gpt2", devices=["cpu"], dtype="float32")
    wb.prompt.set_params(max_new_tokens=4)
    wb.prompt.send("Hello")
    _use(wb)
    after_first = _live() - before
    for _ in range(3):
        _use(wb)
        wb.prompt.send("Hello again")
    # Replaced figures are closed with what they held: the same number of widgets, round after round.
    assert len(_live() - before) == len(after_first)
    size, _ = reload_reply(_live() - before)
    assert size < REPLY_LIMIT_BYTES, f"the reload reply grew to {size} bytes"

    wb.close()
    left = _live() - before
    assert not left, f"closing the app left widgets in the kernel: {_describe(left)}"
    reload_reply()  # no live widget names a closed one (serializing it would raise)


def test_a_figure_sends_plotlys_front_end_once_asked_not_in_its_state(monkeypatch: pytest.MonkeyPatch) -> None:
    fig = figure_widget(go.Figure(go.Scatter(y=[1, 2, 3])))
    assert isinstance(fig, go.FigureWidget)
    bundle = (Path(plotly.__file__).parent / "package_data" / "widgetbundle.js").read_bytes()
    state = fig.get_state(drop_defaults=False)
    assert len(bundle) > 1_000_000
    assert len(state["_esm"]) < 10_000
    assert len(json.dumps(state, default=str)) < 50_000
    sent: list[tuple[dict, list]] = []
    monkeypatch.setattr(fig.comm, "send", lambda data=None, metadata=None, buffers=None: sent.append((data, buffers)))
    # What the loader's front end sends (workbench/ui/static/plotly_widget_loader.js), through the widget's comm.
    fig.comm.handle_msg({"content": {"data": {"method": "custom", "content": {"request": BUNDLE_REQUEST}}},
                         "buffers": []})
    assert len(sent) == 1
    msg, buffers = sent[0]
    assert msg["content"]["reply"] == BUNDLE_REQUEST
    assert bytes(buffers[0]) == bundle
    # Other custom messages are not answered with 5 MB.
    fig.comm.handle_msg({"content": {"data": {"method": "custom", "content": {"other": 1}}}, "buffers": []})
    assert len(sent) == 1
    fig.close()


def test_close_tree_closes_children_layouts_and_styles_but_not_what_another_box_shows() -> None:
    import ipywidgets as widgets

    shared = widgets.HTML("shown twice")
    button = widgets.Button()
    box, other = widgets.VBox([button, shared]), widgets.HBox([shared])
    closed = close_tree(box)
    assert closed == 5  # the box and its Layout, the button with its Layout and ButtonStyle
    assert [w.comm for w in (box, button, button.layout)] == [None, None, None]
    assert None not in [w.comm for w in (shared, other, shared.layout)]
    inner = widgets.Label("inside")
    outer = widgets.VBox([inner])
    assert close_tree(inner) == 0  # still shown by a live box: closing it would break every reload
    assert close_tree(outer) == 5  # the box and its Layout, the label with its Layout and LabelStyle
    close_tree(other)
