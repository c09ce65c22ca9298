"""The NVML/torch fakes, and a clean slate (NVML state, sampler, events, CUDA_* env) per test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/ on sys.path for `fakes` (the root conftest does this too; harmless twice).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.fixtures import clean_devices, fake_nvml, no_nvml_driver  # noqa: E402, F401


@pytest.fixture(autouse=True)
def _clean_slate(request: pytest.FixtureRequest) -> None:
    """Every test here starts and ends without NVML state, samplers or events."""
    request.getfixturevalue("clean_devices")
