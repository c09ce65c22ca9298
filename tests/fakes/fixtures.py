"""Pytest fixtures over the fakes, loaded for every test folder by the root conftest's
``pytest_plugins`` (none is autouse: a test asks for the one it needs).

``fake_nvml`` is a factory, so one test can describe exactly the machine it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fakes.fake_pynvml import (
    FakeGpu,
    FakeNVML,
    FakeTorchCuda,
    fake_torch_cuda,
    install_fake_nvml,
    install_fake_torch_cuda,
    make_fake_nvml,
)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeNVML]]:
    """Factory: ``fake_nvml(gpus=[FakeGpu(...), ...], torch=..., **make_fake_nvml_kwargs)``.

    ``torch``: ``None``/``False`` (default) means torch is not installed, so the
    inventory falls back to ``CUDA_VISIBLE_DEVICES``; ``True`` means torch.cuda
    sees every fake GPU in NVML order; a list of UUIDs (or a ``FakeTorchCuda``)
    gives torch's own order. The fake is installed and NVML's lazy state reset;
    both are undone after the test.

    Example::

        def test_two_gpus(fake_nvml):
            fake = fake_nvml([FakeGpu(), FakeGpu()], torch=True)
    """
    from workbench.devices import nvml

    def install(gpus: list[FakeGpu] | None = None, *, torch: Any = None, **kwargs: Any) -> FakeNVML:
        fake = make_fake_nvml(gpus, **kwargs)
        install_fake_nvml(monkeypatch, fake)
        if torch is True:
            cuda: FakeTorchCuda | None = fake.torch_cuda()
        elif isinstance(torch, FakeTorchCuda):
            cuda = torch
        elif torch:
            cuda = fake_torch_cuda(list(torch))
        else:
            cuda = None
        install_fake_torch_cuda(monkeypatch, cuda)
        return fake

    yield install
    nvml.reset()


@pytest.fixture
def no_nvml_driver(fake_nvml: Callable[..., FakeNVML]) -> FakeNVML:
    """A machine without the NVIDIA driver: ``nvmlInit`` raises ``NVMLError_LibraryNotFound``."""
    return fake_nvml([], library_missing=True)


@pytest.fixture
def clean_devices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No inherited ``CUDA_*`` variables, no cached NVML state, no leftover sampler or events."""
    from workbench.devices import nvml
    from workbench.telemetry import reset_event_log, reset_sampler

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    # Tests elsewhere (the runtime's) post events and start the process-wide sampler: start clean too.
    reset_sampler()
    reset_event_log()
    nvml.reset()
    yield
    reset_sampler()
    reset_event_log()
    nvml.reset()


@pytest.fixture
def no_fp4_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bitsandbytes backend without FP4, faked at the library boundary (``quantize_4bit``)."""
    import bitsandbytes.functional as F

    real = F.quantize_4bit

    def no_fp4(*args: object, quant_type: str = "fp4", **kwargs: object) -> object:
        if quant_type == "fp4":
            raise NotImplementedError("FP4 is not available on this backend")
        return real(*args, quant_type=quant_type, **kwargs)

    monkeypatch.setattr(F, "quantize_4bit", no_fp4)
