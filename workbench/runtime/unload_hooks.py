"""References front ends hold to a model, dropped on unload through hooks they register.

The runtime knows nothing of IPython or widgets, yet a model shown as a cell's
output stays referenced by IPython's history and keeps its memory. So a front end
registers ``hook(targets) -> names cleared`` here, and :meth:`Registry.unload`
calls every hook with the objects about to go (the ``LoadedModel``, its model and
tokenizer) before it lets them go. Building any ``workbench.ui`` panel registers
:func:`workbench.ui.history.clear_output_history`.

Standard library only: front ends import this module without loading the store or torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: ``hook(targets) -> names of the references it cleared`` (``"Out[3]"``, ``"_"``...).
UnloadHook = Callable[[list[Any]], list[str]]
_hooks: list[UnloadHook] = []


def add_unload_hook(hook: UnloadHook) -> None:
    """Have every unload call ``hook(targets)`` before the model goes (registering twice adds it once)."""
    if hook not in _hooks:
        _hooks.append(hook)


def run_unload_hooks(targets: list[Any]) -> list[str]:
    """Call every registered hook; a hook that fails is logged and skipped (an unload never stops for it)."""
    cleared: list[str] = []
    for hook in list(_hooks):
        try:
            cleared += hook(targets)
        except Exception as exc:  # a front end's trouble never stops an unload
            logger.warning("unload hook %r failed: %s", hook, exc)
    return cleared
