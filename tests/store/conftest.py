"""Store fixtures: a store over given roots that scans afresh every time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from workbench.store import ModelStore


@pytest.fixture
def store_of() -> Callable[..., ModelStore]:
    """``store_of(root, *shared_roots)``: a :class:`ModelStore` over these roots without the index
    cache, so each listing is a fresh scan of what the test just wrote."""

    def make(*roots: Path) -> ModelStore:
        return ModelStore(list(roots), cache_path=None)

    return make
