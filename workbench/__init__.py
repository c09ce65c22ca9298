"""llm-workbench: run large language models on your own GPUs from Jupyter.

Importing this package is cheap: it pulls in no torch, transformers, ipywidgets or
plotly. The heavy pieces load when first used.

Example:
    >>> import workbench
    >>> store = workbench.ModelStore()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
