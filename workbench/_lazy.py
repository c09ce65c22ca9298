"""Lazy re-exports for package ``__init__`` modules (PEP 562).

``import workbench`` and its subpackages must stay cheap (no torch, ipywidgets or
plotly), yet offer their public names at the top. Each package lists
``name -> module`` and gets a module ``__getattr__`` that imports the module on
first use and caches the value in the package's namespace.

Example:
    >>> __getattr__, __dir__ = lazy_exports(__name__, globals(), {"ModelStore": "store"})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any


def lazy_exports(package: str, namespace: dict[str, Any], exports: dict[str, str], *,
                 deprecated: dict[str, str] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Build a package's ``__getattr__`` and ``__dir__``.

    Args:
        package: the package's ``__name__``.
        namespace: the package's ``globals()``, where resolved names are cached so
            later lookups skip ``__getattr__``.
        exports: public name -> module, relative to ``package`` (``"store"``) or
            absolute (``"workbench.store"``).
        deprecated: names that moved to another package, old name -> the absolute module
            that has it now: still resolved, with a :class:`DeprecationWarning` naming the new
            home on every access (never cached, never listed by ``dir()`` or ``__all__``), so
            code written against an earlier release keeps working while it is told to move.
    """
    moved = deprecated or {}

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None and name in moved:
            warnings.warn(f"{package}.{name} moved to {moved[name]}: import it from there "
                          f"(`from {moved[name]} import {name}`)", DeprecationWarning, stacklevel=2)
            return getattr(importlib.import_module(moved[name]), name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = module if module.startswith("workbench") else f"{package}.{module}"
        value = getattr(importlib.import_module(target), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__


def torch_if_imported() -> ModuleType | None:
    """torch, if this process already imported it; never imports it (about 2 s and 300 MB).

    For code that only has work to do when torch is in use (CUDA caches to empty,
    tensors to recognise) and must keep ``import workbench`` free of torch.
    """
    return sys.modules.get("torch")
