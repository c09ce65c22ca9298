"""Dropping an unloaded model from IPython's output history.

A model shown as a cell's result stays referenced by IPython (``Out[3]``, ``_3``,
``_``, ``__``, ``___`` and the display hook's copies of the last three) and keeps
its memory alive after an unload. The runtime does not know IPython; it calls the
hooks front ends register (:mod:`workbench.runtime.unload_hooks`), and
the first panel built registers :func:`clear_output_history`.
"""

from __future__ import annotations

import sys
from typing import Any


def _is_ours(value: Any, targets: list[Any]) -> bool:
    return any(value is t for t in targets)


def _shell() -> Any:
    ipython = sys.modules.get("IPython")  # only an IPython already running: never imported here
    if ipython is None:
        return None
    try:
        return ipython.get_ipython()
    except (AttributeError, RuntimeError):
        return None


def clear_output_history(targets: list[Any]) -> list[str]:
    """Remove ``targets`` from IPython's output history; returns the names cleared (``"Out[3]"``, ``"_"``).

    Does nothing (returns ``[]``) outside IPython.
    """
    shell = _shell()
    if shell is None:
        return []
    ns = getattr(shell, "user_ns", {}) or {}
    cleared: list[str] = []
    histories = {id(h): h for h in (ns.get("_oh"), ns.get("Out")) if isinstance(h, dict)}
    for history in histories.values():
        for key in [k for k, v in history.items() if _is_ours(v, targets)]:
            del history[key]
            cleared.append(f"Out[{key}]")
    for key in [k for k in list(ns) if k.startswith("_") and k[1:].isdigit() and _is_ours(ns[k], targets)]:
        del ns[key]
        cleared.append(key)
    hook = getattr(shell, "displayhook", None)
    for unders in ("_", "__", "___"):
        if unders in ns and _is_ours(ns[unders], targets):
            ns[unders] = ""
            cleared.append(unders)
        if hook is not None and _is_ours(getattr(hook, unders, None), targets):
            setattr(hook, unders, "")
    return cleared


def register() -> None:
    """Have every unload clear IPython's output history (idempotent; imports no torch)."""
    from ..runtime.unload_hooks import add_unload_hook

    add_unload_hook(clear_output_history)
