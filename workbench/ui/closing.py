"""Closing a widget tree so the kernel's widgets stay restorable after a page reload.

After a reload JupyterLab asks the kernel for the state of every live widget in one reply
(ipywidgets' ``request_states``, answered from ``ipywidgets.widgets.widget._instances``). Two things
break that reply, and with it every view of every widget in the kernel ("Error displaying widget:
model not found"):

- a live widget whose state names a closed one (a box whose child was closed while the box lives
  on): serializing it raises in the kernel, and no reply is sent at all;
- widgets nobody closes (``Widget.close`` closes only that widget, not its children, its ``Layout``
  or its ``Style``): each costs a model in the reply and in the page, forever.

:func:`close_tree` closes a widget with everything its state names, except what a widget outside
the tree still shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any


def _named_widgets(widget: Any) -> Iterator[Any]:
    """The widgets ``widget``'s synced state names (``children``, ``layout``, ``style``, ...)."""
    from ipywidgets import Widget

    for key in widget.keys:
        try:
            value = getattr(widget, key)
        except Exception:  # a trait whose getter fails names no widget worth closing  # noqa: BLE001
            continue
        values: Iterable[Any] = value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else (value,))
        for v in values:
            if isinstance(v, Widget) and v is not widget:
                yield v


def _tree(roots: Iterable[Any]) -> dict[int, Any]:
    seen: dict[int, Any] = {}
    stack = list(roots)
    while stack:
        w = stack.pop()
        if id(w) in seen or w.comm is None:
            continue
        seen[id(w)] = w
        stack.extend(_named_widgets(w))
    return seen


def close_tree(widget: Any) -> int:
    """Close ``widget`` and every live widget its state names, recursively, except those that a live
    widget outside this tree still names (with what they name): ``widget`` itself stays open while a
    live box shows it (the box's own close takes it). Returns how many were closed.

    Example:
        >>> import ipywidgets as widgets
        >>> shared = widgets.HTML("shown twice")
        >>> box, other = widgets.VBox([widgets.Button(), shared]), widgets.HBox([shared])
        >>> close_tree(box)   # the box, its Layout, the button with its Layout and Style
        5
        >>> shared.comm is not None and other.comm is not None
        True
    """
    from ipywidgets.widgets.widget import _instances

    if widget is None or widget.comm is None:
        return 0
    tree = _tree([widget])
    outside = [w for w in list(_instances.values()) if id(w) not in tree]
    kept = _tree(v for w in outside for v in _named_widgets(w) if id(v) in tree)
    closing = [w for key, w in tree.items() if key not in kept]
    for w in closing:
        w.close()
    return len(closing)
