"""llm-workbench: run large language models on your own GPUs from Jupyter.

Importing this package is cheap: it pulls in no torch, transformers, ipywidgets or
plotly. The heavy pieces load when first used.

Example:
    >>> import workbench
    >>> store = workbench.ModelStore()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Lazy re-exports: name -> module that defines it.
_EXPORTS = {
    "ModelStore": "workbench.store",
    "ModelEntry": "workbench.store",
    "estimate": "workbench.store",
    "Workbench": "workbench.ui",
}

if TYPE_CHECKING:  # pragma: no cover
    from .store import ModelEntry, ModelStore, estimate  # noqa: F401
    from .ui import Workbench  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

# The table above is the one list: tests/test_exports.py holds the TYPE_CHECKING block to it.
__all__ = sorted(_EXPORTS)
