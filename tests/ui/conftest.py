"""Fixtures for headless panel tests: the tiny models as a shared store root, a private sampler."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tiny_store(monkeypatch: pytest.MonkeyPatch, isolated_store: Path, tiny_root: Path) -> Path:
    """``WORKBENCH_STORE`` = an empty user store over the tiny models (read-only shared root)."""
    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(tiny_root)]))
    from workbench.config import reset_settings

    reset_settings()
    return isolated_store


@pytest.fixture
def static_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKBENCH_DISPLAY", "static")


@pytest.fixture
def sampler() -> Iterator[object]:
    """A fast private sampler (CPU/RAM through psutil) and no shared state with other tests."""
    from workbench.telemetry import Sampler

    s = Sampler(interval_s=0.05, history_s=60)
    yield s
    s.close()


@pytest.fixture
def event_log() -> Iterator[object]:
    from workbench.telemetry import EventLog

    log = EventLog()
    yield log
    log.close()


@pytest.fixture
def registry() -> Iterator[object]:
    """The process's registry, with every model it holds unloaded after the test."""
    from workbench.runtime import get_registry

    reg = get_registry()
    yield reg
    for m in list(reg.list()):
        reg.unload(m.name)
