"""The NVML/torch fakes, and a clean slate (NVML state, sampler, events, CUDA_* env) per test."""

from __future__ import annotations

import pytest

from fakes.fake_pynvml import FakeGpu
from multiuser import require_root, shared_tmp, sticky_folder

GiB = 2**30


@pytest.fixture(autouse=True)
def _clean_slate(request: pytest.FixtureRequest) -> None:
    """Every test here starts and ends without NVML state, samplers or events."""
    request.getfixturevalue("clean_devices")


@pytest.fixture
def gpu(fake_nvml):
    """One fake 24 GiB GPU for the multi-user lease tests (as root, whose children drop to other uids)."""
    require_root()
    import psutil  # noqa: F401 (the children cannot import it from /root; they inherit it)

    return fake_nvml([FakeGpu(memory_total_bytes=24 * GiB)], torch=True).gpus[0]


@pytest.fixture
def folder(gpu):
    """A sticky lease folder as an administrator makes it (root, 1777), reachable by every uid."""
    with shared_tmp() as base:
        yield sticky_folder(base / "leases")
