"""The one fit rule (workbench/devices/budget.py), on numbers alone.

Each case is arithmetic a reader can check by hand: what a device offers (free less
other users' leases, within a cap), what a load needs on it (named fixed parts) and
how the weights spread over several devices in order, as accelerate fills them.
"""

from __future__ import annotations

from workbench.devices.budget import DeviceOffer, decide_fit, unknown_text

GiB = 2**30
MiB = 2**20


def test_leases_and_fixed_parts_come_off_the_free_memory():
    offer = DeviceOffer("cuda:0", free_bytes=24 * GiB, leased_bytes=10 * GiB, lease_holders=("alice: 10 GiB",))
    parts = {"cuda:0": {"cuda_context": 512 * MiB, "kv_cache": 512 * MiB}}
    v = decide_fit(13 * GiB, [offer], parts=parts)
    [b] = v.devices
    assert b.usable_bytes == 13 * GiB
    assert b.reserve_bytes == GiB
    assert b.fits is True
    assert v.fits is True
    assert v.needed_bytes == 14 * GiB
    assert v.available_bytes == 14 * GiB
    assert v.parts == {"weights": 13 * GiB, "cuda_context": 512 * MiB, "kv_cache": 512 * MiB}
    assert v.leased_bytes == 10 * GiB
    assert "10.0 GiB of it promised to leases (alice: 10 GiB)" in b.describe()
    # One byte more and it does not fit: raw free memory (24 GiB) would have said it does.
    assert decide_fit(13 * GiB + 1, [offer], parts=parts).fits is False


def test_weights_spread_in_order_and_each_device_needs_room_for_its_own_parts():
    offers = [DeviceOffer("cuda:0", 6 * GiB), DeviceOffer("cuda:1", 6 * GiB, cap_bytes=2 * GiB)]
    v = decide_fit(7 * GiB, offers, parts={"cuda:0": {"cuda_context": GiB}, "cuda:1": {"cuda_context": GiB}})
    assert [b.weights_bytes for b in v.devices] == [5 * GiB, 2 * GiB]
    assert v.fits is True
    assert [b.needed_bytes for b in v.devices] == [6 * GiB, 3 * GiB]
    # The weights would fit on cuda:0 alone, but cuda:1 has no room for its CUDA context.
    short = [DeviceOffer("cuda:0", 20 * GiB), DeviceOffer("cuda:1", 100 * MiB)]
    v = decide_fit(GiB, short, parts={"cuda:1": {"cuda_context": 512 * MiB}})
    assert v.fits is False
    assert [b.fits for b in v.devices] == [True, False]


def test_load_peak_is_what_the_weights_need_while_loading():
    v = decide_fit(GiB, [DeviceOffer("cpu", 2 * GiB)], load_peak_bytes=3 * GiB)
    assert v.fits is False
    assert v.needed_bytes == 3 * GiB
    assert v.parts == {"weights": GiB, "load_peak": 2 * GiB}
    assert decide_fit(GiB, [DeviceOffer("cpu", 3 * GiB)], load_peak_bytes=3 * GiB).fits is True


def test_unknown_free_memory_is_unknown_not_a_refusal():
    assert decide_fit(GiB, [DeviceOffer("cuda:0", None)]).fits is None
    assert decide_fit(GiB, [DeviceOffer("cuda:0", None)]).available_bytes is None
    # A cap alone says how much may go there.
    assert decide_fit(GiB, [DeviceOffer("cuda:0", None, cap_bytes=2 * GiB)]).fits is True
    # Unknown on one device, but another one cannot hold its own parts: that is a refusal.
    v = decide_fit(GiB, [DeviceOffer("cuda:0", None), DeviceOffer("cuda:1", 0)], parts={"cuda:1": {"kv_cache": 1}})
    assert v.fits is False


def test_an_unknown_part_is_never_zero_bytes():
    """A part nobody can size (a cache transformers cannot measure) turns "fits" into unknown, keeps a
    refusal a refusal, is named with its reason, and is in none of the byte totals."""
    why = {"kv_cache": "estimate unavailable: no config.json"}
    v = decide_fit(GiB, [DeviceOffer("cuda:0", 4 * GiB)], unknown_parts=why)
    assert (v.fits, dict(v.unknown_parts), v.needed_bytes) == (None, why, GiB)
    assert decide_fit(8 * GiB, [DeviceOffer("cuda:0", 4 * GiB)], unknown_parts=why).fits is False
    assert unknown_text(why) == "KV cache unknown (estimate unavailable: no config.json)"
