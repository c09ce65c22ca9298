"""``to_dict()`` derived once from a dataclass's fields, for ``--json`` output and the REST API.

A hand-written ``to_dict`` per dataclass drifts when a field is added. :class:`Record`
derives it: every field, plus the derived properties a class names in
``_json_properties`` (``total_bytes``), minus those in ``_json_exclude`` (live objects
such as a model). Values become JSON-friendly with :func:`jsonable`: nested records
through their own ``to_dict``, paths as strings, tuples and sets as lists.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Size(Record):
    ...     _json_properties = ("kib",)
    ...     n_bytes: int
    ...     @property
    ...     def kib(self) -> float:
    ...         return self.n_bytes / 1024
    >>> Size(2048).to_dict()
    {'n_bytes': 2048, 'kib': 2.0}
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any, ClassVar


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: records by ``to_dict()``, paths as str, sequences as lists."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    return value


class Record:
    """Mixin for frozen dataclasses: a ``to_dict()`` that follows the fields.

    Class attributes:
        _json_properties: derived properties added after the fields, in order.
        _json_exclude: fields left out (live objects, callables).
    """

    __slots__ = ()
    _json_properties: ClassVar[tuple[str, ...]] = ()
    _json_exclude: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The fields and ``_json_properties`` as JSON-friendly values."""
        out = {f.name: jsonable(getattr(self, f.name))
               for f in dataclasses.fields(self)  # type: ignore[arg-type]
               if f.name not in self._json_exclude}
        for name in self._json_properties:
            out[name] = jsonable(getattr(self, name))
        return out
