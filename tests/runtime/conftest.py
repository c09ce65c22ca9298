"""Fixtures for the runtime tests: stores over the tiny and embedded models, shared loaded models.

Loading costs seconds on a shared 2-core machine, so models are loaded once per
module (``Registry`` instances of their own, not the process singleton) and tests
that must not disturb them (unload, failure paths) load their own tiny copies.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SMOL = "SmolLM2-135M-Instruct"


@pytest.fixture
def store_env(monkeypatch: pytest.MonkeyPatch, isolated_store: Path, tiny_root: Path, seeded_root: Path) -> Path:
    """WORKBENCH_STORE = the empty user store, then the tiny models, then the seeded model."""
    from workbench.config import reset_settings

    monkeypatch.setenv("WORKBENCH_STORE", os.pathsep.join([str(isolated_store), str(tiny_root), str(seeded_root)]))
    reset_settings()
    return isolated_store


@pytest.fixture(scope="session")
def shared_store(tiny_root: Path, seeded_root: Path):
    """A store over the tiny models and the seeded model, for module-scoped registries."""
    from workbench.store import ModelStore

    return ModelStore([tiny_root, seeded_root], cache_path=None)


@pytest.fixture
def registry(shared_store) -> Iterator:
    """A fresh registry over :func:`shared_store`; everything it loaded is unloaded afterwards."""
    from workbench.runtime import Registry

    reg = Registry(shared_store)
    yield reg
    reg.unload_all()


@pytest.fixture(scope="module")
def tiny_llama(shared_store) -> Iterator:
    """tiny-llama (float32) loaded on the CPU, shared by a module's tests."""
    from workbench.runtime import LoadSpec, Registry

    reg = Registry(shared_store)
    loaded = reg.load(LoadSpec("tiny-llama"))
    yield loaded
    reg.unload_all()


@pytest.fixture(scope="module")
def smol_bf16(shared_store) -> Iterator:
    """The embedded SmolLM2-135M-Instruct in bfloat16 on the CPU, shared by a module's tests."""
    from workbench.runtime import LoadSpec, Registry

    reg = Registry(shared_store)
    loaded = reg.load(LoadSpec(SMOL))
    yield loaded
    reg.unload_all()


@pytest.fixture
def events() -> Iterator[list]:
    """Telemetry events posted during the test (the process-wide log, cleared first)."""
    from workbench.telemetry import get_event_log, reset_event_log

    reset_event_log()
    log = get_event_log()

    class View(list):
        def kinds(self) -> list[str]:
            return [e.kind for e in log.events()]

        def of(self, kind: str) -> list:
            return log.events(kind=kind)

    yield View()
    reset_event_log()
