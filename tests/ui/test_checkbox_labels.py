"""Checkbox labels show whole: every checkbox in every tab of the app is laid out so that its label is
not cut (the Serve tab's "keep running after the kernel exits" read "keep running after the ker...").

ipywidgets' own defaults are the reason (ipywidgets 8, ``widget_bool.py`` and its stylesheet): a
``Checkbox`` is ``--jp-widgets-inline-width`` (300 px) wide and, with ``indent=True`` (the default),
spends ``--jp-widgets-inline-label-width`` (80 px) on an empty label before the box; the rest of the
label is clipped with an ellipsis. The browser test (tests/browser/test_app_layout.py) measures the
drawn labels; this one checks, in the kernel, the layout every checkbox is given.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _walk(widget: Any) -> Iterator[Any]:
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def test_every_checkbox_is_unindented_and_the_long_labels_size_to_their_text(tiny_store: Path, sampler) -> None:
    import ipywidgets as widgets

    from workbench.ui.app import Workbench

    app = Workbench(sampler=sampler)
    try:
        boxes = {(title, w.description): w for title, panel in app.panels.items()
                 for w in _walk(panel.widget) if isinstance(w, widgets.Checkbox)}
        assert ("Serve", "keep running after the kernel exits") in boxes, sorted(boxes)
        assert [k for k, w in boxes.items() if w.indent] == []
        # A label longer than the quantization variants' fixed 100-150 px boxes sizes to its text.
        long = {k: w.layout.width for k, w in boxes.items() if len(k[1]) > 20}
        assert long, sorted(boxes)
        assert set(long.values()) == {"auto"}, long
        assert app.serve.controls.detach.layout.width == "auto"
    finally:
        for panel in app.panels.values():
            panel.close()
