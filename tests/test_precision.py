"""The one vocabulary: labels round-trip, bad labels and devices are refused with what to use."""

from __future__ import annotations

import pytest

from workbench.errors import ConfigError
from workbench.precision import LABELS, Precision, check_device, device_type, normalize_device


@pytest.mark.parametrize("label", LABELS)
def test_every_label_round_trips(label: str) -> None:
    assert Precision.parse(label).label == label


def test_quantized_labels_keep_the_dtype_asked_for() -> None:
    p = Precision.parse("nf4+dq", dtype="float16")
    assert (p.dtype, p.quant, p.double_quant) == ("float16", "nf4", True)


@pytest.mark.parametrize("text", ["int8+dq", "bfloat16+dq", "nf5", "", "none", "nf4+xx"])
def test_unknown_labels_are_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        Precision.parse(text)
    assert repr(text) in str(err.value)


def test_devices() -> None:
    assert normalize_device(" CUDA ") == "cuda:0"
    assert check_device("cuda:3") == "cuda:3"
    assert device_type(("cpu", "cuda:1")) == "cuda"
    assert device_type(("cpu",)) == "cpu"
    with pytest.raises(ConfigError, match="'gpu0'"):
        check_device("gpu0")
