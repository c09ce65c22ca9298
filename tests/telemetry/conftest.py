"""The NVML/torch fakes, and a clean slate (NVML state, sampler, events, CUDA_* env) per test."""

from __future__ import annotations

import pytest

from fakes.fixtures import clean_devices, fake_nvml, no_nvml_driver  # noqa: F401


@pytest.fixture(autouse=True)
def _clean_slate(request: pytest.FixtureRequest) -> None:
    """Every test here starts and ends without NVML state, samplers or events."""
    request.getfixturevalue("clean_devices")
