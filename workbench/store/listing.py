"""A listing's order and search: :func:`sort_entries` by one field, :func:`filter_entries` by words.

The Store tab sorts and filters with these; they take any entries (``ModelStore.list()``'s),
read nothing, and a command-line ``--sort``/``--filter`` would share them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError
from .entry import ModelEntry

SORT_KEYS = ("name", "model_type", "params", "size_bytes", "dtype", "context_length", "quantization", "status")


def check_sort_key(key: str) -> str:
    """``key`` itself when it is one of :data:`SORT_KEYS`.

    Raises:
        ConfigError: any other key.
    """
    if key not in SORT_KEYS:
        raise ConfigError(f"cannot sort by {key!r}", hint=f"use one of {', '.join(SORT_KEYS)}", key=key)
    return key


def sort_entries(entries: Iterable[ModelEntry], key: str = "name", descending: bool = False) -> list[ModelEntry]:
    """Entries ordered by one field; missing values (``None``) always last.

    Example:
        >>> [e.name for e in sort_entries(store.list(), "params", descending=True)]  # doctest: +SKIP

    Raises:
        ConfigError: ``key`` is not one of :data:`SORT_KEYS`.
    """
    check_sort_key(key)
    items = list(entries)
    present = [e for e in items if getattr(e, key) is not None]
    missing = [e for e in items if getattr(e, key) is None]

    def k(e: ModelEntry) -> Any:
        value = getattr(e, key)
        return value.lower() if isinstance(value, str) else value

    present.sort(key=k, reverse=descending)
    return present + sorted(missing, key=lambda e: e.name.lower())


def filter_entries(entries: Iterable[ModelEntry], text: str = "") -> list[ModelEntry]:
    """Entries whose name, type, dtype, format, quantization or status contain every word of ``text``.

    Example:
        >>> [e.name for e in filter_entries(store.list(), "llama ok")]  # doctest: +SKIP
    """
    words = text.lower().split()
    if not words:
        return list(entries)
    out = []
    for e in entries:
        hay = " ".join(str(v) for v in (e.name, e.model_type, e.dtype, e.format, e.quantization, e.status) if v).lower()
        if all(w in hay for w in words):
            out.append(e)
    return out
