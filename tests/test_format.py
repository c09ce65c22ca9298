"""The one display formatter every layer uses: a missing value (None or NaN) is "N/A"."""

from __future__ import annotations

import math

from workbench import _format
from workbench.devices import format_bytes as devices_format_bytes
from workbench.store import format_bytes as store_format_bytes


def test_one_format_bytes_for_store_and_devices():
    assert store_format_bytes is devices_format_bytes is _format.format_bytes


def test_missing_values_read_na():
    # NaN is how a float32 telemetry series marks a missing sample.
    assert _format.format_bytes(None) == _format.format_bytes(math.nan) == "N/A"
    assert _format.format_number(math.nan, "%") == "N/A"
    assert _format.format_count(None) == "N/A"


def test_binary_units():
    assert _format.format_bytes(1536) == "1.5 KiB"
    assert _format.format_bytes(512) == "512 B"
    assert _format.format_bytes(3 * 2**30) == "3.0 GiB"
    assert _format.format_count(134_515_008) == "134.5M"
