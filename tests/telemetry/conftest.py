"""The NVML/torch fakes, and a clean slate (NVML state, sampler, events, CUDA_* env) per test."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _clean_slate(request: pytest.FixtureRequest) -> None:
    """Every test here starts and ends without NVML state, samplers or events."""
    request.getfixturevalue("clean_devices")
