"""to_dict derived from the fields follows them: nested records, paths, tuples, exclusions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workbench._records import Record


@dataclass(frozen=True)
class Inner(Record):
    n_bytes: int


@dataclass(frozen=True)
class Outer(Record):
    _json_properties = ("total_bytes",)
    _json_exclude = ("live",)
    path: Path
    parts: tuple[Inner, ...]
    by_device: dict[str, Inner]
    live: object = None

    @property
    def total_bytes(self) -> int:
        return sum(p.n_bytes for p in self.parts)


def test_to_dict_follows_fields_and_is_json() -> None:
    o = Outer(Path("/m/x"), (Inner(1), Inner(2)), {"cuda:0": Inner(3)}, live=object())
    d = o.to_dict()
    assert d == {"path": "/m/x", "parts": [{"n_bytes": 1}, {"n_bytes": 2}],
                 "by_device": {"cuda:0": {"n_bytes": 3}}, "total_bytes": 3}
    json.dumps(d)
